"""End to end: batch Emacs + elisp/smtpmail-bridge.el + `python -m bridge serve` + the test server.

Emacs and the test synchronise through Emacs's stderr (a pipe): Emacs
prints marker lines, the test reads them; no sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import protocol as P

REPO = Path(__file__).resolve().parent.parent
NO_HANG = 120     # safety net against a hung Emacs, not a timing assertion

PRELUDE = r"""
(require 'smtpmail-bridge)
(setq smtpmail-bridge-program (list %(python)s "-m" "bridge" "serve")
      smtpmail-smtp-server "127.0.0.1" smtpmail-smtp-service %(port)d
      smtpmail-stream-type 'plain
      smtpmail-queue-dir %(qdir)s
      user-mail-address "alice@example.org" user-full-name "Alice Example"
      mail-aliases nil auth-source-do-cache nil)
(defun test-mark (fmt &rest args)
  (princ (concat "MARK " (apply #'format fmt args) "\n") #'external-debugging-output))
(defun test-compose-mail ()
  (with-current-buffer (get-buffer-create "*test mail*")
    (erase-buffer) (mail-mode)
    (insert "To: Bob <bob@example.net>\nCc: carol@example.com\nBcc: eve@example.com\n"
            "Subject: Grüße aus Köln\nDate: Thu, 03 Dec 2026 22:51:20 +0100\n"
            "Message-Id: <fixed.1@example.org>\n" mail-header-separator "\n"
            "Hallo Bob, ümlauts.\n.leading dot\n..two\nlast line without newline")
    (current-buffer)))
(defun test-compose-message ()
  (with-current-buffer (get-buffer-create "*test message*")
    (erase-buffer) (message-mode)
    (insert "From: Alice Example <alice@example.org>\nTo: bob@example.net\n"
            "Bcc: eve@example.com\nSubject: Grüße\nDate: Thu, 03 Dec 2026 22:51:20 +0100\n"
            "Message-ID: <fixed.2@example.org>\n" mail-header-separator "\n"
            "Hallo, ümlaut und ein sehr langer Satz.\n")
    (current-buffer)))
"""


def run_emacs(emacs_bin: str, home: Path, body: str, *, port: int, marks=None,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """Run batch Emacs; ``marks(line, proc)`` is called for each MARK line."""
    qdir = home / "Mail" / "queued-mail"
    prelude = PRELUDE % {"python": P.dumps(sys.executable), "port": port,
                         "qdir": P.dumps(str(qdir) + "/")}
    script = home / "test.el"
    script.write_text(prelude + body + "\n(kill-emacs 0)\n", encoding="utf-8")
    full_env = dict(os.environ, HOME=str(home), LANG="C.UTF-8", LC_ALL="C.UTF-8",
                    PYTHONPATH=str(REPO), XDG_CONFIG_HOME=str(home / ".config"))
    full_env.update(env or {})
    proc = subprocess.Popen([emacs_bin, "-Q", "--batch", "-L", str(REPO / "elisp"),
                             "-l", str(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=full_env, cwd=home)
    err_lines = []
    for raw in proc.stderr:
        line = raw.decode("utf-8", "replace")
        err_lines.append(line)
        if line.startswith("MARK ") and marks:
            marks(line[5:].strip(), proc)
    out = proc.stdout.read().decode("utf-8", "replace")
    rc = proc.wait(timeout=NO_HANG)
    return subprocess.CompletedProcess(proc.args, rc, out, "".join(err_lines))


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    h.mkdir()
    return h


def queued(home: Path) -> list[str]:
    index = home / "Mail" / "queued-mail" / "index"
    return index.read_text().splitlines() if index.exists() else []


def test_emacs_reads_what_python_prints_and_back(emacs_bin, home):
    values = ["plain", 'q"uote\\back\nnew\rcr\ttab', "".join(map(chr, range(1, 128))),
              "é 💌 Grüße", "", -17, 2**40, None, True, P.Sym("starttls"),
              P.kw("id"), ["nested", [1, ["deep"]], None]]
    data = home / "values.txt"
    data.write_text("".join(P.dumps(v) + "\n" for v in values), encoding="utf-8")
    out = home / "back.txt"
    body = f"""
(with-temp-buffer
  (let ((coding-system-for-read 'utf-8)) (insert-file-contents {P.dumps(str(data))}))
  (let (lines)
    (while (not (eobp))
      (let ((line (buffer-substring (point) (line-end-position))))
        (push (smtpmail-bridge--print (car (read-from-string line))) lines))
      (forward-line 1))
    (let ((coding-system-for-write 'utf-8))
      (write-region (mapconcat #'identity (nreverse lines) "\\n") nil {P.dumps(str(out))}))))
"""
    r = run_emacs(emacs_bin, home, body, port=25)
    assert r.returncode == 0, r.stderr
    back = out.read_bytes().decode("utf-8").split("\n")
    assert [P.loads(b) for b in back] == values


def test_mail_mode_send_equals_smtpmail_send_it(emacs_bin, home, smtp_server):
    srv = smtp_server()
    body = """
(with-current-buffer (test-compose-mail) (smtpmail-send-it))
(with-current-buffer (test-compose-mail)
  (let ((smtpmail-bridge-async nil)) (smtpmail-bridge-send-it)))
(test-mark "done")
"""
    r = run_emacs(emacs_bin, home, body, port=srv.port)
    assert r.returncode == 0, r.stderr
    control, ours = srv.messages
    assert control.rcpt_tos == ["eve@example.com", "carol@example.com", "bob@example.net"]
    assert (ours.mail_from, ours.rcpt_tos) == (control.mail_from, control.rcpt_tos)
    assert ours.data == control.data
    assert b"Bcc" not in ours.data and b"=?utf-8?" in ours.data


def test_message_mode_send_equals_smtpmail_send_it(emacs_bin, home, smtp_server):
    srv = smtp_server()
    body = """
(with-current-buffer (test-compose-message)
  (let ((send-mail-function #'smtpmail-send-it)) (message-send)))
(with-current-buffer (test-compose-message)
  (let ((send-mail-function #'smtpmail-bridge-send-it) (smtpmail-bridge-async nil))
    (message-send)))
"""
    r = run_emacs(emacs_bin, home, body, port=srv.port)
    assert r.returncode == 0, r.stderr
    control, ours = srv.messages
    assert (ours.mail_from, ours.rcpt_tos) == (control.mail_from, control.rcpt_tos)
    assert ours.rcpt_tos == ["eve@example.com", "bob@example.net"]
    assert ours.data == control.data


def test_async_send_returns_before_the_server_answers(emacs_bin, home, smtp_server):
    srv = smtp_server()
    hold = srv.hold("MAIL")
    seen = {}

    def marks(line, proc):
        if line == "returned":
            # smtpmail-bridge-send-it has returned; the server has not answered MAIL.
            seen["reached"] = hold.wait_reached(NO_HANG)
            seen["messages_at_return"] = len(srv.messages)
            hold.release()
    body = """
(with-current-buffer (test-compose-mail) (smtpmail-bridge-send-it))
(test-mark "returned")
(test-mark "wait=%S" (smtpmail-bridge-wait 100))
"""
    r = run_emacs(emacs_bin, home, body, port=srv.port, marks=marks)
    assert r.returncode == 0, r.stderr
    assert seen == {"reached": True, "messages_at_return": 0}
    assert "MARK wait=t" in r.stderr
    assert "smtpmail-bridge: sent to" in r.stderr
    assert len(srv.messages) == 1 and queued(home) == []


def test_auth_through_auth_source(emacs_bin, home, smtp_server):
    srv = smtp_server(auth=["PLAIN", "LOGIN"], users={"alice": "s3cr3t pw"}, auth_required=True)
    (home / ".authinfo").write_text(
        f"machine 127.0.0.1 port {srv.port} login alice password 's3cr3t pw'\n")
    body = """
(with-current-buffer (test-compose-mail)
  (let ((smtpmail-bridge-async nil) (smtpmail-debug-info t)) (smtpmail-bridge-send-it)))
(with-current-buffer "*trace of SMTP session to 127.0.0.1*"
  (test-mark "trace-has-secret=%S" (and (string-search "s3cr3t" (buffer-string)) t))
  (test-mark "trace-has-auth=%S" (and (string-search "AUTH PLAIN" (buffer-string)) t)))
"""
    r = run_emacs(emacs_bin, home, body, port=srv.port)
    assert r.returncode == 0, r.stderr
    (m,) = srv.messages
    assert m.auth.user == "alice" and m.auth.mechanism == "PLAIN"
    assert "MARK trace-has-secret=nil" in r.stderr
    assert "MARK trace-has-auth=t" in r.stderr
    assert "s3cr3t" not in r.stderr + r.stdout


def test_auth_in_batch_without_credentials_fails_clearly(emacs_bin, home, smtp_server):
    srv = smtp_server(auth=["PLAIN"], users={"alice": "pw"}, auth_required=True)
    body = """
(with-current-buffer (test-compose-mail)
  (let ((smtpmail-bridge-async nil))
    (condition-case err (smtpmail-bridge-send-it)
      (error (test-mark "error=%s" (error-message-string err))))))
"""
    r = run_emacs(emacs_bin, home, body, port=srv.port)
    assert r.returncode == 0, r.stderr
    assert "MARK error=Sending failed:" in r.stderr
    assert srv.messages == []


def test_queue_mail_queues_through_the_backend(emacs_bin, home, smtp_server):
    srv = smtp_server()
    body = """
(with-current-buffer (test-compose-mail)
  (let ((smtpmail-queue-mail t)) (smtpmail-bridge-send-it)))
(test-mark "wait=%S" (smtpmail-bridge-wait 100))
"""
    r = run_emacs(emacs_bin, home, body, port=srv.port)
    assert r.returncode == 0, r.stderr
    assert "MARK wait=t" in r.stderr
    (entry,) = queued(home)
    assert srv.messages == [] and srv.connections == 0
    el = Path(entry + ".el").read_text()
    assert '"eve@example.com" "carol@example.com" "bob@example.net"' in el
    assert b"Bcc" not in Path(entry).read_bytes()


def test_failing_async_send_is_queued_and_the_reply_shown(emacs_bin, home, smtp_server):
    srv = smtp_server()
    srv.fail("RCPT", 550, "5.1.1 <carol@example.com>: no such user", match="carol@example.com")
    body = """
(with-current-buffer (test-compose-mail) (smtpmail-bridge-send-it))
(test-mark "wait=%S" (smtpmail-bridge-wait 100))
(with-current-buffer "*smtpmail-bridge*" (test-mark "log=%s" (buffer-string)))
"""
    r = run_emacs(emacs_bin, home, body, port=srv.port)
    assert r.returncode == 0, r.stderr
    assert "MARK wait=t" in r.stderr
    echo = [l for l in r.stderr.splitlines() if l.startswith("smtpmail-bridge:")]
    assert any("no such user" in l and "REJECTED" in l for l in echo), r.stderr
    assert "550" in r.stderr.split("MARK log=")[1]
    assert len(queued(home)) == 1 and srv.messages == []


def test_backend_killed_mid_send_leaves_the_message_queued(emacs_bin, home, smtp_server):
    srv = smtp_server()
    hold = srv.hold("MAIL")

    def marks(line, proc):
        if line.startswith("pid="):
            assert hold.wait_reached(NO_HANG)
            os.kill(int(line[4:]), signal.SIGKILL)
    body = """
(with-current-buffer (test-compose-mail) (smtpmail-bridge-send-it))
(test-mark "pid=%d" (process-id smtpmail-bridge--process))
(test-mark "wait=%S" (smtpmail-bridge-wait 100))
"""
    r = run_emacs(emacs_bin, home, body, port=srv.port, marks=marks)
    hold.release()
    assert r.returncode == 0, r.stderr
    assert "MARK wait=t" in r.stderr
    (entry,) = queued(home)
    assert b"Subject: =?utf-8?" in Path(entry).read_bytes()
    assert srv.messages == []


def test_queue_list_show_drop_and_send_queued_mail(emacs_bin, home, smtp_server):
    srv = smtp_server()
    body = """
(let ((smtpmail-queue-mail t) (smtpmail-bridge-async nil))
  (with-current-buffer (test-compose-mail) (smtpmail-bridge-send-it))
  (with-current-buffer (test-compose-message)
    (let ((send-mail-function #'smtpmail-bridge-send-it)) (message-send))))
(smtpmail-bridge-list-queue)
(with-current-buffer "*smtpmail-bridge queue*"
  (test-mark "rows=%d" (length tabulated-list-entries))
  (goto-char (point-min))
  (smtpmail-bridge-queue-show))
(with-current-buffer (window-buffer (selected-window))
  (test-mark "shown=%S" (and (string-search "Subject: =?utf-8?" (buffer-string)) t)))
(with-current-buffer "*smtpmail-bridge queue*"
  (goto-char (point-min))
  (cl-letf (((symbol-function 'yes-or-no-p) (lambda (_) t)))
    (smtpmail-bridge-queue-drop))
  (test-mark "after-drop=%d" (length tabulated-list-entries)))
(smtpmail-bridge-send-queued-mail)
(test-mark "wait=%S" (smtpmail-bridge-wait 100))
"""
    r = run_emacs(emacs_bin, home, body, port=srv.port)
    assert r.returncode == 0, r.stderr
    for mark in ("MARK rows=2", "MARK shown=t", "MARK after-drop=1", "MARK wait=t"):
        assert mark in r.stderr
    assert "sent 1 queued message(s), 0 failed" in r.stderr
    assert len(srv.messages) == 1 and queued(home) == []


def test_ert_suite(emacs_bin):
    r = subprocess.run([emacs_bin, "-Q", "--batch", "-L", str(REPO / "elisp"),
                        "-l", str(REPO / "elisp" / "smtpmail-bridge-tests.el"),
                        "-f", "ert-run-tests-batch-and-exit"],
                       capture_output=True, text=True, timeout=NO_HANG)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ", 0 unexpected" in r.stderr


def test_shim_byte_compiles_cleanly_and_passes_checkdoc(emacs_bin, tmp_path):
    src = tmp_path / "smtpmail-bridge.el"
    src.write_bytes((REPO / "elisp" / "smtpmail-bridge.el").read_bytes())
    r = subprocess.run([emacs_bin, "-Q", "--batch", "-L", str(tmp_path), "--eval",
                        f'(progn (setq byte-compile-error-on-warn t) '
                        f'(unless (byte-compile-file {P.dumps(str(src))}) (kill-emacs 1)) '
                        f'(checkdoc-file {P.dumps(str(src))}))'],
                       capture_output=True, text=True, timeout=NO_HANG)
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr, r.stderr


def test_queue_buffer_retry_brings_back_a_rejected_entry(emacs_bin, home, smtp_server):
    from bridge.queue import Queue
    srv = smtp_server()
    q = Queue(home / "Mail" / "queued-mail")
    entry = q.add(b"From: a@example.org\nTo: bob@example.net\nSubject: set aside\n\nhi\n",
                  ["bob@example.net"], sender="a@example.org")
    q.set_state(entry, "rejected", error="550 5.7.1 relaying denied")
    body = """
(smtpmail-bridge-send-queued-mail)
(test-mark "first=%S" (smtpmail-bridge-wait 100))
(smtpmail-bridge-list-queue)
(with-current-buffer "*smtpmail-bridge queue*"
  (goto-char (point-min))
  (smtpmail-bridge-queue-retry))
(smtpmail-bridge-send-queued-mail)
(test-mark "second=%S" (smtpmail-bridge-wait 100))
"""
    sent_before_retry = []

    def marks(line, proc):
        if line.startswith("first="):
            sent_before_retry.append(len(srv.messages))
    r = run_emacs(emacs_bin, home, body, port=srv.port, marks=marks)
    assert r.returncode == 0, r.stderr
    assert "MARK first=t" in r.stderr and "MARK second=t" in r.stderr
    # the set-aside entry was not sent by the first flush, only after retry
    assert sent_before_retry == [0]
    assert [m.rcpt_tos for m in srv.messages] == [["bob@example.net"]]
    assert queued(home) == []


def test_big_message_crosses_as_a_file_byte_for_byte(emacs_bin, home, smtp_server):
    """Above smtpmail-bridge-inline-limit the bytes go through a temp file."""
    srv = smtp_server()
    body = """
(defvar test-temp-files nil)
(advice-add 'make-temp-file :filter-return (lambda (f) (push f test-temp-files) f))
(let ((smtpmail-bridge-async nil) (smtpmail-bridge-inline-limit 1000))
  (with-current-buffer (get-buffer-create "*big*")
    (erase-buffer) (mail-mode)
    (insert "To: bob@example.net\\nSubject: big\\nDate: Thu, 03 Dec 2026 22:51:20 +0100\\n"
            "Message-Id: <big.1@example.org>\\n" mail-header-separator "\\n")
    (dotimes (i 20000) (insert (format ".line %05d ümlaut \\t tab\\n" i)))
    (smtpmail-bridge-send-it)))
(test-mark "made=%d" (length test-temp-files))
(test-mark "left=%S" (seq-filter #'file-exists-p test-temp-files))
"""
    r = run_emacs(emacs_bin, home, body, port=srv.port)
    assert r.returncode == 0, r.stderr
    [m] = srv.messages
    lines = m.data.split(b"\r\n")
    i = lines.index(b"")
    assert len(lines[i + 1:-1]) == 20000
    assert lines[i + 1] == ".line 00000 ümlaut \t tab".encode()
    assert lines[-2] == ".line 19999 ümlaut \t tab".encode()
    assert "MARK made=1" in r.stderr             # the bytes went through a file
    assert "MARK left=nil" in r.stderr           # and it was cleaned up


SAME_AS_SMTPMAIL = {
    "resent": ("Resent-To: frank@example.net\nResent-Cc: grace@example.org\n"
               "Resent-Bcc: heidi@example.com\nTo: ignored@example.com\nBcc: ivan@example.com\n"
               "Subject: resent\n"),
    "fixture-f": ('To: "Smith, John" <john@example.com>,\n bob@example.net (Bob B)\n'
                  "CC: carol@example.com\nCc: mallory@example.com, bob@example.net\n"
                  "Subject: \n"),
    "no-from": "To: Jürgen <juergen@example.de>\nSubject: Grüße aus Köln — 日本語 ✓\n",
    "bare-name": "To: localuser, other@example.org\nSubject: bare\n",
}


@pytest.mark.parametrize("case", sorted(SAME_AS_SMTPMAIL))
def test_mail_mode_variants_equal_smtpmail_send_it(emacs_bin, home, smtp_server, case):
    """For the same buffer: the same MAIL FROM, RCPT list and bytes as smtpmail."""
    srv = smtp_server()
    headers = SAME_AS_SMTPMAIL[case]
    body_text = ".\\n..\\n.hidden\\ntrailing  \\n\\ttab\\nÜmläute and a long line " + "x" * 1100
    body = f"""
(setq smtpmail-sendto-domain "example.net" smtpmail-local-domain "example.test")
(defun test-buffer ()
  (with-current-buffer (get-buffer-create "*variant*")
    (erase-buffer) (mail-mode)
    (insert {P.dumps(headers)} "Date: Thu, 03 Dec 2026 22:51:20 +0100\\n"
            "Message-Id: <fixed.{case}@example.org>\\n" mail-header-separator "\\n"
            "{body_text}")
    (current-buffer)))
(with-current-buffer (test-buffer) (smtpmail-send-it))
(with-current-buffer (test-buffer)
  (let ((smtpmail-bridge-async nil)) (smtpmail-bridge-send-it)))
"""
    r = run_emacs(emacs_bin, home, body, port=srv.port)
    assert r.returncode == 0, r.stderr
    control, ours = srv.messages
    assert ours.mail_from == control.mail_from
    assert ours.rcpt_tos == control.rcpt_tos
    assert ours.ehlo_name == control.ehlo_name
    assert ours.data == control.data
    # smtpmail counts characters, not bytes, for a mail-mode buffer with
    # non-ASCII text, so its SIZE= is too small; ours is the exact size.
    size = [int(o[5:]) for o in ours.mail_options if o.startswith("SIZE=")]
    control_size = [int(o[5:]) for o in control.mail_options if o.startswith("SIZE=")]
    assert size == [len(ours.data)]
    assert control_size[0] <= size[0]
