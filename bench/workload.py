"""The benchmark's inputs: one ~5 KB message, Emacs-layout queues, config files.

Why its own writer and not bridge.queue: the queue every contender reads must
be byte-for-byte what Emacs 28.2 writes (see /work/shared/fixtures), and it
must be quick to build 10000 entries without the bridge's fsyncs skewing
nothing but the set-up.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

SENDER = "alice@example.org"
RECIPIENT = "bob@example.net"
STAMP = "2026-12-03_22:51:20"


def message(size: int = 5 * 1024, serial: int = 0) -> bytes:
    """A plain-text message of about ``size`` bytes, LF line ends as queued."""
    head = (f"From: Alice Example <{SENDER}>\n"
            f"To: Bob Builder <{RECIPIENT}>\n"
            f"Subject: Benchmark message {serial}\n"
            "Date: Thu, 03 Dec 2026 22:51:20 +0100\n"
            f"Message-ID: <bench.{serial}@example.org>\n"
            "MIME-Version: 1.0\n"
            "Content-Type: text/plain; charset=utf-8\n"
            "\n").encode()
    line = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghij.\n"
    body = bytearray()
    n = 0
    while len(head) + len(body) < size:
        # Every 20th line starts with a dot so dot-stuffing is exercised.
        body += (b"." if n % 20 == 7 else b"") + line
        n += 1
    return head + bytes(body[: size - len(head)])


def big_message(size: int) -> bytes:
    """A message of ``size`` bytes made of 76-column lines (as base64 would be)."""
    head = message(0)
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\n"
    count = (size - len(head)) // len(line) + 1
    return (head + line * count)[:size]


def el_text(recipients: list[str]) -> bytes:
    """The .el file exactly as Emacs 28.2's smtpmail-send-it writes it."""
    quoted = " ".join('"' + r.replace("\\", "\\\\").replace('"', '\\"') + '"' for r in recipients)
    return f"(setq      smtpmail-recipient-address-list ({quoted})\n)\n".encode()


def write_queue(directory: Path, count: int, size: int = 5 * 1024) -> Path:
    """Write ``count`` queued messages in Emacs's layout into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    el = el_text([RECIPIENT])
    names = []
    for i in range(1, count + 1):
        name = f"{STAMP}_{i}"
        (directory / name).write_bytes(message(size, i))
        (directory / f"{name}.el").write_bytes(el)
        names.append(str(directory / name))
    (directory / "index").write_text("".join(n + "\n" for n in names))
    os.chmod(directory, 0o700)
    return directory


def copy_queue(template: Path, directory: Path) -> Path:
    """An identical copy of a queue whose index names the copy's own files."""
    shutil.copytree(template, directory)
    lines = (template / "index").read_text().splitlines()
    (directory / "index").write_text(
        "".join(str(directory / Path(line).name) + "\n" for line in lines))
    return directory


def queue_left(directory: Path) -> int:
    """Messages still queued (data files, not .el / index / state)."""
    return sum(1 for p in directory.iterdir()
               if p.name.startswith(STAMP) and "." not in p.name)


def bridge_config(path: Path, port: int, queue_dir: Path | None = None) -> Path:
    """A TOML config for smtpmail-bridge pointing at 127.0.0.1:port, plain."""
    lines = ['smtp-server = "127.0.0.1"', f"smtp-service = {port}",
             'stream-type = "plain"', f'mail-address = "{SENDER}"']
    if queue_dir is not None:
        lines.append(f'queue-dir = "{queue_dir}/"')
    path.write_text("\n".join(lines) + "\n")
    return path


def msmtprc(path: Path, port: int) -> Path:
    """An msmtp configuration for the same server, plain, no auth."""
    path.write_text("defaults\nauth off\ntls off\n\naccount bench\nhost 127.0.0.1\n"
                    f"port {port}\nfrom {SENDER}\n\naccount default : bench\n")
    path.chmod(0o600)
    return path
