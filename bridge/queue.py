"""Emacs smtpmail's queue directory, read and written byte-compatibly.

Why this module exists: the queue is shared with real Emacs 28.2
(`smtpmail-send-it` writes it, `smtpmail-send-queued-mail` flushes it), so
the layout must be exactly Emacs's, while our own writes must be safe where
Emacs's are not (no name collisions, crash order, locking, tight modes) and
our reads must never execute anything (``.el`` files are parsed as data).

Layout (docs/queue-format.md has the full story)::

    <dir>/index                 one absolute data-file path + LF per entry
    <dir>/<name>                the message, LF line ends, final LF
    <dir>/<name>.el             (setq      smtpmail-recipient-address-list (...) ...)
    <dir>/<name>.bridge.json    our per-entry state; Emacs never reads it
    <dir>/.lock                 flush lock (fcntl.flock), holder's pid inside
    <dir>/.index.lock           short lock around index appends/rewrites

Pure parts (no I/O): :func:`format_el`, :func:`prin1`, :func:`parse_el`,
:func:`parse_index`, :func:`to_queue_lines`, :func:`name_date`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import itertools
import json
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Callable, Iterable, Iterator, Sequence, Union

import sexpdata

from bridge.errors import MessageError, QueueBusy, QueueError

RECIPIENTS_VAR = "smtpmail-recipient-address-list"
# smtpmail--stored-queue-variables, in Emacs's order, with our dict keys.
STORED_VARS: tuple[tuple[str, str], ...] = (
    ("smtpmail-smtp-server", "server"),
    ("smtpmail-stream-type", "stream_type"),
    ("smtpmail-smtp-service", "service"),
    ("smtpmail-smtp-user", "user"),
)
STORED_KEYS = tuple(key for _, key in STORED_VARS)
# Our only extension pair; Emacs's flush ignores variables it does not know.
SENDER_VAR = "smtpmail-bridge-envelope-sender"

STATES = ("queued", "deferred", "rejected", "possibly-delivered")
FAILURE_STATES = ("deferred", "rejected", "possibly-delivered")
# Every value smtpmail/network-stream accept (tls = ssl, network = nil).
STREAM_TYPE_SYMBOLS = ("starttls", "ssl", "tls", "plain", "network")

STATE_SUFFIX = ".bridge.json"
TEMP_PREFIX = ".qtmp-"
LOCK_NAME = ".lock"
INDEX_LOCK_NAME = ".index.lock"

MAX_EL_BYTES = 16 * 1024 * 1024
MAX_HEADER_BYTES = 1024 * 1024
CHUNK = 1024 * 1024
# An unlisted data+.el pair younger than this may be an Emacs write whose
# index line is a few milliseconds away; it is left for its writer.
ORPHAN_GRACE_SECONDS = 60.0

_STAMP_FORMAT = "%Y-%m-%d_%H:%M:%S"
_NAME_RE = re.compile(
    r"^(?P<stamp>\d{4}-\d\d-\d\d_\d\d:\d\d:\d\d)_"
    r"(?:(?P<counter>-?\d+)|b(?P<pid>\d+)-(?P<seq>\d+))$")
_SEQ = itertools.count(1)

DataSource = Union[bytes, bytearray, memoryview, BinaryIO, "os.PathLike[str]"]


# --------------------------------------------------------------------------
# Printing (Emacs 28 prin1 with default print settings)

_SYMBOL_ESCAPED = set("\"\\';#(),`?[].\u00a0")
_NUMBER_RE = re.compile(
    r"[+-]?(?:[0-9]+\.?"
    r"|(?:[0-9]*\.[0-9]+|[0-9]+)(?:[eE](?:[+-]?[0-9]+|\+INF|\+NaN))?)\Z")


def _prin1_symbol(name: str) -> str:
    if name == "":
        return "##"
    # A name that would read back as a number gets its first char escaped.
    confusing = bool(_NUMBER_RE.match(name))
    out = []
    for c in name:
        if c in _SYMBOL_ESCAPED or c <= " " or confusing:
            out.append("\\")
            confusing = False
        out.append(c)
    return "".join(out)


def prin1(value: object) -> str:
    """Print VALUE as Emacs's ``prin1`` does by default (for queue files).

    None/False/empty list -> ``nil``; True -> ``t``; sexpdata.Symbol -> a
    bare symbol; str -> ``"..."`` escaping only ``"`` and ``\\``; int ->
    decimal; list/tuple -> ``(a b)``.
    """
    if value is None or value is False:
        return "nil"
    if value is True:
        return "t"
    if isinstance(value, sexpdata.Symbol):
        return _prin1_symbol(str(value))
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        if not value:
            return "nil"
        return "(" + " ".join(prin1(v) for v in value) + ")"
    raise TypeError(f"cannot print {type(value).__name__} as Emacs Lisp")


def format_el(pairs: Sequence[tuple[str, object]]) -> bytes:
    """The companion ``.el`` exactly as Emacs 28.2 writes it (UTF-8)."""
    parts = ["(setq "]
    for name, value in pairs:
        parts.append(f"     {name} {prin1(value)}\n")
    parts.append(")\n")
    return "".join(parts).encode("utf-8")


def el_pairs(recipients: Sequence[str], stored: dict | None,
             sender: str | None) -> list[tuple[str, object]]:
    """The VAR VALUE pairs :meth:`Queue.add` writes, in order."""
    pairs: list[tuple[str, object]] = [(RECIPIENTS_VAR, list(recipients))]
    if stored is not None:
        for var, key in STORED_VARS:
            value = stored.get(key)
            if key == "stream_type" and value is not None:
                value = sexpdata.Symbol(value)
            pairs.append((var, value))
    if sender is not None:
        pairs.append((SENDER_VAR, sender))
    return pairs


# --------------------------------------------------------------------------
# Reading .el files as data

class UnsafeEl(ValueError):
    """The ``.el`` file is not plain data we understand: never use it."""


class _Reject(Exception):
    pass


_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "d": "\x7f", "e": "\x1b", "f": "\f",
                   "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_STR_SPECIAL = re.compile(r'["\\]')
_HEX = re.compile(r"[0-9A-Fa-f]*")
_OCT = re.compile(r"[0-7]{1,3}")
_ATOM_END = set(" \t\n\r\f\v()[]\";'`,#\u00a0")


class _ElParser(sexpdata.Parser):
    """sexpdata's list/quote/comment parsing with Emacs's own atom rules.

    sexpdata (1.0.2) keeps unknown string escapes as two characters, reads
    ``?a`` / ``#x`` / backquote as ordinary symbols, crashes on an
    unterminated string and maps nil/t to Python values; Emacs semantics
    need exact strings and every unusual read syntax refused.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text, nil=None, true=None, false=None)

    def parse_str(self, i: int) -> tuple[int, str]:
        s = self.string
        out: list[str] = []
        i += 1
        while True:
            m = _STR_SPECIAL.search(s, i)
            if m is None:
                raise _Reject("unterminated string")
            j = m.start()
            out.append(s[i:j])
            if s[j] == '"':
                return j + 1, "".join(out)
            if j + 1 >= len(s):
                raise _Reject("unterminated string")
            e = s[j + 1]
            i = j + 2
            if e in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[e])
            elif e in "\n ":
                pass                    # ignored inside strings
            elif e == "s" and not s.startswith("-", i):
                out.append(" ")
            elif e == "x":
                digits = _HEX.match(s, i).group()
                if not digits:
                    raise _Reject("invalid \\x escape in a string")
                code = int(digits, 16)
                if len(digits) < 3 and code >= 0x80:
                    raise _Reject("raw-byte escape in a string")
                out.append(_char(code))
                i += len(digits)
            elif e in "01234567":
                digits = _OCT.match(s, j + 1).group()
                code = int(digits, 8)
                if code >= 0x80:
                    raise _Reject("raw-byte escape in a string")
                out.append(chr(code))
                i = j + 1 + len(digits)
            elif e in "uU":
                width = 4 if e == "u" else 8
                digits = s[i:i + width]
                if len(digits) != width or _HEX.fullmatch(digits) is None:
                    raise _Reject(f"invalid \\{e} escape in a string")
                out.append(_char(int(digits, 16)))
                i += width
            elif e in "CMSHAN^s":
                raise _Reject(f"unsupported escape \\{e} in a string")
            else:
                out.append(e)

    def parse_atom(self, i: int) -> tuple[int, object]:
        s = self.string
        first = s[i]
        if first in "?#`,":
            what = {"?": "character syntax", "#": "# read syntax",
                    "`": "backquote", ",": "comma (unquote)"}[first]
            raise _Reject(f"{what} {s[i:i + 12]!r} is not allowed")
        if first in _ATOM_END or first < " ":
            raise _Reject(f"unexpected character {first!r}")
        chars: list[str] = []
        escaped = False
        n = len(s)
        while i < n:
            c = s[i]
            if c == "\\":
                if i + 1 >= n:
                    raise _Reject("backslash at end of file")
                chars.append(s[i + 1])
                escaped = True
                i += 2
                continue
            if c in _ATOM_END or c < " ":
                break
            chars.append(c)
            i += 1
        token = "".join(chars)
        if not escaped:
            if token == ".":
                raise _Reject("dotted pair is not allowed")
            if _NUMBER_RE.match(token):
                if re.fullmatch(r"[+-]?[0-9]+\.?", token):
                    return i, int(token.rstrip("."))
                return i, _Float(token)
        return i, sexpdata.Symbol(token)


class _Float(str):
    """A float literal; no queue variable takes one, so it only gets reported."""


def _char(code: int) -> str:
    if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        raise _Reject("escape names no character")
    return chr(code)


def read_forms(text: str) -> list:
    """Every top-level form of TEXT as data (sexpdata types); UnsafeEl if unreadable.

    Strings follow Emacs's escape rules; ``nil``/``t`` stay Symbols; any
    read syntax beyond lists, strings, integers, symbols and ``'`` is refused.
    """
    try:
        return _ElParser(text).parse()
    except _Reject as e:
        raise UnsafeEl(str(e)) from None
    except RecursionError:
        raise UnsafeEl("lists nested too deeply") from None
    except Exception as e:          # sexpdata's own errors: unbalanced parens
        raise UnsafeEl(f"unreadable ({type(e).__name__}: unbalanced parentheses?)") from None


@dataclass
class ElContents:
    """What a safe ``.el`` file says."""

    recipients: list[str]
    stored: dict[str, object]
    sender: str | None
    notes: list[str] = field(default_factory=list)


def _is_sym(x: object, name: str | None = None) -> bool:
    return isinstance(x, sexpdata.Symbol) and (name is None or str(x) == name)


def _is_str(x: object) -> bool:
    return isinstance(x, str) and not isinstance(x, (sexpdata.String, _Float))


def _is_nil(x: object) -> bool:
    return _is_sym(x, "nil") or (isinstance(x, list) and not x)


def _describe(x: object) -> str:
    try:
        text = sexpdata.dumps(x)
    except Exception:
        text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_text(value: str, what: str) -> None:
    if any(c in value for c in "\r\n\0"):
        raise UnsafeEl(f"{what} contains a line break or NUL")


def _value_recipients(value: object) -> list[str]:
    if _is_nil(value):
        return []
    if _is_str(value):
        raise UnsafeEl(f"{RECIPIENTS_VAR} is a string, not a list "
                       "(Emacs 28 fails: Wrong type argument: listp)")
    if not isinstance(value, list):
        raise UnsafeEl(f"{RECIPIENTS_VAR} is {_describe(value)}, not a list of strings")
    if value and isinstance(value[0], sexpdata.Symbol):
        raise UnsafeEl(f"{RECIPIENTS_VAR} is a function call {_describe(value)}")
    for item in value:
        if not _is_str(item):
            raise UnsafeEl(f"{RECIPIENTS_VAR} contains {_describe(item)}, not a string")
        if not item:
            raise UnsafeEl(f"{RECIPIENTS_VAR} contains an empty address")
        _check_text(item, "a recipient")
    return list(value)


def _value_string_or_nil(value: object, var: str) -> str | None:
    if _is_nil(value):
        return None
    if not _is_str(value):
        raise UnsafeEl(f"{var} is {_describe(value)}, not a string or nil")
    _check_text(value, var)
    return value


def _value_service(value: object) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 < value < 65536:
            raise UnsafeEl(f"smtpmail-smtp-service {value} is not a port number")
        return value
    if _is_str(value) and value:
        _check_text(value, "smtpmail-smtp-service")
        return value
    raise UnsafeEl(f"smtpmail-smtp-service is {_describe(value)}, not an integer or string")


def _value_stream_type(value: object) -> str | None:
    if _is_nil(value):
        return None
    if _is_sym(value) and str(value) in STREAM_TYPE_SYMBOLS:
        return str(value)
    raise UnsafeEl(f"smtpmail-stream-type is {_describe(value)}, not one of "
                   "nil, " + ", ".join(STREAM_TYPE_SYMBOLS))


def _unquote(value: object) -> tuple[object, bool]:
    if isinstance(value, sexpdata.Quoted):
        return value.x, True
    if (isinstance(value, list) and len(value) == 2 and _is_sym(value[0], "quote")):
        return value[1], True
    return value, False


def parse_el(raw: bytes) -> ElContents:
    """Read a queue ``.el`` file as data; raise :class:`UnsafeEl` otherwise.

    Accepted: one ``(setq VAR VALUE ...)`` form setting only smtpmail's five
    queue variables and our extension, with values of the right types; a
    value may be quoted once (the Emacs 24-27 format), which is noted.
    """
    if len(raw) > MAX_EL_BYTES:
        raise UnsafeEl(f"file is larger than {MAX_EL_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeEl("file is not valid UTF-8") from None
    forms = read_forms(text)
    if not forms:
        raise UnsafeEl("file holds no expression")
    if len(forms) > 1:
        raise UnsafeEl("more than one top-level form")
    form = forms[0]
    if not (isinstance(form, list) and form and _is_sym(form[0], "setq")):
        raise UnsafeEl(f"not a (setq ...) form: {_describe(form)}")
    args = form[1:]
    if not args:
        raise UnsafeEl("(setq) without arguments")
    if len(args) % 2:
        raise UnsafeEl("odd number of arguments to setq")
    recipients: list[str] | None = None
    stored: dict[str, object] = {}
    sender: str | None = None
    notes: list[str] = []
    seen: set[str] = set()
    stored_keys = dict(STORED_VARS)
    for var, value in zip(args[0::2], args[1::2]):
        if not _is_sym(var):
            raise UnsafeEl(f"{_describe(var)} is not a variable name")
        name = str(var)
        if name in seen:
            raise UnsafeEl(f"{name} is set twice")
        seen.add(name)
        value, quoted = _unquote(value)
        if quoted and name in (RECIPIENTS_VAR, *stored_keys, SENDER_VAR):
            notes.append(f"{name} uses the Emacs 24-27 quoted format; "
                         "Emacs 28's flush would mis-read it")
        if name == RECIPIENTS_VAR:
            recipients = _value_recipients(value)
        elif name == "smtpmail-smtp-server":
            stored["server"] = _value_string_or_nil(value, name)
        elif name == "smtpmail-smtp-user":
            stored["user"] = _value_string_or_nil(value, name)
        elif name == "smtpmail-smtp-service":
            stored["service"] = _value_service(value)
        elif name == "smtpmail-stream-type":
            stored["stream_type"] = _value_stream_type(value)
        elif name == SENDER_VAR:
            sender = _value_string_or_nil(value, name)
        else:
            raise UnsafeEl(f"unknown variable {name}")
    if recipients is None:
        recipients = []
        notes.append(f"{RECIPIENTS_VAR} is not set (no recipients)")
    return ElContents(recipients, stored, sender, notes)


# --------------------------------------------------------------------------
# Data files

def to_queue_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Stream CHUNKS with CRLF turned into LF and a final LF ensured.

    A CR split from its LF across chunks is handled; a lone CR elsewhere is
    kept, a CR at the very end becomes the final LF.  Empty input stays empty.
    """
    held_cr = False
    last = b""
    for chunk in chunks:
        if not chunk:
            continue
        chunk = bytes(chunk)
        if held_cr:
            chunk = b"\r" + chunk
            held_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            held_cr = True
        out = chunk.replace(b"\r\n", b"\n")
        if out:
            last = out[-1:]
            yield out
    if held_cr:
        yield b"\n"
    elif last and last != b"\n":
        yield b"\n"


def _source_chunks(data: DataSource) -> Iterator[bytes]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data).cast("B")
        for start in range(0, len(view), CHUNK):
            yield bytes(view[start:start + CHUNK])
    elif isinstance(data, os.PathLike):
        with open(data, "rb") as f:
            yield from _read_chunks(f)
    elif hasattr(data, "read"):
        yield from _read_chunks(data)
    else:
        raise TypeError("message data must be bytes, a binary file object or a Path")


def _read_chunks(f: IO[bytes]) -> Iterator[bytes]:
    while True:
        chunk = f.read(CHUNK)
        if not chunk:
            return
        if not isinstance(chunk, (bytes, bytearray)):
            raise TypeError("message file object must be opened in binary mode")
        yield chunk


def name_date(name: str) -> datetime.datetime | None:
    """The local time encoded in an Emacs-style queue name, aware, or None."""
    m = _NAME_RE.match(name)
    if not m:
        return None
    try:
        naive = datetime.datetime.strptime(m.group("stamp"), _STAMP_FORMAT)
    except ValueError:
        return None
    return naive.astimezone()


def _writer(name: str) -> str | None:
    m = _NAME_RE.match(name)
    if not m:
        return None
    return "emacs" if m.group("counter") is not None else f"bridge pid {m.group('pid')}"


# --------------------------------------------------------------------------
# Index

@dataclass
class IndexLine:
    """One line of the index file, as text, with what is odd about it."""

    lineno: int
    text: str
    notes: list[str]


def parse_index(raw: bytes) -> list[IndexLine]:
    """Split index bytes into lines, noting CRLF and a missing final LF."""
    if not raw:
        return []
    parts = raw.split(b"\n")
    missing_lf = parts[-1] != b""
    if not missing_lf:
        parts.pop()
    lines = []
    for n, part in enumerate(parts, 1):
        notes = []
        if part.endswith(b"\r"):
            part = part[:-1]
            notes.append("CRLF line end")
        if missing_lf and n == len(parts):
            notes.append("no final newline")
        lines.append(IndexLine(n, os.fsdecode(part), notes))
    return lines


# --------------------------------------------------------------------------
# Entries and scan results

@dataclass
class Entry:
    """One queued message that is safe to send."""

    id: str
    data_path: Path
    el_path: Path
    recipients: list[str]
    stored: dict[str, object]        # keys among server, stream_type, service, user
    sender: str | None
    size: int
    date: datetime.datetime
    state: str = "queued"
    last_error: str | None = None
    attempts: int = 0
    last_attempt: datetime.datetime | None = None
    transcript: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def state_path(self) -> Path:
        return self.data_path.with_name(self.id + STATE_SUFFIX)

    def headers(self) -> bytes:
        """The header block (up to, not including, the empty line)."""
        return read_headers(self.data_path)


@dataclass
class Unsafe:
    """An entry we refuse to touch, and why."""

    id: str
    reason: str
    data_path: Path
    el_path: Path

    @property
    def state_path(self) -> Path:
        return self.data_path.with_name(self.id + STATE_SUFFIX)


@dataclass
class Scan:
    entries: list[Entry] = field(default_factory=list)
    unsafe: list[Unsafe] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)   # orphans put back


def read_headers(path: str | os.PathLike[str]) -> bytes:
    """Read just the header block of a message file (bounded)."""
    out = []
    total = 0
    with open(path, "rb") as f:
        while total < MAX_HEADER_BYTES:
            line = f.readline(MAX_HEADER_BYTES - total)
            if not line or line in (b"\n", b"\r\n"):
                break
            out.append(line)
            total += len(line)
    return b"".join(out)


# --------------------------------------------------------------------------
# File-system helpers

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _link_noreplace(src: Path, dst: Path) -> None:
    """Give SRC the name DST unless DST exists (FileExistsError)."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP,
                           errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        # No hard links here: every writer of our names holds the index
        # lock, and Emacs cannot produce them, so check-then-rename is safe.
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "exists", str(dst)) from None
        os.rename(src, dst)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _iso(dt: datetime.datetime | None) -> str | None:
    return None if dt is None else dt.isoformat()


# --------------------------------------------------------------------------
# The queue

class Queue:
    """Emacs's queue directory with safe concurrent writes and a flush lock.

    Thread- and process-safe: appends and index rewrites serialise on
    ``.index.lock``; a flush holds ``.lock`` (see :meth:`lock`).
    """

    def __init__(self, directory: str | os.PathLike[str], index_name: str = "index",
                 *, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(os.path.abspath(os.path.expanduser(os.fspath(directory))))
        self.index_path = self.directory / os.path.expanduser(index_name)
        self._clock = clock
        self._locks_held = 0
        self._realdir_cache: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> "Queue":
        """The queue of ``settings.queue_dir`` (``~`` expanded now)."""
        return cls(os.path.expanduser(settings.queue_dir), settings.queue_index_file)

    def __repr__(self) -> str:
        return f"Queue({str(self.directory)!r})"

    # -- paths -----------------------------------------------------------

    def data_path(self, entry_id: str) -> Path:
        return self.directory / entry_id

    def _el(self, entry_id: str) -> Path:
        return self.directory / (entry_id + ".el")

    def _state(self, entry_id: str) -> Path:
        return self.directory / (entry_id + STATE_SUFFIX)

    def _temp_name(self) -> Path:
        return self.directory / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"

    def _ensure_dir(self) -> None:
        """Create the queue directory and missing parents with mode 0700."""
        missing = []
        path = self.directory
        while not path.exists():
            missing.append(path)
            if path.parent == path:
                break
            path = path.parent
        for p in reversed(missing):
            try:
                os.mkdir(p, 0o700)
            except FileExistsError:
                continue
            os.chmod(p, 0o700)
        if not self.directory.is_dir():
            raise QueueError(f"queue directory {self.directory} is not a directory")

    # -- locks -----------------------------------------------------------

    @contextlib.contextmanager
    def _index_lock(self, optional: bool = False) -> Iterator[bool]:
        try:
            fd = os.open(self.directory / INDEX_LOCK_NAME,
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            if optional and e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                yield False
                return
            raise QueueError(f"cannot lock the queue index in {self.directory}: "
                             f"{e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield True
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def lock(self, timeout: float | None) -> Iterator["Queue"]:
        """Hold the flush lock (``<dir>/.lock``) or raise QueueBusy.

        ``timeout`` 0 tries once, ``None`` waits forever.  The kernel drops
        the lock when the holder dies.  Each call opens its own descriptor,
        so a second ``lock()`` in the same process (thread) also waits.
        """
        self._ensure_dir()
        path = self.directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if timeout is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                deadline = time.monotonic() + max(timeout, 0.0)
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise QueueBusy(
                                f"queue {self.directory} is busy: another flush "
                                f"(pid {self._lock_holder(path)}) holds the lock") from None
                        time.sleep(min(0.05, remaining))
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._locks_held += 1
            try:
                yield self
            finally:
                self._locks_held -= 1
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    @staticmethod
    def _lock_holder(path: Path) -> str:
        try:
            text = path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            return "unknown"
        return text if text.isdigit() else "unknown"

    # -- writing ---------------------------------------------------------

    def _write_temp(self, chunks: Iterable[bytes]) -> Path:
        path = self._temp_name()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            for chunk in chunks:
                _write_all(fd, chunk)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        os.close(fd)
        return path

    def add(self, data: DataSource, recipients: Sequence[str], *,
            stored: dict | None = None, sender: str | None = None) -> Entry:
        """Queue a message as Emacs would, under a name Emacs never uses.

        ``stored`` (keys server/stream_type/service/user; missing = nil) is
        written when given, as smtpmail-store-queue-variables would; ``sender``
        goes into our extension pair.  Safe while another process flushes.
        """
        recipients = _check_recipients(recipients)
        stored_clean = None if stored is None else _check_stored(stored)
        if sender is not None:
            if not isinstance(sender, str) or any(c in sender for c in "\r\n\0"):
                raise MessageError("envelope sender must be a string without line breaks")
        el_bytes = format_el(el_pairs(recipients, stored_clean, sender))
        when = self._clock()
        self._ensure_dir()
        temps: list[Path] = []
        try:
            temps.append(self._write_temp(to_queue_lines(_source_chunks(data))))
            temps.append(self._write_temp([el_bytes]))
            with self._index_lock():
                name = self._place(temps[0], temps[1], when)
                for t in temps:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(t)
                _fsync_dir(self.directory)
                self._append_index(self.data_path(name))
        finally:
            for t in temps:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(t)
        data_path = self.data_path(name)
        return Entry(id=name, data_path=data_path, el_path=self._el(name),
                     recipients=list(recipients),
                     stored=dict(stored_clean) if stored_clean is not None else {},
                     sender=sender, size=data_path.stat().st_size,
                     date=name_date(name) or datetime.datetime.now().astimezone())

    def _place(self, tmp_data: Path, tmp_el: Path, when: float) -> str:
        stamp = time.strftime(_STAMP_FORMAT, time.localtime(when))
        pid = os.getpid()
        for _ in range(100000):
            name = f"{stamp}_b{pid}-{next(_SEQ)}"
            try:
                _link_noreplace(tmp_data, self.data_path(name))
            except FileExistsError:
                continue
            try:
                _link_noreplace(tmp_el, self._el(name))
            except FileExistsError:
                os.unlink(self.data_path(name))
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._state(name))     # never inherit old state
            return name
        raise QueueError(f"cannot find a free name in {self.directory}")

    def _append_index(self, data_path: Path) -> None:
        """Append one line (single write, fsync); caller holds the index lock."""
        existed = self.index_path.exists()
        fd = os.open(self.index_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            line = os.fsencode(str(data_path)) + b"\n"
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line        # hand-edited index without final LF
            _write_all(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if not existed:
            _fsync_dir(self.index_path.parent)

    # -- reading ---------------------------------------------------------

    def _locate(self, text: str) -> tuple[str | None, list[str]]:
        """Map an index line to an entry name in our directory, or None."""
        notes = []
        path = text
        if path.startswith("~"):
            path = os.path.expanduser(path)
            notes.append("~ path")
        if not os.path.isabs(path):
            path = os.path.join(self.directory, path)
            notes.append("relative path (taken relative to the queue directory; "
                         "Emacs would use its current directory)")
        path = os.path.normpath(path)
        parent, name = os.path.split(path)
        if not name:
            return None, notes
        if parent != str(self.directory):
            real = self._realdir_cache.get(parent)
            if real is None:
                real = os.path.realpath(parent)
                self._realdir_cache[parent] = real
            if real != os.path.realpath(self.directory):
                return None, notes
        return name, notes

    def _read_index(self) -> bytes | None:
        try:
            return self.index_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise QueueError(f"cannot read the queue index {self.index_path}: "
                             f"{e.strerror}") from e

    def scan(self) -> Scan:
        """Read the index and files; restore orphans; never raises on bad content."""
        result = Scan()
        if not self.directory.exists():
            return result
        if not self.directory.is_dir():
            raise QueueError(f"queue directory {self.directory} is not a directory")
        self._check_dir_mode(result)
        with self._index_lock(optional=True) as locked:
            raw = self._read_index()
            try:
                listing = set(os.listdir(self.directory))
            except OSError as e:
                raise QueueError(f"cannot list {self.directory}: {e.strerror}") from e
            names, mentioned = self._index_names(raw, result, listing)
            if locked:
                names += self._restore_orphans(mentioned, listing, result)
            elif raw is not None:
                result.problems.append("queue directory is not writable: "
                                       "orphans were not looked for")
        self._same_second_writers(names, result)
        loose_modes = []
        for name in names:
            self._load_entry(name, result, loose_modes)
        self._clean_leftovers(listing, result)
        for path in (self.index_path,):
            with contextlib.suppress(OSError):
                if path.stat().st_mode & 0o077:
                    loose_modes.insert(0, path.name)
        if loose_modes:
            shown = ", ".join(loose_modes[:5])
            more = f" and {len(loose_modes) - 5} more" if len(loose_modes) > 5 else ""
            result.problems.append(
                f"queue files readable by group/others: {shown}{more} "
                f"(chmod 600 them; queued mail is private)")
        return result

    def _check_dir_mode(self, result: Scan) -> None:
        mode = stat.S_IMODE(self.directory.stat().st_mode)
        if mode & 0o077:
            result.problems.append(
                f"queue directory {self.directory} is accessible by group/others "
                f"(mode {mode:04o}); chmod 700 it")

    def _index_names(self, raw: bytes | None, result: Scan,
                     listing: set[str]) -> tuple[list[str], set[str]]:
        """Entry names with both files, in index order; and every name mentioned."""
        mentioned: set[str] = set()
        if raw is None:
            return [], mentioned
        names: list[str] = []
        seen: set[str] = set()
        crlf = 0
        for line in parse_index(raw):
            where = f"index line {line.lineno}"
            for note in line.notes:
                if note == "CRLF line end":
                    crlf += 1
                else:
                    result.problems.append(f"{where}: {note}")
            if line.text == "":
                result.problems.append(f"{where} is empty (Emacs's flush fails on it)")
                continue
            name, notes = self._locate(line.text)
            for note in notes:
                result.problems.append(f"{where} ({line.text}): {note}")
            if name is not None:
                mentioned.add(name)
            if name is None:
                result.problems.append(
                    f"{where} ({line.text}) is not in the queue directory; left alone")
                continue
            if name in seen:
                result.problems.append(
                    f"{where}: {name} is listed twice (two writers in the same "
                    "second? Emacs overwrites same-named files: a message may be lost)")
                continue
            seen.add(name)
            has_data = name in listing
            has_el = name + ".el" in listing
            if not has_data and not has_el:
                result.problems.append(
                    f"{where}: {name} has no files (already sent?); skipped")
                continue
            if not has_data or not has_el:
                missing = "data file" if not has_data else ".el file"
                result.problems.append(f"{where}: {name} has no {missing}; skipped")
                continue
            names.append(name)
        if crlf:
            result.problems.append(f"index has CRLF line ends ({crlf} lines); "
                                   "the next rewrite uses LF")
        return names, mentioned

    def _restore_orphans(self, mentioned: set[str], listing: set[str],
                         result: Scan) -> list[str]:
        """Append complete, safe, not-too-new unlisted pairs to the index."""
        now = self._clock()
        restored = []
        for name in sorted(listing):
            if not _NAME_RE.match(name) or name in mentioned:
                continue
            has_el = name + ".el" in listing
            if not has_el:
                result.problems.append(
                    f"{name} has no .el file and is not in the index; left alone")
                continue
            try:
                newest = max(self.data_path(name).stat().st_mtime,
                             self._el(name).stat().st_mtime)
                parse_el(self._el(name).read_bytes())
            except OSError:
                continue
            except UnsafeEl as e:
                result.problems.append(f"{name} is not in the index and its .el "
                                       f"is unsafe ({e}); not restored")
                continue
            if now - newest < ORPHAN_GRACE_SECONDS:
                result.problems.append(f"{name} is not in the index yet (written "
                                       "moments ago); left for its writer")
                continue
            self._append_index(self.data_path(name))
            restored.append(name)
            result.restored.append(name)
            result.problems.append(f"{name} was not in the index (orphan); "
                                   "appended to the index")
        for name in sorted(listing):
            if name.endswith(".el") and _NAME_RE.match(name[:-3]) \
                    and name[:-3] not in listing and name[:-3] not in mentioned:
                result.problems.append(f"{name} has no data file and is not "
                                       "in the index; left alone")
        return restored

    def _same_second_writers(self, names: list[str], result: Scan) -> None:
        by_second: dict[str, list[str]] = {}
        for name in names:
            m = _NAME_RE.match(name)
            if m:
                by_second.setdefault(m.group("stamp"), []).append(name)
        for stamp, group in by_second.items():
            writers = {_writer(n) for n in group}
            counters = [int(m.group("counter")) for m in map(_NAME_RE.match, group)
                        if m and m.group("counter") is not None]
            if "emacs" in writers and len(writers) > 1:
                result.problems.append(
                    f"Emacs and the bridge both queued mail at {stamp}: two Emacs "
                    "sessions queueing in the same second overwrite each other")
            elif any(b <= a for a, b in zip(counters, counters[1:])):
                result.problems.append(
                    f"more than one Emacs session queued mail at {stamp} "
                    "(same-second names can overwrite each other)")

    def _load_entry(self, name: str, result: Scan, loose_modes: list[str]) -> None:
        data_path, el_path = self.data_path(name), self._el(name)
        try:
            raw_el = el_path.read_bytes()
            data_stat = data_path.stat()
            el_mode = el_path.stat().st_mode
        except FileNotFoundError:
            result.problems.append(f"{name} vanished during the scan; skipped")
            return
        except OSError as e:
            result.unsafe.append(Unsafe(name, f"cannot read: {e.strerror}",
                                        data_path, el_path))
            return
        for path, mode in ((data_path, data_stat.st_mode), (el_path, el_mode)):
            if mode & 0o077:
                loose_modes.append(path.name)
        try:
            contents = parse_el(raw_el)
        except UnsafeEl as e:
            result.unsafe.append(Unsafe(name, f"{el_path.name}: {e}", data_path, el_path))
            return
        try:
            state = _read_state(self._state(name))
        except ValueError as e:
            result.unsafe.append(Unsafe(name, f"state file {name}{STATE_SUFFIX} "
                                        f"is unreadable ({e})", data_path, el_path))
            return
        for note in contents.notes:
            result.problems.append(f"{name}: {note}")
        date = name_date(name) or datetime.datetime.fromtimestamp(
            data_stat.st_mtime).astimezone()
        result.entries.append(Entry(
            id=name, data_path=data_path, el_path=el_path,
            recipients=contents.recipients, stored=contents.stored,
            sender=contents.sender, size=data_stat.st_size, date=date,
            notes=contents.notes, **state))

    def _clean_leftovers(self, listing: set[str], result: Scan) -> None:
        for name in sorted(listing):
            path = self.directory / name
            if name.endswith(STATE_SUFFIX):
                base = name[:-len(STATE_SUFFIX)]
                if base not in listing and base + ".el" not in listing:
                    with contextlib.suppress(FileNotFoundError, PermissionError):
                        os.unlink(path)
                        result.problems.append(f"removed {name}: its entry is gone")
            elif name.startswith(TEMP_PREFIX):
                pid = name[len(TEMP_PREFIX):].split("-", 1)[0]
                if pid.isdigit() and not _pid_alive(int(pid)):
                    with contextlib.suppress(FileNotFoundError, PermissionError):
                        os.unlink(path)
                        result.problems.append(
                            f"removed {name}: temporary file of a dead writer")

    def find(self, prefix: str, *, include_unsafe: bool = False) -> Entry | Unsafe:
        """The entry whose id starts with PREFIX (an exact id always wins)."""
        scan = self.scan()
        pool: list[Entry | Unsafe] = list(scan.entries)
        if include_unsafe:
            pool += scan.unsafe
        for item in pool:
            if item.id == prefix:
                return item
        matches = [item for item in pool if item.id.startswith(prefix)]
        if not matches:
            raise QueueError(f"no queued message matches {prefix}")
        if len(matches) > 1:
            raise QueueError(f"{prefix} is ambiguous: matches "
                             + ", ".join(m.id for m in matches))
        return matches[0]

    def open_data(self, entry: Entry) -> BinaryIO:
        """The data file's raw bytes (LF line ends as on disk)."""
        return open(entry.data_path, "rb")

    # -- state -----------------------------------------------------------

    def set_state(self, entry: Entry, state: str, *, error: str | None = None,
                  transcript: str | None = None) -> Entry:
        """Record a delivery outcome in the sidecar; returns the updated Entry.

        A failure state (deferred, rejected, possibly-delivered) counts one
        attempt and stamps the time; "queued" keeps the history.
        """
        if state not in STATES:
            raise ValueError(f"unknown queue state {state!r}")
        if not entry.data_path.exists():
            raise QueueError(f"{entry.id} is no longer queued")
        changes: dict[str, Any] = {"state": state}
        if state in FAILURE_STATES:
            changes["attempts"] = entry.attempts + 1
            changes["last_attempt"] = datetime.datetime.fromtimestamp(
                self._clock()).astimezone()
        if error is not None:
            changes["last_error"] = error
        if transcript is not None:
            changes["transcript"] = transcript
        new = dataclasses.replace(entry, **changes)
        self._write_state(new)
        return new

    def retry(self, entry: Entry) -> Entry:
        """Put a rejected/possibly-delivered/deferred entry back to "queued"."""
        return self.set_state(entry, "queued")

    def _write_state(self, entry: Entry) -> None:
        doc = {"format": 1, "state": entry.state, "attempts": entry.attempts,
               "last_error": entry.last_error, "last_attempt": _iso(entry.last_attempt),
               "transcript": entry.transcript}
        body = json.dumps(doc, ensure_ascii=False, indent=1).encode("utf-8") + b"\n"
        tmp = self._write_temp([body])
        try:
            os.rename(tmp, self._state(entry.id))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.directory)

    # -- removing --------------------------------------------------------

    def _delete_files(self, entry: Entry | Unsafe) -> None:
        for path in (entry.data_path, entry.el_path, entry.state_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def remove(self, entry: Entry | Unsafe) -> None:
        """Delete data, .el, sidecar, then rewrite the index without it.

        One index rewrite per call: O(index size).  A flush of many messages
        should use :meth:`batch` or :meth:`remove_many`.
        """
        self.remove_many([entry])

    def remove_many(self, entries: Iterable[Entry | Unsafe]) -> None:
        """Delete several entries' files, then rewrite the index once."""
        ids = set()
        for entry in entries:
            self._delete_files(entry)
            ids.add(entry.id)
        if ids:
            _fsync_dir(self.directory)
            self._rewrite_index(ids)

    def drop(self, entry: Entry | Unsafe) -> None:
        """:meth:`remove` for the user's "drop": the caller holds :meth:`lock`."""
        if self._locks_held <= 0:
            raise QueueError("drop() needs the queue lock: use `with queue.lock(...)`")
        self.remove(entry)

    def batch(self, every: int | None = None) -> "IndexBatch":
        """Removals whose index rewrite is amortised (see :class:`IndexBatch`)."""
        return IndexBatch(self, every)

    def compact(self) -> None:
        """Rewrite the index without stale, duplicate and blank lines."""
        if self.index_path.exists():
            self._rewrite_index(set())

    def _rewrite_index(self, drop_ids: set[str]) -> int:
        """Atomically rewrite the index without DROP_IDS' lines.

        Re-reads the index under the index lock, so lines appended meanwhile
        by add() survive.  Also drops blank, duplicate and stale lines (no
        data and no .el) and writes the rest as absolute paths; lines naming
        other directories are kept verbatim.
        """
        with self._index_lock():
            raw = self._read_index()
            if raw is None:
                return 0
            out: list[bytes] = []
            seen: set[str] = set()
            present = set(os.listdir(self.directory))   # one listing, not 2 stats a line
            prefix = os.fsencode(str(self.directory)) + b"/"
            for line in parse_index(raw):
                if line.text == "":
                    continue
                name, _ = self._locate(line.text)
                if name is None:
                    out.append(os.fsencode(line.text))
                    continue
                if name in drop_ids or name in seen:
                    continue
                if name not in present and name + ".el" not in present:
                    continue
                seen.add(name)
                out.append(prefix + os.fsencode(name))
            new = b"".join(line + b"\n" for line in out)
            if new == raw:
                return len(out)
            tmp = self._write_temp([new])
            try:
                os.rename(tmp, self.index_path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            _fsync_dir(self.index_path.parent)
            return len(out)


class IndexBatch:
    """Index rewrites for a flush: after each removal, yet O(N) in all.

    ``remove(entry)`` deletes the files at once (and fsyncs the directory,
    so a delivered message cannot come back after an OS crash).  Its index
    line is dropped by a rewrite that happens when the stale lines reach
    1/FRACTION of the index as last written, or INTERVAL seconds after the
    last rewrite, and when the batch ends (also on error).  So a queue of up
    to FRACTION entries is rewritten after every removal (an Emacs flush
    started meanwhile never meets a stale line), a big flush costs O(N)
    line writes instead of O(N^2), and at any moment at most 1/FRACTION of
    the lines, or INTERVAL seconds' worth, are stale.  With ``every`` the
    rewrite happens every EVERY removals instead (tests, benchmarks).
    """

    FRACTION = 16
    INTERVAL = 0.5

    def __init__(self, queue: Queue, every: int | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.queue = queue
        self.every = None if every is None else max(1, every)
        self.pending: set[str] = set()
        self.clock = clock
        self.last = clock()
        raw = queue._read_index()
        self.lines = len(parse_index(raw)) if raw else 0

    def __enter__(self) -> "IndexBatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    def due(self) -> bool:
        n = len(self.pending)
        if self.every is not None:
            return n >= self.every
        return (n * self.FRACTION >= self.lines
                or self.clock() - self.last >= self.INTERVAL)

    def remove(self, entry: Entry | Unsafe) -> None:
        self.queue._delete_files(entry)
        _fsync_dir(self.queue.directory)
        self.pending.add(entry.id)
        if self.due():
            self.flush()

    def flush(self) -> None:
        if self.pending:
            ids, self.pending = self.pending, set()
            self.lines = self.queue._rewrite_index(ids)
            self.last = self.clock()


# --------------------------------------------------------------------------
# Validation of what callers hand us

def _check_recipients(recipients: Sequence[str]) -> list[str]:
    if isinstance(recipients, (str, bytes)):
        raise TypeError("recipients must be a list of strings")
    out = []
    for r in recipients:
        if not isinstance(r, str):
            raise TypeError("recipients must be a list of strings")
        if not r or any(c in r for c in "\r\n\0"):
            raise MessageError(f"invalid recipient address {r!r}")
        out.append(r)
    return out


def _check_stored(stored: dict) -> dict[str, object]:
    unknown = set(stored) - set(STORED_KEYS)
    if unknown:
        raise ValueError(f"unknown stored queue variables: {sorted(unknown)}")
    clean: dict[str, object] = {key: stored.get(key) for key in STORED_KEYS}
    for key in ("server", "user"):
        v = clean[key]
        if v is not None and (not isinstance(v, str) or any(c in v for c in "\r\n\0")):
            raise ValueError(f"stored {key} must be a string without line breaks, or None")
    st = clean["stream_type"]
    if st is not None and st not in STREAM_TYPE_SYMBOLS:
        raise ValueError(f"stored stream_type {st!r} is not one of {STREAM_TYPE_SYMBOLS}")
    svc = clean["service"]
    if svc is not None:
        if isinstance(svc, bool) or not isinstance(svc, (int, str)):
            raise ValueError("stored service must be an integer or a string")
        if isinstance(svc, str) and (not svc or any(c in svc for c in "\r\n\0")):
            raise ValueError("stored service string must be non-empty, without line breaks")
    return clean


def _read_state(path: Path) -> dict[str, Any]:
    """Sidecar fields for Entry; ValueError when the file is corrupt."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ValueError(e.strerror) from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("state") not in STATES:
        raise ValueError("no valid state")
    attempts = doc.get("attempts", 0)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
        raise ValueError("bad attempts")
    last_attempt = doc.get("last_attempt")
    if last_attempt is not None:
        try:
            last_attempt = datetime.datetime.fromisoformat(last_attempt)
        except (TypeError, ValueError):
            raise ValueError("bad last_attempt") from None
    for key in ("last_error", "transcript"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise ValueError(f"bad {key}")
    return {"state": doc["state"], "attempts": attempts,
            "last_error": doc.get("last_error"), "last_attempt": last_attempt,
            "transcript": doc.get("transcript")}
