"""The serve wire format: one s-expression per line, pure functions only.

Requests come from Emacs's ``prin1`` (with ``print-escape-newlines`` t) and
are parsed with sexpdata; replies and events are printed here so that
Emacs's ``read`` gets plain data: strings, integers, floats, symbols, lists.
Nothing is evaluated on either side.  See docs/protocol.md.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import sexpdata

PROTOCOL_VERSION = 1

#: A request line longer than this is refused (a 50 MB message goes as :file).
MAX_LINE = 32 * 1024 * 1024

OPS = ("hello", "send", "queue", "flush", "list", "show", "drop", "retry",
       "check", "cancel", "credential", "shutdown")


class Sym(str):
    """A Lisp symbol (``nil`` and ``t`` are None and True, never a Sym)."""

    def __repr__(self) -> str:
        return f"Sym({str(self)!r})"


def kw(name: str) -> Sym:
    """The keyword symbol ``:name``."""
    return Sym(":" + name)


class ProtocolError(Exception):
    """A request that cannot be understood; ``request_id`` when it was known."""

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


# ---------------------------------------------------------------- printing

_SYMBOL_RE = re.compile(r"\A:?[A-Za-z][A-Za-z0-9+*/<>=_.-]*\Z")


def _print_string(s: str) -> str:
    # Emacs's reader: only \ and " need a backslash; \n keeps it one line.
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dumps(value: Any) -> str:
    """Print ``value`` as one line that Emacs's ``read`` turns back into it.

    None -> nil, True -> t, False -> nil, str -> string, Sym -> symbol,
    int/float -> number, list/tuple -> list, Mapping -> plist with keyword keys.
    """
    if value is None or value is False:
        return "nil"
    if value is True:
        return "t"
    if isinstance(value, Sym):
        if value in ("nil", "t") or not _SYMBOL_RE.match(value):
            raise ValueError(f"not a printable symbol: {value!r}")
        return str(value)
    if isinstance(value, str):
        return _print_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return "nil"
        return repr(value)
    if isinstance(value, Mapping):
        parts: list[str] = []
        for k, v in value.items():
            parts.append(dumps(k if isinstance(k, Sym) else kw(str(k))))
            parts.append(dumps(v))
        return "(" + " ".join(parts) + ")" if parts else "nil"
    if isinstance(value, (list, tuple)):
        return "(" + " ".join(dumps(v) for v in value) + ")" if value else "nil"
    raise TypeError(f"cannot print {type(value).__name__}")


def message(head: str, **plist: Any) -> str:
    """One output line ``(HEAD :k v ...)``; ``_`` in keys becomes ``-``."""
    items: list[Any] = [Sym(head)]
    for k, v in plist.items():
        items.append(kw(k.replace("_", "-")))
        items.append(v)
    return dumps(items) + "\n"


# ----------------------------------------------------------------- parsing

def _convert(obj: Any) -> Any:
    if isinstance(obj, sexpdata.Symbol):
        name = obj.value()
        if name == "nil":
            return None
        if name == "t":
            return True
        return Sym(name)
    if isinstance(obj, bool):
        return obj or None
    if isinstance(obj, (str, int, float)):
        return obj
    if isinstance(obj, list):
        if not obj:
            return None
        return [_convert(x) for x in obj]
    # Quoted, Brackets, ...: things no request contains.
    raise ProtocolError(f"unsupported syntax: {sexpdata.dumps(obj)[:60]}")


def loads(text: str) -> Any:
    """Parse exactly one s-expression (nil/() -> None, t -> True)."""
    try:
        parsed = sexpdata.parse(text)
    except Exception as exc:  # sexpdata raises several ad hoc types
        raise ProtocolError(f"unreadable s-expression: {exc}") from None
    if len(parsed) != 1:
        raise ProtocolError(f"expected one s-expression, found {len(parsed)}")
    return _convert(parsed[0])


_ID_RE = re.compile(rb"\A\s*\(\s*[A-Za-z-]+\s+:id\s+(-?[0-9]+)(?=[\s)]|\Z)")


def sniff_id(line: bytes) -> int | None:
    """The request id at the start of a line we could not (or would not) parse."""
    m = _ID_RE.match(line[:200])
    return int(m.group(1)) if m else None


@dataclass
class Request:
    """A parsed request: ``(OP :id N :key value ...)``."""

    op: str
    id: int
    args: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.args.get(key, default)

    def string(self, key: str, *, required: bool = False) -> str | None:
        v = self.args.get(key)
        if v is None:
            if required:
                raise ProtocolError(f"{self.op}: :{key} is required", self.id)
            return None
        if not isinstance(v, str) or isinstance(v, Sym):
            raise ProtocolError(f"{self.op}: :{key} must be a string", self.id)
        return v

    def integer(self, key: str, *, required: bool = False) -> int | None:
        v = self.args.get(key)
        if v is None and not required:
            return None
        if not isinstance(v, int) or isinstance(v, bool):
            raise ProtocolError(f"{self.op}: :{key} must be an integer", self.id)
        return v

    def flag(self, key: str) -> bool:
        return self.args.get(key) is not None

    def strings(self, key: str) -> list[str] | None:
        v = self.args.get(key)
        if v is None:
            return None
        if not isinstance(v, list) or not all(
                isinstance(x, str) and not isinstance(x, Sym) for x in v):
            raise ProtocolError(f"{self.op}: :{key} must be a list of strings", self.id)
        return list(v)

    def data(self) -> bytes | None:
        """The message bytes given inline as base64 (``:data``)."""
        v = self.string("data")
        if v is None:
            return None
        try:
            return base64.b64decode(v.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise ProtocolError(f"{self.op}: :data is not valid base64", self.id) from None

    def vars(self) -> dict[str, Any]:
        """``:vars (:smtp-server "h" ...)`` as {"smtp-server": "h", ...}."""
        v = self.args.get("vars")
        if v is None:
            return {}
        try:
            return plist_to_dict(v)
        except ProtocolError as exc:
            raise ProtocolError(f"{self.op}: :vars {exc.message}", self.id) from None


def plist_to_dict(items: Any) -> dict[str, Any]:
    """A keyword plist as a dict keyed by names without the colon."""
    if not isinstance(items, list) or len(items) % 2:
        raise ProtocolError("must be a plist (:key value ...)")
    out: dict[str, Any] = {}
    for k, v in zip(items[::2], items[1::2]):
        if not isinstance(k, Sym) or not k.startswith(":") or len(k) < 2:
            raise ProtocolError(f"plist key {dumps(k) if _printable(k) else k!r} is not a keyword")
        out[k[1:]] = v
    return out


def _printable(x: Any) -> bool:
    try:
        dumps(x)
        return True
    except (TypeError, ValueError):
        return False


def parse_request(line: bytes, limit: int = MAX_LINE) -> Request:
    """Turn one input line into a Request or raise ProtocolError (with id)."""
    rid = sniff_id(line)
    if len(line) > limit:
        raise ProtocolError(f"request line too long (over {limit} bytes)", rid)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("request is not valid UTF-8", rid) from None
    try:
        form = loads(text) if text.strip() else None
    except ProtocolError as exc:
        raise ProtocolError(exc.message, rid) from None
    if not isinstance(form, list) or not isinstance(form[0], Sym):
        raise ProtocolError("a request is a list (OP :id N ...)", rid)
    try:
        args = plist_to_dict(form[1:])
    except ProtocolError as exc:
        raise ProtocolError(f"{form[0]}: {exc.message}", rid) from None
    rid = args.pop("id", None)
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise ProtocolError(f"{form[0]}: :id must be an integer", None)
    op = str(form[0])
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r}", rid)
    return Request(op, rid, args)


# ---------------------------------------------------------------- replies

def hello_line(package_version: str) -> str:
    """The line serve prints first, before reading anything."""
    return message("hello", protocol=PROTOCOL_VERSION, version=package_version,
                   ops=[Sym(o) for o in OPS])


def ok(request_id: int | None, **plist: Any) -> str:
    return message("ok", id=request_id, **plist)


def error(request_id: int | None, kind: str, text: str, *,
          code: int | None = None, reply: str | None = None, **plist: Any) -> str:
    """``(error :id N :kind K :message "..." :code 550 :reply "...")``."""
    return message("error", id=request_id, kind=Sym(kind), message=text,
                   code=code, reply=reply, **plist)


def event(request_id: int, type_: str, **plist: Any) -> str:
    return message("event", id=request_id, type=Sym(type_), **plist)


def encode_data(data: bytes) -> str:
    """Inline message bytes as the :data string."""
    return base64.b64encode(data).decode("ascii")


def iter_lines(chunks: Iterable[bytes], limit: int = MAX_LINE) -> Iterable[bytes]:
    """Split a byte stream at LF; a line over ``limit`` is yielded truncated
    to ``limit + 1`` bytes (so the caller sees it is too long) and the rest of
    it is dropped without being held in memory."""
    buf = bytearray()
    overflow = False
    for chunk in chunks:
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            if not overflow:
                buf += piece
                if len(buf) > limit:
                    del buf[limit + 1:]
                    overflow = True
            if nl < 0:
                break
            yield bytes(buf)
            buf.clear()
            overflow = False
            start = nl + 1
    if buf:
        yield bytes(buf)
