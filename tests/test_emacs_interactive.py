"""An interactive Emacs (in tmux): the shim prompts where smtpmail would.

The server demands AUTH (530) and auth-source has nothing, so the backend's
credential request makes Emacs prompt for the user name and password, as
smtpmail does; after the server accepts them, auth-source's save function
asks to save them to ~/.authinfo.  The test reads the screen and types.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bridge import protocol as P
from tests.conftest import require

REPO = Path(__file__).resolve().parent.parent
SCREEN_TIMEOUT = 60      # a bound on waiting for a prompt, not a timing assertion


class Tmux:
    def __init__(self, tmux: str, name: str) -> None:
        self.tmux, self.name = tmux, name

    def run(self, *args: str) -> str:
        return subprocess.run([self.tmux, "-L", self.name, *args], check=True,
                              capture_output=True, text=True, timeout=30).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.name)

    def wait_for(self, pattern: str) -> str:
        """Poll the screen until ``pattern`` shows up (bounded)."""
        deadline = time.monotonic() + SCREEN_TIMEOUT
        while time.monotonic() < deadline:
            screen = self.screen()
            if re.search(pattern, screen):
                return screen
            time.sleep(0.05)
        raise AssertionError(f"never saw {pattern!r} on the screen:\n{self.screen()}")

    def type(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.name, *keys)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def wait_until(predicate) -> None:
    """Poll a condition that another process makes true (bounded)."""
    deadline = time.monotonic() + SCREEN_TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition never became true")
        time.sleep(0.05)


def test_prompts_like_smtpmail_then_saves_to_authinfo(emacs_bin, smtp_server, tmp_path):
    tmux_bin = require("tmux")
    srv = smtp_server(auth=["PLAIN"], users={"alice": "typed-secret"}, auth_required=True)
    home = tmp_path / "home"
    home.mkdir()
    script = home / "interactive.el"
    script.write_text(f"""
(require 'smtpmail-bridge)
(setq smtpmail-bridge-program (list {P.dumps(sys.executable)} "-m" "bridge" "serve")
      smtpmail-smtp-server "127.0.0.1" smtpmail-smtp-service {srv.port}
      user-mail-address "alice@example.org" auth-source-save-behavior 'ask)
(add-hook 'emacs-startup-hook
  (lambda ()
    (with-current-buffer (get-buffer-create "*m*")
      (mail-mode)
      (insert "To: bob@example.net\\nSubject: typed\\n" mail-header-separator "\\nhi\\n")
      (smtpmail-bridge-send-it))))
""", encoding="utf-8")
    name = f"smtpmail-bridge-test-{os.getpid()}"
    tmux = Tmux(tmux_bin, name)
    env = f"HOME={home} PYTHONPATH={REPO} TERM=xterm LANG=C.UTF-8"
    tmux.run("new-session", "-d", "-s", name, "-x", "150", "-y", "40",
             f"cd {home} && env {env} {emacs_bin} -nw -Q -L {REPO / 'elisp'} -l {script}")
    try:
        tmux.wait_for(r"SMTP user name for 127\.0\.0\.1")
        tmux.type("alice", "Enter")
        tmux.wait_for(r"SMTP password for alice@127\.0\.0\.1:")
        tmux.type("typed-secret", "Enter")
        tmux.wait_for(r"Save auth info to file ~/\.authinfo\?")
        assert "typed-secret" not in tmux.screen()      # read-passwd shows no secret
        tmux.type("y")
        # The echo area shows whichever of "Saved ..." and "sent to ..." came last.
        tmux.wait_for(r"Saved new authentication information|smtpmail-bridge: sent to bob")
        srv.wait_for_messages(1, timeout=SCREEN_TIMEOUT)
        wait_until(lambda: "typed-secret" in _read(home / ".authinfo"))
    finally:
        subprocess.run([tmux_bin, "-L", name, "kill-server"], capture_output=True)
    [m] = srv.messages
    assert (m.auth.mechanism, m.auth.user) == ("PLAIN", "alice")
    saved = (home / ".authinfo").read_text()
    assert "machine 127.0.0.1" in saved and "login alice" in saved
    assert "password typed-secret" in saved
