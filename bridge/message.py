"""Messages and envelopes: recipients, Bcc, envelope sender, wire encoding.

Pure functions on bytes, no sockets.  Recipient deduction reproduces Emacs
28.2's smtpmail-deduce-address-list and mail-strip-quoted-names exactly
(reverse header order, duplicates kept), because the shell and the Emacs
shim must put the same RCPT TO lines on the wire as smtpmail does.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path
from typing import BinaryIO, Iterator

from bridge.errors import MessageError

CHUNK = 1 << 16


@dataclass
class Envelope:
    """What one SMTP transaction needs.

    ``data`` is the message as bytes, or a Path to a file holding it (queue
    data files are streamed, never read whole).  Lines may end in LF or CRLF;
    they go out as CRLF, dot-stuffed.
    """

    sender: str
    recipients: list[str]
    data: bytes | Path | BinaryIO
    label: str = ""          # for progress and errors (queue id, "message")


# --- header area ------------------------------------------------------------

# rfc822-goto-eoh: the first line that is empty, starts with ":", or starts
# with a colon-less token followed by blank -- the header area ends there.
_EOH = re.compile(rb"^(?:[:\n]|[^: \t\n]+[ \t\n])", re.M)


def header_end(data: bytes) -> int:
    """Offset where the header area ends (start of the line that ends it)."""
    m = _EOH.search(data)
    return m.start() if m else len(data)


def _fields(header: bytes) -> list[bytes]:
    """Split a header area into fields, each with its continuation lines."""
    fields: list[bytes] = []
    for line in header.splitlines(keepends=True):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line
        else:
            fields.append(line)
    return fields


# --- mail-strip-quoted-names (the light-weight parser) -----------------------

_COMMENT = re.compile(r'[ \t]*\((?:[^()\\]|\\.|\\\n)*\)')
_QUOTED = re.compile(r'([ \t]?)([ \t]*"(?:[^"\\]|\\.|\\\n)*"[ \t\n]*)')
_ANGLE = re.compile(r'(,\s*|\A)([^,]*<([^>,:]*)>[^,]*)(\s*,|\Z)')


def strip_quoted_names(address: str) -> str:
    """Emacs's mail-strip-quoted-names with mail-use-rfc822 nil."""
    while True:
        m = _COMMENT.search(address)
        if not m:
            break
        address = address[:m.start()] + address[m.end():]
    address = address.strip(" \t\n")
    pos = 0
    while True:
        m = _QUOTED.search(address, pos)
        if not m:
            break
        if len(address) > m.end() and address[m.end()] == "@":
            pos = m.end()
        else:
            address = address[:m.start(2)] + address[m.end(2):]
            pos = m.start()
    while True:
        m = _ANGLE.search(address)
        if not m:
            break
        address = address[:m.start(2)] + m.group(3) + address[m.end(2):]
    return address


_RESENT = re.compile(rb"^Resent-(?:To|Cc|Bcc):", re.I)
_PLAIN = re.compile(rb"^(?:To:|Cc:|Bcc:)", re.I)


def deduce_recipients(header: bytes) -> list[str]:
    """smtpmail-deduce-address-list: envelope recipients from a header area.

    Returned in smtpmail's order (the reverse of appearance), duplicates kept.
    Bytes are decoded as Latin-1 so that any byte survives unchanged.
    """
    fields = _fields(header)
    pattern = _RESENT if any(_RESENT.match(f) for f in fields) else _PLAIN
    simple = ""
    for field in fields:
        m = pattern.match(field)
        if m:
            simple += " " + strip_quoted_names(field[m.end():].decode("latin-1"))
    text = (" " + simple + "\n").translate({10: 32, 44: 32, 9: 32})
    tokens = [t for t in text.split(" ") if t]
    tokens.reverse()
    return [t.encode("latin-1").decode("utf-8", "surrogateescape") for t in tokens]


_BCC = re.compile(rb"^(?:RESENT-)?Bcc:", re.I)


def strip_bcc(data: bytes) -> bytes:
    """smtpmail-do-bcc: drop [Resent-]Bcc fields (and continuations) from the header."""
    end = header_end(data)
    kept = [f for f in _fields(data[:end]) if not _BCC.match(f)]
    return b"".join(kept) + data[end:]


def from_address(header: bytes) -> str | None:
    """The address part of the first From: field, as smtpmail takes it."""
    for field in _fields(header):
        if field[:5].lower() == b"from:":
            value = field[5:].decode("utf-8", "replace")
            addrs = [a for _, a in getaddresses([" ".join(value.split())]) if a]
            return addrs[0] if addrs else None
    return None


# --- validation ---------------------------------------------------------------

_FORBIDDEN = re.compile(r"[\r\n\x00]")


def check_address(address: str, what: str = "address") -> str:
    """Refuse an address that would inject SMTP commands."""
    if _FORBIDDEN.search(address):
        raise MessageError(f"{what} {address!r} contains CR, LF or NUL")
    return address


def needs_smtputf8(address: str) -> bool:
    return not address.isascii()


def default_sender() -> str | None:
    """user-mail-address's default, kept only if valid as smtpmail requires.

    Emacs takes $EMAIL, else login@host; smtpmail-user-mail-address accepts
    it only when the domain part contains a dot.
    """
    import getpass
    import os
    import socket
    address = os.environ.get("EMAIL") or f"{getpass.getuser()}@{socket.gethostname()}"
    parts = address.split("@")
    return address if len(parts) == 2 and "." in parts[1] else None


# --- building an envelope -----------------------------------------------------

def normalise_newlines(data: bytes) -> bytes:
    """CRLF to LF, so header parsing sees smtpmail's LF-only buffer."""
    return data.replace(b"\r\n", b"\n")


def prepare(data: bytes | BinaryIO, *, sender: str | None, recipients: list[str] | None,
            extract: bool, mail_address: str | None = None,
            label: str = "message") -> Envelope:
    """Turn a composed message into an Envelope, as smtpmail-send-it does.

    With ``extract`` the recipients are deduced from the headers (smtpmail
    always does this; sendmail's ``-t``); explicit ``recipients`` are added
    after them.  Bcc and Resent-Bcc are stripped from the data in either
    case.  The sender falls back to ``mail_address``, then the From: header.
    A stream (the shell's stdin) is spooled so a big message is never held
    in memory: only its header is.
    """
    if isinstance(data, (bytes, bytearray)):
        data = normalise_newlines(bytes(data))
        if data and not data.endswith(b"\n"):
            data += b"\n"
        end = header_end(data)
        header, body = data[:end], None
    else:
        header, body = _split_stream(data)
    rcpts = deduce_recipients(header) if extract else []
    rcpts += list(recipients or [])
    if not rcpts:
        raise MessageError("no recipients: give addresses or use -t with To/Cc/Bcc headers")
    envelope_sender = sender or mail_address or from_address(header) or default_sender()
    if not envelope_sender:
        raise MessageError("no envelope sender: use -f, set mail-address, or add a From: header")
    check_address(envelope_sender, "sender")
    for r in rcpts:
        check_address(r, "recipient")
    if body is None:
        return Envelope(envelope_sender, rcpts, strip_bcc(data), label)
    out = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    out.write(strip_bcc(header))
    shutil.copyfileobj(body, out, CHUNK)
    body.close()
    out.seek(0)
    return Envelope(envelope_sender, rcpts, out, label)


SPOOL_IN_MEMORY = 1 << 20
MAX_HEADER = 1 << 20


def _split_stream(stream: BinaryIO) -> tuple[bytes, BinaryIO]:
    """(header area, spooled rest) with LF line ends and a final LF."""
    lines: list[bytes] = []
    size = 0
    rest = b""
    while True:
        line = stream.readline(MAX_HEADER)
        if not line:
            break
        if line.endswith(b"\r\n"):
            line = line[:-2] + b"\n"
        elif not line.endswith(b"\n"):
            line += b"\n"
        if _EOH.match(line):
            rest = line
            break
        lines.append(line)
        size += len(line)
        if size > MAX_HEADER:
            raise MessageError("header area larger than 1 MiB: not a mail message?")
    body = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    body.write(rest)
    last = rest[-1:] or (lines[-1][-1:] if lines else b"")
    pending_cr = False
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            break
        if pending_cr:
            chunk = b"\r" + chunk
        pending_cr = chunk.endswith(b"\r")
        if pending_cr:
            chunk = chunk[:-1]
        chunk = chunk.replace(b"\r\n", b"\n")
        if chunk:
            body.write(chunk)
            last = chunk[-1:]
    if pending_cr:
        body.write(b"\r")
        last = b"\r"
    if last not in (b"\n", b""):
        body.write(b"\n")
    body.seek(0)
    return b"".join(lines), body


# --- the wire -----------------------------------------------------------------

@dataclass(frozen=True)
class DataInfo:
    size: int          # bytes on the wire before dot-stuffing, CRLF counted as 2
    eight_bit: bool    # any byte >= 0x80


class _Shared:
    """A caller's open file, rewound, and not closed by ``with``."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f

    def __enter__(self) -> BinaryIO:
        self.f.seek(0)
        return self.f

    def __exit__(self, *exc: object) -> None:
        pass


def _open(data: "bytes | Path | BinaryIO"):
    if isinstance(data, Path):
        return open(data, "rb")
    if isinstance(data, (bytes, bytearray)):
        return io.BytesIO(data)
    return _Shared(data)


def _blocks(f: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    """Runs of whole lines, each ending with LF (one is added at EOF if missing).

    Working on blocks rather than lines keeps a flush of many messages, or
    one 50 MB message, to a few C-level passes per 64 KiB.
    """
    pending: list[bytes] = []
    while True:
        chunk = f.read(size)
        if not chunk:
            if pending:
                yield b"".join(pending) + b"\n"
            return
        cut = chunk.rfind(b"\n") + 1
        if cut == 0:
            pending.append(chunk)
            continue
        pending.append(chunk[:cut])
        yield b"".join(pending)
        pending = [chunk[cut:]] if cut < len(chunk) else []


def data_info(data: "bytes | Path | BinaryIO") -> DataInfo:
    """SIZE= (LF or CRLF line ends counted as CRLF) and whether any byte is 8-bit."""
    size = 0
    eight = False
    with _open(data) as f:
        for block in _blocks(f):
            block = block.replace(b"\r\n", b"\n")
            size += len(block) + block.count(b"\n")
            eight = eight or not block.isascii()
    return DataInfo(size, eight)


def wire_chunks(data: "bytes | Path | BinaryIO", chunk: int = CHUNK) -> Iterator[bytes]:
    """The DATA payload: CRLF lines, dot-stuffed, ending with ".\\r\\n"."""
    with _open(data) as f:
        last = b""
        for block in _blocks(f, chunk):
            if last:
                yield last
            # A leading LF makes the first line's dot look like any other's.
            last = ((b"\n" + block).replace(b"\r\n", b"\n").replace(b"\n.", b"\n..")
                    .replace(b"\n", b"\r\n")[2:])
    # The final "." goes in the same write as the last lines: a small
    # separate write would wait for a delayed ACK.
    yield last + b".\r\n"


def encode(data: bytes | Path) -> bytes:
    """The whole DATA payload at once (tests and small messages)."""
    return b"".join(wire_chunks(data))
