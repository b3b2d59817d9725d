"""flush: the queue written by real Emacs, delivered by us; failures kept."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import delivery
from bridge.config import Settings
from bridge.message import Envelope
from bridge.queue import Queue

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "emacs-queue"
EMACS_DIR = "/home/user/Mail/queued-mail/"


def copy_emacs_queue(dest: Path, ports: dict[str, str]) -> Path:
    """The fixture queue in ``dest``; stored ports rewritten to our servers'."""
    shutil.copytree(FIXTURES / "queued-mail", dest)
    for p in dest.iterdir():
        p.chmod(0o600)
    index = dest / "index"
    index.write_text(index.read_text().replace(EMACS_DIR, str(dest) + "/"))
    for el in dest.glob("*.el"):
        text = el.read_text(encoding="utf-8")
        for old, new in ports.items():
            text = text.replace(old, new)
        el.write_text(text, encoding="utf-8")
    return dest


def qsettings(queue_dir: Path, port: int, **kw) -> Settings:
    base = dict(smtp_server="127.0.0.1", smtp_service=port, queue_dir=str(queue_dir),
                mail_address="flusher@example.org", retry_delay=0.0, auth_sources=(),
                connect_timeout=5.0, command_timeout=5.0, data_timeout=5.0, lock_timeout=0.0)
    base.update(kw)
    return Settings(**base)


def test_flush_emacs_queue_like_emacs_but_without_leaks(smtp_server, tmp_path):
    default, b_srv, e_srv = smtp_server(), smtp_server(), smtp_server()
    qdir = copy_emacs_queue(tmp_path / "q", {"52526": str(b_srv.port),
                                             '"52527"': f'"{e_srv.port}"'})
    report = delivery.flush(qsettings(qdir, default.port))
    assert report.exit_code == 0 and not report.failures
    assert len(report.sent) == 7
    # each entry used its own stored variables, else the current settings:
    # Emacs sent c, c2, d to b's server and f to e's (the leak); we don't.
    assert [m.data for m in b_srv.messages] == [
        (FIXTURES / "delivered" / "2-b.data.eml").read_bytes()]
    assert [m.data for m in e_srv.messages] == [
        (FIXTURES / "delivered" / "6-e.data.eml").read_bytes()]
    labels = ["1-a", "3-c", "4-c2", "5-d", "7-f"]
    assert [m.data for m in default.messages] == [
        (FIXTURES / "delivered" / f"{n}.data.eml").read_bytes() for n in labels]
    for m, n in zip(default.messages, labels):
        want = json.loads((FIXTURES / "delivered" / f"{n}.envelope.json").read_text())
        assert m.mail_from == want["mail_from"] == "flusher@example.org"
        assert m.rcpt_tos == want["rcpt_to"]
        assert f"SIZE={want['data_bytes_received_unstuffed']}" in m.mail_options
    # one SMTP session for the five entries that share the default server
    assert default.connections == 1
    assert sorted(p.name for p in qdir.iterdir() if not p.name.startswith(".")) == ["index"]
    assert (qdir / "index").read_bytes() == b""


def make_queue(tmp_path: Path, n: int, **kw) -> tuple[Queue, list]:
    q = Queue(tmp_path / "q")
    entries = []
    for i in range(n):
        data = f"From: a@x.y\nTo: r{i}@x.y\nSubject: m{i}\n\nbody {i}\n".encode()
        entries.append(q.add(data, [f"r{i}@x.y"], sender="s@x.y", **kw))
    return q, entries


def test_failing_entry_does_not_stop_the_flush(smtp_server, tmp_path):
    srv = smtp_server()
    q, entries = make_queue(tmp_path, 4)
    srv.fail("RCPT", 550, "5.1.1 <r1@x.y>: no such user", match="r1@x.y")
    srv.fail("MAIL", 451, "4.3.0 busy", times=1)     # hits the first entry
    s = qsettings(q.directory, srv.port, retries=1)
    report = delivery.flush(s)
    assert sorted(m.rcpt_tos[0] for m in srv.messages) == ["r2@x.y", "r3@x.y"]
    states = {f.entry_id: f.state for f in report.failures}
    assert states == {entries[0].id: "deferred", entries[1].id: "rejected"}
    assert report.exit_code == 69
    scan = q.scan()
    by_id = {e.id: e for e in scan.entries}
    assert set(by_id) == {entries[0].id, entries[1].id}
    assert "no such user" in by_id[entries[1].id].last_error
    assert "RCPT TO:<r1@x.y>" in by_id[entries[1].id].transcript
    # next flush: the rejected one is set aside, the deferred one goes
    report = delivery.flush(s)
    assert report.sent == [entries[0].id] and report.skipped == [entries[1].id]
    assert report.exit_code == 0
    # after retry it is sent again (and the server now accepts it)
    with q.lock(1):
        q.retry(q.find(entries[1].id[:30]))
    report = delivery.flush(s)
    assert report.sent == [entries[1].id]
    assert not q.scan().entries


def test_transient_failure_exit_75(smtp_server, tmp_path):
    srv = smtp_server()
    q, entries = make_queue(tmp_path, 2)
    srv.fail("RCPT", 452, "4.2.2 mailbox full", match="r0@x.y")
    report = delivery.flush(qsettings(q.directory, srv.port))
    assert report.exit_code == 75
    assert [e.id for e in q.scan().entries] == [entries[0].id]


def test_unreachable_server_fails_every_entry_once(tmp_path):
    import socket
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    q, entries = make_queue(tmp_path, 3)
    report = delivery.flush(qsettings(q.directory, port))
    assert [f.state for f in report.failures] == ["deferred"] * 3
    assert all("cannot connect" in f.error for f in report.failures)
    assert len(q.scan().entries) == 3


def test_no_reply_after_dot_is_possibly_delivered_and_not_resent(smtp_server, tmp_path):
    srv = smtp_server()
    q, entries = make_queue(tmp_path, 2)
    srv.stall("DATA_END")
    s = qsettings(q.directory, srv.port, data_timeout=0.5)
    report = delivery.flush(s)
    assert [(f.entry_id, f.state) for f in report.failures] == [(entries[0].id, "possibly-delivered")]
    assert len(srv.received_but_unacknowledged) == 1
    report = delivery.flush(s)
    assert report.skipped == [entries[0].id]
    assert len(srv.received_but_unacknowledged) + len(srv.messages) == 2


def test_stale_index_lines_tolerated(smtp_server, tmp_path):
    srv = smtp_server()
    q, entries = make_queue(tmp_path, 2)
    with open(q.directory / "index", "ab") as f:
        f.write(str(q.directory / "2026-01-01_00:00:00_9").encode() + b"\n\n")
    report = delivery.flush(qsettings(q.directory, srv.port))
    assert report.exit_code == 0 and len(srv.messages) == 2
    assert any("2026-01-01_00:00:00_9" in p for p in report.problems)


def test_unsafe_el_never_evaluated(smtp_server, tmp_path, emacs_bin):
    srv = smtp_server()
    q, entries = make_queue(tmp_path, 1)
    marker = tmp_path / "marker"
    bad = q.directory / "2026-12-03_22:51:20_1"
    bad.write_bytes(b"To: x@y.z\n\nhi\n")
    (q.directory / "2026-12-03_22:51:20_1.el").write_text(
        f'(progn (with-temp-file "{marker}" (insert "pwned")) '
        f'(setq smtpmail-recipient-address-list (list "x@y.z")))\n')
    with open(q.directory / "index", "a") as f:
        f.write(f"{bad}\n")
    report = delivery.flush(qsettings(q.directory, srv.port))
    assert [f.state for f in report.failures] == ["unsafe"]
    assert len(srv.messages) == 1
    assert not marker.exists() and bad.exists()


def test_envelope_sender_recorded_wins_over_flush_setting(smtp_server, tmp_path):
    srv = smtp_server()
    q = Queue(tmp_path / "q")
    q.add(b"From: composed@x.y\nTo: t@x.y\n\nhi\n", ["t@x.y"], sender="recorded@x.y")
    q.add(b"From: composed@x.y\nTo: t@x.y\n\nhi\n", ["t@x.y"], sender=None)
    delivery.flush(qsettings(q.directory, srv.port, mail_address="flusher@x.y"))
    assert [m.mail_from for m in srv.messages] == ["recorded@x.y", "flusher@x.y"]


def test_queue_message_honours_store_queue_variables(tmp_path):
    s = Settings(smtp_server="mail.example.org", smtp_service=587, stream_type="starttls",
                 smtp_user="me", queue_dir=str(tmp_path / "q"), store_queue_variables=True)
    entry = delivery.queue_message(s, Envelope("s@x.y", ["t@x.y"], b"To: t@x.y\n\nhi\n"))
    el = entry.el_path.read_text()
    assert el == ('(setq      smtpmail-recipient-address-list ("t@x.y")\n'
                  '     smtpmail-smtp-server "mail.example.org"\n'
                  '     smtpmail-stream-type starttls\n'
                  '     smtpmail-smtp-service 587\n'
                  '     smtpmail-smtp-user "me"\n'
                  + el[el.index('     smtpmail-bridge'):])
    assert Queue(tmp_path / "q").scan().entries[0].stored == {
        "server": "mail.example.org", "stream_type": "starttls", "service": 587, "user": "me"}


# --- processes: the lock, SIGKILL, the CLI -------------------------------------

def cli_env(tmp_path: Path, port: int, qdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPMAIL_BRIDGE_")}
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'smtp-server = "127.0.0.1"\nsmtp-service = {port}\n'
                   f'queue-dir = "{qdir}"\nmail-address = "f@x.y"\nlock-timeout = 0\n'
                   'retry-delay = 0\n')
    env.update(SMTPMAIL_BRIDGE_CONFIG=str(cfg), HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    return env


def bridge(args: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bridge", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_second_flusher_reports_busy_and_nothing_is_sent_twice(smtp_server, tmp_path):
    srv = smtp_server()
    q, entries = make_queue(tmp_path, 3)
    hold = srv.hold("MAIL")
    env = cli_env(tmp_path, srv.port, q.directory)
    first = bridge(["flush"], env)
    assert hold.wait_reached(20)
    second = bridge(["flush"], env)
    out, err = second.communicate(timeout=30)
    assert second.returncode == 75 and b"busy" in err
    hold.release()
    first.communicate(timeout=30)
    assert first.returncode == 0
    assert sorted(m.rcpt_tos[0] for m in srv.messages) == ["r0@x.y", "r1@x.y", "r2@x.y"]


@pytest.mark.parametrize("at", ["MAIL", "RCPT", "DATA", "DATA_END"])
def test_sigkill_mid_flush_loses_nothing(smtp_server, tmp_path, at):
    srv = smtp_server(pipelining=False)
    q, entries = make_queue(tmp_path, 3)
    first, second = srv.hold(at), srv.hold(at)
    env = cli_env(tmp_path, srv.port, q.directory)
    proc = bridge(["flush"], env)
    assert first.wait_reached(20)
    first.release()                      # message 1 goes through
    assert second.wait_reached(20)       # message 2 is in flight at `at`
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    second.release()
    again = bridge(["flush"], env)
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    got = [m.rcpt_tos[0] for m in srv.messages + srv.received_but_unacknowledged]
    # every message delivered; at most the one in flight twice
    assert {"r0@x.y", "r1@x.y", "r2@x.y"} <= set(got)
    assert len(got) - len(set(got)) <= 1
    assert got.count("r0@x.y") == 1 and got.count("r2@x.y") == 1
    assert not Queue(q.directory).scan().entries


def test_cli_flush_exit_codes_and_summary(smtp_server, tmp_path):
    srv = smtp_server()
    q, entries = make_queue(tmp_path, 2)
    srv.fail("RCPT", 550, "5.7.1 relaying denied", match="r1@x.y")
    p = bridge(["flush"], cli_env(tmp_path, srv.port, q.directory))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 69
    assert out == b""   # not a terminal: quiet
    line = [x for x in err.decode().splitlines() if entries[1].id in x]
    assert line and "rejected" in line[0] and "5.7.1 relaying denied" in line[0]


def test_cli_send_queue_list_show_drop(smtp_server, tmp_path):
    srv = smtp_server()
    qdir = tmp_path / "q"
    env = cli_env(tmp_path, srv.port, qdir)
    p = subprocess.run([sys.executable, "-m", "bridge", "send", "--queue", "-t"], env=env,
                       input=b"From: a@x.y\nTo: t@x.y\nBcc: b@x.y\nSubject: queued\n\nhi\n",
                       capture_output=True, timeout=60)
    assert (p.returncode, p.stdout, p.stderr) == (0, b"", b"")
    assert not srv.messages
    listing = subprocess.run([sys.executable, "-m", "bridge", "list"], env=env,
                             capture_output=True, timeout=60)
    assert listing.returncode == 0
    [line] = listing.stdout.decode().splitlines()
    ident = line.split()[0]
    assert "b@x.y, t@x.y" in line and "queued" in line
    show = subprocess.run([sys.executable, "-m", "bridge", "show", ident[:25]], env=env,
                          capture_output=True, timeout=60)
    assert b"Subject: queued" in show.stdout and b"recipient: b@x.y" in show.stdout
    assert b"Bcc" not in show.stdout
    drop = subprocess.run([sys.executable, "-m", "bridge", "drop", ident], env=env,
                          capture_output=True, timeout=60)
    assert drop.returncode == 0
    assert not Queue(qdir).scan().entries
    missing = subprocess.run([sys.executable, "-m", "bridge", "show", "nope"], env=env,
                             capture_output=True, timeout=60)
    assert missing.returncode != 0 and b"no queued message matches nope" in missing.stderr


def test_real_emacs_flushes_what_the_bridge_queued(smtp_server, tmp_path, emacs_bin):
    srv = smtp_server()
    qdir = tmp_path / "Mail" / "queued-mail"
    s = Settings(queue_dir=str(qdir), store_queue_variables=True, smtp_server="127.0.0.1",
                 smtp_service=srv.port, stream_type="plain")
    body = b"From: a@x.y\nTo: t@x.y\nSubject: from the bridge\n\n.dot\nZo\xc3\xab\n"
    delivery.queue_message(s, Envelope("a@x.y", ["t@x.y", "u@x.y"], body))
    delivery.queue_message(s.replace(store_queue_variables=False),
                           Envelope("a@x.y", ["v@x.y"], b"To: v@x.y\n\nsecond\n"))
    (tmp_path / ".emacs.d").mkdir()
    script = f"""(progn (require 'smtpmail)
      (setq user-mail-address "flusher@example.org" smtpmail-queue-dir "{qdir}/"
            smtpmail-smtp-server "127.0.0.1" smtpmail-smtp-service {srv.port}
            smtpmail-stream-type 'plain)
      (smtpmail-send-queued-mail))"""
    r = subprocess.run([emacs_bin, "-Q", "--batch", "--eval", script], capture_output=True,
                       timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert [m.rcpt_tos for m in srv.messages] == [["t@x.y", "u@x.y"], ["v@x.y"]]
    assert srv.messages[0].data == body.replace(b"\n", b"\r\n")
    assert (qdir / "index").read_bytes() == b""


def test_progress_line_only_on_a_terminal(smtp_server, tmp_path):
    import pty
    srv = smtp_server()
    q, entries = make_queue(tmp_path, 3)
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "bridge", "flush"], stdout=slave,
                         stderr=subprocess.PIPE, env=cli_env(tmp_path, srv.port, q.directory))
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:      # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert p.wait(timeout=60) == 0
    text = out.decode()
    assert "1/3 r0@x.y" in text and "3/3 r2@x.y" in text and "msg/s" in text
    assert "sent 3, failed 0" in text


def test_stored_stream_type_aliases(tmp_path):
    q = Queue(tmp_path / "q")
    a = q.add(b"To: t@x.y\n\nhi\n", ["t@x.y"], stored={"server": "h", "stream_type": "tls",
                                                         "service": 465, "user": None})
    b = q.add(b"To: t@x.y\n\nhi\n", ["t@x.y"], stored={"server": "h", "stream_type": "network",
                                                         "service": 25, "user": None})
    base = Settings(stream_type="plain")
    by_id = {e.id: e for e in q.scan().entries}
    assert delivery.entry_settings(base, by_id[a.id]).stream_type == "ssl"
    assert delivery.entry_settings(base, by_id[b.id]).stream_type is None
    # an entry that stored nothing keeps the flushing session's settings
    c = q.add(b"To: t@x.y\n\nhi\n", ["t@x.y"])
    assert delivery.entry_settings(base, {e.id: e for e in q.scan().entries}[c.id]) is base


def test_cli_show_and_drop_an_unsafe_entry(tmp_path):
    qdir = tmp_path / "q"
    q = Queue(qdir)
    q.add(b"To: t@x.y\n\nhi\n", ["t@x.y"])
    bad = qdir / "2026-12-03_22:51:20_1"
    bad.write_bytes(b"To: x@y.z\n\nhi\n")
    (qdir / "2026-12-03_22:51:20_1.el").write_text('(setq smtpmail-recipient-address-list (list "x"))\n')
    with open(qdir / "index", "a") as f:
        f.write(f"{bad}\n")
    env = cli_env(tmp_path, 1, qdir)
    show = subprocess.run([sys.executable, "-m", "bridge", "show", "2026-12-03_22:51:20_1"],
                          env=env, capture_output=True, timeout=60)
    assert show.returncode == 0 and b"unsafe" in show.stdout
    drop = subprocess.run([sys.executable, "-m", "bridge", "drop", "2026-12-03_22:51:20_1"],
                          env=env, capture_output=True, timeout=60)
    assert drop.returncode == 0, drop.stderr
    assert not bad.exists() and len(Queue(qdir).scan().entries) == 1


def test_entry_removed_by_someone_else_mid_flush_is_no_crash(smtp_server, tmp_path):
    """Emacs takes no lock: its own flush may delete files under ours."""
    import threading
    srv = smtp_server()
    q, entries = make_queue(tmp_path, 3)
    hold = srv.hold("MAIL")
    result = {}
    t = threading.Thread(target=lambda: result.update(
        report=delivery.flush(qsettings(q.directory, srv.port))))
    t.start()
    assert hold.wait_reached(20)
    entries[1].data_path.unlink()
    entries[1].el_path.unlink()
    hold.release()
    t.join(60)
    report = result["report"]
    assert report.sent == [entries[0].id, entries[2].id]
    assert [f.entry_id for f in report.failures] == [entries[1].id]
    assert "cannot read the queued message" in report.failures[0].error
