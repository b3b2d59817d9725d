"""`python -m bridge serve` as a real subprocess: framing, errors, jobs, credentials."""

from __future__ import annotations

import base64
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bridge import protocol as P

REPO = Path(__file__).resolve().parent.parent
MESSAGE = (b"From: alice@example.org\nTo: bob@example.net\nBcc: eve@example.com\n"
           b"Subject: hello\n\nbody\n.dot line\n")
# A generous safety net so a broken backend fails the test instead of hanging.
NO_HANG = 60


class Serve:
    """A running backend; lines are read by a thread into a queue."""

    def __init__(self, home: Path) -> None:
        env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
                   PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen([sys.executable, "-m", "bridge", "serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, cwd=home)
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.seen: list[bytes] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(b"")

    def write(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def request(self, text: str) -> None:
        self.write(text.encode() + b"\n")

    def read(self):
        line = self.lines.get(timeout=NO_HANG)
        assert line, f"backend exited: {self.proc.wait()} {self.proc.stderr.read()!r}"
        self.seen.append(line)
        return P.loads(line.decode())

    def reply(self, rid: int):
        """Read until the final reply of request ``rid``; events are collected."""
        events = []
        while True:
            form = self.read()
            plist = P.plist_to_dict(form[1:])
            if form[0] == "event" and plist["id"] == rid:
                events.append(plist)
            elif form[0] in ("ok", "error") and plist["id"] == rid:
                return form[0], plist, events

    def event(self, type_: str) -> dict:
        """Read until an event of ``type_`` arrives; return its plist."""
        while True:
            plist = P.plist_to_dict(self.read()[1:])
            if plist.get("type") == type_:
                return plist

    def close(self) -> int:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        return self.proc.wait(timeout=NO_HANG)


@pytest.fixture
def serve(tmp_path):
    s = Serve(tmp_path)
    hello = s.read()
    assert hello[0] == "hello"
    assert P.plist_to_dict(hello[1:])["protocol"] == P.PROTOCOL_VERSION
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait()


def send_request(rid: int, port: int, *, extra: str = "", data: bytes = MESSAGE) -> str:
    return (f'(send :id {rid} :sender "alice@example.org" :data "{base64.b64encode(data).decode()}"'
            f' :vars (:smtp-server "127.0.0.1" :smtp-service {port}) {extra})')


def test_garbage_unbalanced_unknown_wrong_types_huge_then_valid(serve):
    serve.write(b"this is not lisp ))\n")
    serve.write(b"(send :id 3 :data \"QUJD\"\n")            # unbalanced
    serve.write(b"(frobnicate :id 4)\n")
    serve.write(b"(send :id 5 :data 42)\n")                  # wrong type
    serve.write(b"(list :id 6 :vars (1 2 3))\n")            # not a plist
    serve.write(b'(send :id 7 :data "' + b"A" * (P.MAX_LINE + 10) + b'")\n')
    serve.write(b"\xff\xfe\n")
    serve.request("(hello :id 8)")
    got = [serve.read() for _ in range(8)]
    heads = [(g[0], P.plist_to_dict(g[1:])) for g in got]
    assert [h for h, _ in heads] == ["error"] * 7 + ["ok"]
    # 5 and 6 run in job threads, so they may answer in either order.
    assert sorted([p["id"] for _, p in heads], key=str) == sorted(
        [None, 3, 4, 5, 6, 7, None, 8], key=str)
    by_id = {p["id"]: p for _, p in heads}
    assert all(p["kind"] == "protocol" for _, p in heads[:7])
    assert "unknown op" in by_id[4]["message"]
    assert ":data must be a string" in by_id[5]["message"]
    assert "too long" in by_id[7]["message"]
    assert by_id[8]["protocol"] == P.PROTOCOL_VERSION
    assert serve.close() == 0


def test_send_delivers_with_bcc_stripped(serve, smtp_server):
    srv = smtp_server()
    serve.request(send_request(1, srv.port))
    head, plist, _ = serve.reply(1)
    assert head == "ok" and plist["status"] == "sent"
    (m,) = srv.messages
    assert m.mail_from == "alice@example.org"
    assert m.rcpt_tos == ["eve@example.com", "bob@example.net"]
    assert b"Bcc" not in m.data and b"\r\n..dot line\r\n" not in m.data


def test_a_stalled_server_holds_up_only_its_own_job(serve, smtp_server):
    slow, fast = smtp_server(), smtp_server()
    hold = slow.hold("MAIL")
    serve.request(send_request(1, slow.port))
    assert hold.wait_reached(NO_HANG)
    serve.request(send_request(2, fast.port))
    head, plist, _ = serve.reply(2)
    assert head == "ok" and plist["status"] == "sent"
    serve.request("(hello :id 3)")
    assert serve.reply(3)[0] == "ok"
    assert slow.messages == []            # still held: job 2 did not wait for it
    hold.release()
    head, plist, _ = serve.reply(1)
    assert head == "ok" and plist["status"] == "sent"
    assert len(slow.messages) == 1


def test_credentials_are_asked_from_the_shim_and_never_echoed(serve, smtp_server):
    srv = smtp_server(auth=["PLAIN"], users={"alice": "s3cr3t-pw"}, auth_required=True)
    serve.request(send_request(1, srv.port, extra=':vars (:smtp-server "127.0.0.1" '
                                                  f':smtp-service {srv.port} :smtp-user "alice" :debug-info t)'))
    ev = serve.event("credential-request")
    assert (ev["host"], ev["port"], ev["user"]) == ("127.0.0.1", str(srv.port), "alice")
    serve.request(f'(credential :id 2 :for {ev["cid"]} :user "alice" :secret "s3cr3t-pw")')
    head, plist, events = serve.reply(1)
    assert head == "ok" and plist["status"] == "sent"
    assert any(e["type"] == "auth-ok" for e in events)
    assert srv.messages[0].auth.user == "alice"
    out = b"".join(serve.seen)
    assert b"s3cr3t-pw" not in out
    assert base64.b64encode(b"\0alice\0s3cr3t-pw") not in out


def test_cancel_releases_a_job_waiting_for_credentials(serve, smtp_server):
    srv = smtp_server(auth=["PLAIN"], users={"alice": "pw"}, auth_required=True)
    serve.request(send_request(1, srv.port, extra=':vars (:smtp-server "127.0.0.1" '
                                                  f':smtp-service {srv.port} :smtp-user "alice")'))
    serve.event("credential-request")
    serve.request("(cancel :id 2 :job 1)")
    head1, p1, _ = serve.reply(2)
    assert head1 == "ok" and p1["cancelled"] is True
    head, plist, _ = serve.reply(1)
    assert head == "error"
    assert srv.messages == []


def test_eof_finishes_the_job_in_flight_then_exits(serve, smtp_server):
    srv = smtp_server()
    hold = srv.hold("MAIL")
    serve.request(send_request(1, srv.port))
    assert hold.wait_reached(NO_HANG)
    serve.proc.stdin.close()
    hold.release()
    head, plist, _ = serve.reply(1)
    assert head == "ok" and plist["status"] == "sent"
    assert serve.close() == 0
    assert len(srv.messages) == 1


def test_shutdown_answers_and_exits(serve):
    serve.request("(shutdown :id 1)")
    assert serve.reply(1)[0] == "ok"
    assert serve.close() == 0


def test_failed_send_with_queue_on_failure_is_queued(serve, smtp_server, tmp_path):
    srv = smtp_server()
    srv.fail("RCPT", 550, "5.1.1 <bob@example.net>: no such user", match="bob@example.net")
    qdir = tmp_path / "queue"
    serve.request(send_request(1, srv.port, extra=":queue-on-failure t").replace(
        ":vars (", f':vars (:queue-dir "{qdir}/" '))
    head, plist, _ = serve.reply(1)
    assert head == "ok" and plist["status"] == "queued"
    assert plist["kind"] == "permanent" and plist["code"] == 550
    assert "no such user" in plist["reply"]
    index = (qdir / "index").read_text().splitlines()
    assert len(index) == 1 and Path(index[0]).read_bytes().startswith(b"From: alice")
    serve.request(f'(list :id 2 :vars (:queue-dir "{qdir}/"))')
    head, plist, _ = serve.reply(2)
    assert head == "ok" and len(plist["entries"]) == 1


def test_eof_hands_a_failing_job_to_the_queue(serve, smtp_server, tmp_path):
    srv = smtp_server()
    hold = srv.hold("MAIL")
    srv.fail("RCPT", 450, "4.2.0 mailbox busy", times=100)
    qdir = tmp_path / "queue"
    serve.request(send_request(1, srv.port).replace(
        ":vars (", f':vars (:retries 1 :queue-dir "{qdir}/" '))
    assert hold.wait_reached(NO_HANG)
    serve.proc.stdin.close()
    hold.release()
    head, plist, _ = serve.reply(1)
    assert head == "error" and "queued as" in plist["message"]
    assert plist["kind"] == "transient" and plist["code"] == 450
    assert serve.close() == 0
    assert len((qdir / "index").read_text().splitlines()) == 1


def test_check_reports_what_the_server_offers(serve, smtp_server):
    srv = smtp_server(auth=["PLAIN"], users={"alice": "pw"})
    serve.request(f'(check :id 5 :vars (:smtp-server "127.0.0.1" :smtp-service {srv.port}))')
    ev = serve.event("credential-request")
    serve.request(f'(credential :id 6 :for {ev["cid"]} :user "alice" :secret "pw")')
    head, plist, events = serve.reply(5)
    assert head == "ok" and plist["status"] == 0, plist
    report = plist["report"]
    assert "greeting: 220" in report and "auth offered: PLAIN" in report
    assert "credentials: found for alice" in report and "auth: accepted" in report
    assert b'"pw"' not in b"".join(serve.seen[1:])
    assert "MAIL" not in [c.split()[0] for _, c in srv.commands]


def test_cancel_stops_a_send_in_the_middle_of_the_dialogue(serve, smtp_server, tmp_path):
    """The server holds its MAIL reply; cancel ends the job before it answers."""
    srv = smtp_server()
    hold = srv.hold("MAIL")
    serve.request(send_request(1, srv.port, extra=":queue-on-failure t"))
    assert hold.wait_reached(NO_HANG)
    serve.request("(cancel :id 2 :job 1)")
    head1, p1, _ = serve.reply(2)
    assert head1 == "ok" and p1["cancelled"] is True
    head, plist, _ = serve.reply(1)          # answered while the server still holds
    assert head == "ok" and plist["status"] == "queued" and plist["kind"] == "cancelled"
    hold.release()
    assert srv.messages == []                 # the dropped session delivered nothing
    index = tmp_path / "Mail" / "queued-mail" / "index"
    assert len(index.read_text().splitlines()) == 1
