"""`make demo`: real sends through `smtpmail-bridge send` and real Emacs.

Starts the test SMTP server on a free loopback port (STARTTLS with a
throw-away CA, AUTH PLAIN/LOGIN), writes a temporary HOME with a config file
and an ~/.authinfo, pipes the README's message into `smtpmail-bridge --debug
send -t`, and prints the redacted transcript and the message as the server
received it.  Then, when Emacs is installed, composes a message in
message-mode in `emacs -Q --batch` and sends it with smtpmail-bridge-send-it
(credentials through auth-source), and shows that too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.smtpserver import SMTPTestServer, certificates

USER = "demo@example.org"
SECRET = "demo-password"
MESSAGE = b"To: x@example.org\nSubject: t\n\nhi\n"


def main() -> int:
    certs = certificates()
    home = Path(tempfile.mkdtemp(prefix="smtpmail-bridge-demo-"))
    try:
        with SMTPTestServer(tls="starttls", auth=["PLAIN", "LOGIN"], users={USER: SECRET},
                            auth_require_tls=True) as server:
            cfg = home / ".config" / "smtpmail-bridge"
            cfg.mkdir(parents=True)
            (cfg / "config.toml").write_text(
                f'smtp-server = "127.0.0.1"\nsmtp-service = {server.port}\n'
                f'mail-address = "{USER}"\n')
            authinfo = home / ".authinfo"
            authinfo.write_text(f"machine 127.0.0.1 port {server.port} login {USER} "
                                f"password {SECRET}\n")
            authinfo.chmod(0o600)
            exe = shutil.which("smtpmail-bridge")
            cmd = [exe] if exe else [sys.executable, "-m", "bridge"]
            env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                   "SSL_CERT_FILE": str(certs.ca_pem)}
            print(f"$ printf 'To: x@example.org\\nSubject: t\\n\\nhi\\n' | "
                  f"smtpmail-bridge --debug send -t     # server on 127.0.0.1:{server.port}")
            result = subprocess.run(cmd + ["--debug", "send", "-t"], input=MESSAGE,
                                    capture_output=True, env=env, timeout=60)
            print("\n--- transcript (stderr of smtpmail-bridge --debug; AUTH redacted)")
            sys.stdout.write(result.stderr.decode("utf-8", "replace"))
            print(f"--- exit status {result.returncode}")
            if result.returncode != 0:
                return result.returncode
            [received] = server.wait_for_messages(1)
            print("\n--- as the server received it")
            print(f"TLS: {received.tls}   AUTH: {received.auth.mechanism} as {received.auth.user}")
            print(f"MAIL FROM:<{received.mail_from}> {' '.join(received.mail_options)}")
            for r in received.rcpt_tos:
                print(f"RCPT TO:<{r}>")
            print("DATA:")
            sys.stdout.write(received.data.decode("utf-8", "replace").replace("\r\n", "\n"))
            leaked = SECRET in result.stderr.decode() + result.stdout.decode()
            emacs = shutil.which("emacs")
            if emacs:
                status, output = emacs_send(emacs, home, env, server)
                leaked = leaked or SECRET in output
                if status != 0:
                    return status
            else:
                print("\n(emacs not found: the Emacs half of the demo is skipped)")
            print(f"\npassword in any output: {'YES (bug!)' if leaked else 'no'}")
            return 1 if leaked else 0
    finally:
        shutil.rmtree(home, ignore_errors=True)


EMACS_SCRIPT = r"""
(require 'smtpmail-bridge)
(setq smtpmail-bridge-program (list %(python)s "-m" "bridge" "serve")
      send-mail-function #'smtpmail-bridge-send-it
      message-send-mail-function #'smtpmail-bridge-send-it
      smtpmail-smtp-server "127.0.0.1" smtpmail-smtp-service %(port)d
      user-mail-address %(user)s user-full-name "Demo User")
(with-current-buffer (get-buffer-create "*demo*")
  (message-mode)
  (insert "From: Demo User <" user-mail-address ">\nTo: y@example.org\n"
          "Subject: sent from Emacs\n" mail-header-separator "\nHello from message-mode.\n")
  (let ((start (float-time)))
    (message-send)
    (message "message-send returned after %%.1f ms; the backend is sending"
             (* 1000 (- (float-time) start)))))
(message "smtpmail-bridge-wait: %%s" (if (smtpmail-bridge-wait 30) "all finished" "timed out"))
"""


def emacs_send(emacs: str, home: Path, env: dict, server: SMTPTestServer) -> tuple[int, str]:
    """The same server, through real Emacs: message-mode + smtpmail-bridge-send-it."""
    from bridge import protocol
    repo = Path(__file__).resolve().parents[1]
    script = home / "demo.el"
    script.write_text(EMACS_SCRIPT % {"python": protocol.dumps(sys.executable),
                                      "port": server.port, "user": protocol.dumps(USER)},
                      encoding="utf-8")
    print("\n$ emacs -Q --batch -l demo.el     # message-mode, C-c C-c via smtpmail-bridge-send-it,"
          " credentials from ~/.authinfo through auth-source")
    r = subprocess.run([emacs, "-Q", "--batch", "-L", str(repo / "elisp"), "-l", str(script)],
                       capture_output=True, timeout=120, cwd=home,
                       env={**env, "PYTHONPATH": str(repo), "LANG": "C.UTF-8"})
    output = r.stdout.decode("utf-8", "replace") + r.stderr.decode("utf-8", "replace")
    sys.stdout.write(output)
    if r.returncode != 0:
        return r.returncode, output
    received = server.wait_for_messages(2)[1]
    print(f"--- as the server received it: TLS {received.tls}, AUTH {received.auth.mechanism} "
          f"as {received.auth.user}, MAIL FROM:<{received.mail_from}>, RCPT {received.rcpt_tos}")
    sys.stdout.write(received.data.decode("utf-8", "replace").replace("\r\n", "\n"))
    return 0, output


if __name__ == "__main__":
    sys.exit(main())
