"""`make demo`: one real send through `smtpmail-bridge send`, shown end to end.

Starts the test SMTP server on a free loopback port (STARTTLS with a
throw-away CA, AUTH PLAIN/LOGIN), writes a temporary HOME with a config file
and an ~/.authinfo, pipes the README's message into `smtpmail-bridge --debug
send -t`, and prints the redacted transcript and the message as the server
received it.
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
            print(f"\npassword in any output: {'YES (bug!)' if leaked else 'no'}")
            return 1 if leaked else 0
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
