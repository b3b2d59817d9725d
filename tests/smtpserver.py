"""A real SMTP server on 127.0.0.1 for loopback tests (aiosmtpd underneath).

Why: every test of the bridge talks to a real socket, so the server must be
able to behave like the servers smtpmail meets (AUTH variants, STARTTLS,
implicit TLS, HELO-only, odd replies, drops, stalls) and record exactly what
it received.

Starting one
------------
    with SMTPTestServer(auth=["PLAIN"], users={"alice": "pw"}) as srv:
        ... connect to srv.host, srv.port ...
    srv.messages[0].data          # bytes exactly as received (dot-unstuffed)

`SMTPTestServer(**options)`; `start()` / `stop()` (idempotent; also a
context manager).  `.host` is "127.0.0.1", `.port` is chosen by the OS.
In pytest use the `smtp_server(**options)` factory fixture (tests/conftest.py).

Options (all keyword):
  tls              "none" | "starttls" | "implicit" (TLS from the first byte)
  cert             "good" (CA in SSL_CERT_FILE, valid for localhost and
                   127.0.0.1) | "untrusted" (other CA) | "wrong_host"
                   (trusted CA, name "wrong.example" only) | "expired"
  request_client_cert  ask for a client certificate (optional); its subject
                   is recorded as `Session.client_cert_subject`
  starttls         advertise/allow STARTTLS (default: tls == "starttls")
  auth             mechanisms offered, in order, from "PLAIN", "LOGIN",
                   "CRAM-MD5", "XOAUTH2" (default: none, no AUTH line)
  users            {user: password}; for XOAUTH2 the password is the token
  auth_require_tls offer/accept AUTH only on a TLS connection
  auth_required    MAIL/RCPT/DATA before AUTH -> 530 5.7.0 Authentication required
  cram_challenge   CRAM-MD5 challenge (default "<12345.67890@HOSTNAME>",
                   the one in the real-Emacs fixtures)
  helo_only        EHLO -> 502 5.5.2 Error: command not recognized
  reject_helo_name regexp; EHLO/HELO whose name matches (re.search) -> 501
  pipelining, smtputf8, eightbitmime (default True), verb (default False)
  size             int advertised as "SIZE n" and enforced, or None (default
                   33554432, as in the fixtures)
  extra_ehlo_lines extra EHLO keywords, e.g. ["ONEX", "XUSR", "DSN"]
  hostname         default "capture.test"
  greeting         greeting text, or a list of lines for a multi-line greeting
  greeting_code    default 220 (e.g. 554 to refuse the connection)
  delay            seconds the server waits before each reply

Fault injection (callable any time, thread-safe).  Command names: "GREETING",
"EHLO", "HELO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "DATA_END" (the
reply to the final "."), "RSET", "NOOP", "QUIT", "VERB", "ONEX", "XUSR".
Faults on one command are used first-registered first; `match` restricts a
fault to commands whose address (MAIL/RCPT) equals it, or whose argument
contains it (other commands).
  fail(command, code, text, times=1, match=None)  reply "code text" instead
                   (text with "\\n" gives a multi-line reply)
  disconnect(command, times=1, match=None)  drop the connection instead of
                   replying; for DATA_END the message is recorded in
                   `received_but_unacknowledged`
  stall(command, times=1, match=None)  never reply (until stop() or the
                   client closes); DATA_END: recorded as unacknowledged
  hold(command, times=1, match=None) -> Hold  delay the reply until
                   `hold.release()`; `hold.wait_reached(timeout)` -> bool
                   tells the test the client got that far (one release
                   frees every occurrence of that hold)

What it records (all thread-safe; lists are copies):
  messages                  accepted messages (`ReceivedMessage`)
  received_but_unacknowledged  data fully received, no reply sent
  rejected_messages         data received, answered with a fault reply
  connections               number of TCP connections accepted (counted
                            before any TLS handshake; an implicit-TLS
                            connection whose handshake failed leaves a
                            Session with tls False and no commands)
  commands                  [(session_id, line)] in arrival order; AUTH
                            payloads and SASL continuation lines are "<auth>"
  sessions                  {session_id: Session}: ehlo_name, tls, auth,
                            auth_attempts, tls_error (a failed STARTTLS
                            handshake), commands, transcript (plaintext
                            (direction, bytes) chunks both ways, TLS
                            decrypted; it DOES contain credentials, so never
                            print it), reads, closed
  round_trips(session_id)   reads from the socket that returned data
                            (after TLS: decrypted chunks); with PIPELINING a
                            client sending MAIL+RCPT+DATA in one write costs
                            one read instead of three
  errors                    exceptions the event loop reported (e.g. TLS)
  wait_for_messages(n, timeout=5) -> list   (Condition, no polling)
  wait_until(predicate, timeout=5)          predicate(server) -> bool

Certificates: `certificates()` returns the process-wide `TestCertificates`
(trustme CAs; PEM files in a temp dir removed at exit).  Clients trust the
good CA through SSL_CERT_FILE=certificates().ca_pem.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import binascii
import datetime
import hashlib
import hmac
import json
import re
import shutil
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import trustme
from aiosmtpd.smtp import SMTP, Envelope, TLSSetupException

__all__ = [
    "SMTPTestServer",
    "ReceivedMessage",
    "Session",
    "AuthInfo",
    "Hold",
    "TestCertificates",
    "certificates",
    "AUTH_OK",
    "AUTH_INVALID",
]

AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2")
TLS_MODES = ("none", "starttls", "implicit")
CERT_KINDS = ("good", "untrusted", "wrong_host", "expired")
DEFAULT_SIZE = 33554432


# --------------------------------------------------------------------------
# Certificates


class TestCertificates:
    """trustme CAs and leaf certificates, written once per process."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="smtptest-certs-"))
        self.ca = trustme.CA(organization_name="smtpmail-bridge test CA")
        self.untrusted_ca = trustme.CA(organization_name="untrusted test CA")
        self._leaves = {
            "good": self.ca.issue_cert("localhost", "127.0.0.1"),
            "untrusted": self.untrusted_ca.issue_cert("localhost", "127.0.0.1"),
            "wrong_host": self.ca.issue_cert("wrong.example"),
            "expired": self.ca.issue_cert(
                "localhost", "127.0.0.1",
                not_before=datetime.datetime(2000, 1, 1),
                not_after=datetime.datetime(2001, 1, 1)),
        }
        self.client = self.ca.issue_cert(
            "client@example.org", common_name="client@example.org")
        self.ca_pem = self.directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem))
        self.untrusted_ca_pem = self.directory / "untrusted-ca.pem"
        self.untrusted_ca.cert_pem.write_to_path(str(self.untrusted_ca_pem))
        self.client_cert_pem = self.directory / "client-cert.pem"
        self.client_key_pem = self.directory / "client-key.pem"
        self.client.cert_chain_pems[0].write_to_path(str(self.client_cert_pem))
        self.client.private_key_pem.write_to_path(str(self.client_key_pem))
        self.client_cert_pem.chmod(0o600)
        self.client_key_pem.chmod(0o600)

    def server_context(self, kind: str = "good",
                       request_client_cert: bool = False) -> ssl.SSLContext:
        """A server-side context presenting the `kind` certificate."""
        if kind not in CERT_KINDS:
            raise ValueError(f"cert must be one of {CERT_KINDS}, not {kind!r}")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._leaves[kind].configure_cert(ctx)
        if request_client_cert:
            self.ca.configure_trust(ctx)
            ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A client context trusting only the good CA (for smtplib tests)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_pem))
        return ctx

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


_certs_lock = threading.Lock()
_certs: Optional[TestCertificates] = None


def certificates() -> TestCertificates:
    """The process-wide certificates (created on first use)."""
    global _certs
    with _certs_lock:
        if _certs is None:
            _certs = TestCertificates()
            atexit.register(_certs.cleanup)
        return _certs


# --------------------------------------------------------------------------
# Pure protocol helpers


def reply_lines(code: int, text: str) -> list[str]:
    """Render a reply; "\\n" in text makes a multi-line reply."""
    parts = text.split("\n") if text else [""]
    out = [f"{code}-{p}" for p in parts[:-1]]
    out.append(f"{code} {parts[-1]}" if parts[-1] else f"{code}")
    return out


def ehlo_keywords(*, size: Optional[int], eightbitmime: bool, smtputf8: bool,
                  pipelining: bool, starttls: bool, auth: Sequence[str],
                  verb: bool, extra: Sequence[str]) -> list[str]:
    """The EHLO keywords (after the hostname line, before HELP)."""
    words: list[str] = []
    if size is not None:
        words.append(f"SIZE {size}")
    if eightbitmime:
        words.append("8BITMIME")
    if smtputf8:
        words.append("SMTPUTF8")
    if pipelining:
        words.append("PIPELINING")
    if starttls:
        words.append("STARTTLS")
    if auth:
        words.append("AUTH " + " ".join(auth))
    if verb:
        words.append("VERB")
    words.extend(extra)
    return words


def mask_command(line: str) -> str:
    """Hide an AUTH initial response: "AUTH PLAIN xyz" -> "AUTH PLAIN <auth>"."""
    parts = line.split(None, 2)
    if parts and parts[0].upper() == "AUTH" and len(parts) > 2:
        return f"{parts[0]} {parts[1]} <auth>"
    return line


def command_address(arg: str) -> Optional[str]:
    """The <address> of a MAIL/RCPT argument, or None."""
    m = re.search(r"<([^>]*)>", arg)
    return m.group(1) if m else None


def parse_plain(blob: bytes) -> Optional[tuple[str, str]]:
    """authzid NUL user NUL password -> (user, password)."""
    parts = blob.split(b"\x00")
    if len(parts) != 3:
        return None
    return parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")


def cram_md5_digest(password: str, challenge: bytes) -> str:
    return hmac.new(password.encode("utf-8"), challenge, hashlib.md5).hexdigest()


def parse_cram_md5(blob: bytes) -> Optional[tuple[str, str]]:
    """b"user hexdigest" -> (user, digest)."""
    user, sep, digest = blob.decode("utf-8", "replace").rpartition(" ")
    return (user, digest) if sep else None


def parse_xoauth2(blob: bytes) -> Optional[tuple[str, str]]:
    """user=U ^A auth=Bearer T ^A ^A -> (U, T)."""
    fields = blob.split(b"\x01")
    if len(fields) < 3 or fields[-2:] != [b"", b""]:
        return None
    user = token = None
    for f in fields[:-2]:
        if f.startswith(b"user="):
            user = f[5:].decode("utf-8", "replace")
        elif f.startswith(b"auth=Bearer "):
            token = f[12:].decode("utf-8", "replace")
    if user is None or token is None:
        return None
    return user, token


XOAUTH2_ERROR = base64.b64encode(json.dumps(
    {"status": "400", "schemes": "Bearer",
     "scope": "https://mail.google.com/"}).encode()).decode()


def b64decode_strict(text: str | bytes) -> Optional[bytes]:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


# --------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class AuthInfo:
    mechanism: str
    user: str


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    mail_options: list[str]
    rcpt_tos: list[str]
    rcpt_options: list[str]
    data: bytes
    auth: Optional[AuthInfo]
    tls: bool
    ehlo_name: Optional[str]
    session_id: int


@dataclass
class Session:
    """Everything about one TCP connection."""
    id: int
    ehlo_name: Optional[str] = None
    tls: bool = False
    client_cert_subject: Optional[tuple] = None
    tls_error: Optional[str] = None
    auth: Optional[AuthInfo] = None
    auth_attempts: list[tuple[str, Optional[str], bool]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    transcript: list[tuple[str, bytes]] = field(default_factory=list, repr=False)
    reads: int = 0
    closed: bool = False

    def client_bytes(self) -> bytes:
        return b"".join(b for d, b in self.transcript if d == "C")

    def server_bytes(self) -> bytes:
        return b"".join(b for d, b in self.transcript if d == "S")


@dataclass
class _Fault:
    command: str
    kind: str  # "fail" | "disconnect" | "stall" | "hold"
    times: int
    match: Optional[str]
    reply: Optional[list[str]] = None
    hold: Optional["Hold"] = None

    def matches(self, arg: str) -> bool:
        if self.match is None:
            return True
        if self.command in ("MAIL", "RCPT"):
            addr = command_address(arg)
            return addr is not None and addr.lower() == self.match.lower()
        return self.match in arg


class Hold:
    """Lets a test pause one server reply and resume it deterministically."""

    def __init__(self, command: str) -> None:
        self.command = command
        self._reached = threading.Event()
        self._lock = threading.Lock()
        self._released = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    @property
    def reached(self) -> bool:
        return self._reached.is_set()

    @property
    def released(self) -> bool:
        return self._released

    def wait_reached(self, timeout: Optional[float] = 5.0) -> bool:
        """True once the server has the held command (or greeting) in hand."""
        return self._reached.wait(timeout)

    def release(self) -> None:
        with self._lock:
            self._released = True
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_resolve, fut)

    set = release  # threading.Event-like spelling

    def is_set(self) -> bool:
        return self._released

    async def _block(self) -> None:
        self._reached.set()
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._released:
                return
            fut = loop.create_future()
            self._waiters.append((loop, fut))
        await fut


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


# --------------------------------------------------------------------------
# The aiosmtpd protocol subclass (I/O layer)


class _Protocol(SMTP):
    """One connection.  Hooks aiosmtpd at read, reply and dispatch points."""

    line_length_limit = 1 << 20  # smtpmail does not fold long lines
    command_size_limit = 1 << 16

    def __init__(self, server: "SMTPTestServer", session_id: int) -> None:
        self.srv = server
        self.sid = session_id
        o = server.options
        super().__init__(
            _Handler(self),
            data_size_limit=o["size"],
            enable_SMTPUTF8=o["smtputf8"],
            decode_data=False,
            hostname=o["hostname"],
            ident="capture-aiosmtpd",
            tls_context=server._starttls_context,
            loop=server._loop,
        )
        self.command_size_limits = _BigLimits()
        # aiosmtpd's check_auth_needed() gives the 530 we want.
        self._auth_required = o["auth_required"]
        self._greeted = False
        self._in_data = False
        self._expect_auth_line = False
        self._continuing = False
        for name, method in list(self._smtp_methods.items()):
            self._smtp_methods[name] = self._guarded(name, method)

    # -- state ---------------------------------------------------------------
    def _tls_active(self) -> bool:
        return self.srv.options["tls"] == "implicit" or self._tls_protocol is not None

    def _record(self) -> Session:
        return self.srv._sessions[self.sid]

    # -- reading ------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        with self.srv._cond:
            s = self._record()
            s.reads += 1
            s.transcript.append(("C", bytes(data)))
        super().data_received(data)

    def _cb_client_connected(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        super()._cb_client_connected(reader, writer)
        original = reader.readuntil

        async def readuntil(separator: bytes = b"\n") -> bytes:
            line = await original(separator)
            self._note_line(line)
            return line

        reader.readuntil = readuntil  # type: ignore[method-assign]

    def _note_line(self, line: bytes) -> None:
        if self._in_data:
            if line == b".\r\n":
                self._in_data = False
            return
        if self._expect_auth_line:
            self._expect_auth_line = False
            text = "<auth>"
        else:
            text = mask_command(line.rstrip(b"\r\n").decode("utf-8", "surrogateescape"))
        self.srv._add_command(self.sid, text)

    # -- replying -----------------------------------------------------------
    async def push(self, status: Any) -> None:
        if not self._greeted:
            self._greeted = True
            await self._greet()
            return
        await self._send(status if isinstance(status, str) else
                         status.decode("utf-8", "surrogateescape"))

    async def _send(self, line: str) -> None:
        delay = self.srv.options["delay"]
        if delay and not self._continuing:
            await asyncio.sleep(delay)
        self._continuing = len(line) > 3 and line[3] == "-"
        if line.startswith("354"):
            self._in_data = True
        elif line.startswith("334"):
            self._expect_auth_line = True
        data = line.encode("utf-8", "surrogateescape") + b"\r\n"
        with self.srv._cond:
            self._record().transcript.append(("S", data))
        if self.transport is None or self.transport.is_closing():
            return
        self._writer.write(data)
        await self._writer.drain()

    async def _send_lines(self, lines: Iterable[str]) -> None:
        for line in lines:
            await self._send(line)

    async def _greet(self) -> None:
        o = self.srv.options
        greeting = o["greeting"]
        if greeting is None:
            greeting = f"{o['hostname']} capture-aiosmtpd"
        text = "\n".join(greeting) if isinstance(greeting, (list, tuple)) else greeting
        lines = reply_lines(o["greeting_code"], text)
        if await self._apply_fault("GREETING", ""):
            return
        await self._send_lines(lines)

    # -- faults -------------------------------------------------------------
    async def _apply_fault(self, command: str, arg: str) -> bool:
        """Run an injected fault; True if it replaced the normal reply."""
        fault = self.srv._take_fault(command, arg)
        if fault is None:
            return False
        if fault.kind == "hold":
            assert fault.hold is not None
            await fault.hold._block()
            return False
        if fault.kind == "fail":
            assert fault.reply is not None
            await self._send_lines(fault.reply)
            return True
        if fault.kind == "disconnect":
            self._abort()
        # disconnect and stall: wait to be cancelled (connection lost / stop())
        await self.loop.create_future()
        return True  # pragma: no cover

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _guarded(self, name: str, method: Callable) -> Callable:
        async def run(arg: Optional[str]) -> None:
            if await self._apply_fault(name, arg or ""):
                return
            await method(arg)
        return run

    # -- connection events --------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        tls = self._tls_active()
        cert = None
        if tls:
            sslobj = transport.get_extra_info("ssl_object")
            if sslobj is None and self._tls_protocol is not None:
                sslobj = self._tls_protocol._extra.get("ssl_object")
            if sslobj is not None:
                peer = sslobj.getpeercert()
                cert = peer.get("subject") if peer else None
        with self.srv._cond:
            s = self._record()
            s.tls = tls
            s.client_cert_subject = cert
            self.srv._cond.notify_all()

    def connection_lost(self, error: Optional[Exception]) -> None:
        with self.srv._cond:
            self._record().closed = True
            self.srv._live.discard(self)
            self.srv._cond.notify_all()
        super().connection_lost(error)

    # -- commands -------------------------------------------------------------
    async def smtp_EHLO(self, hostname: str) -> None:
        o = self.srv.options
        if not hostname:
            await self._send("501 Syntax: EHLO hostname")
            return
        if o["helo_only"]:
            await self._send("502 5.5.2 Error: command not recognized")
            return
        if self._bad_helo_name(hostname):
            await self._send(f"501 5.5.4 Bad HELO name: {hostname}")
            return
        self._set_rset_state()
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = hostname
        self._note_helo(hostname)
        offer_auth = o["auth"] if (not o["auth_require_tls"] or self._tls_active()) else []
        words = ehlo_keywords(
            size=o["size"], eightbitmime=o["eightbitmime"], smtputf8=o["smtputf8"],
            pipelining=o["pipelining"],
            starttls=self.tls_context is not None and self._tls_protocol is None,
            auth=offer_auth, verb=o["verb"], extra=o["extra_ehlo_lines"])
        lines = [o["hostname"], *words, "HELP"]
        await self._send_lines([f"250-{w}" for w in lines[:-1]] + [f"250 {lines[-1]}"])

    async def smtp_HELO(self, hostname: str) -> None:
        if hostname and self._bad_helo_name(hostname):
            await self._send(f"501 5.5.4 Bad HELO name: {hostname}")
            return
        await super().smtp_HELO(hostname)
        if hostname:
            self._note_helo(hostname)

    def _bad_helo_name(self, name: str) -> bool:
        pattern = self.srv.options["reject_helo_name"]
        return bool(pattern and re.search(pattern, name))

    def _note_helo(self, name: str) -> None:
        with self.srv._cond:
            self._record().ehlo_name = name

    async def smtp_VERB(self, arg: Optional[str]) -> None:
        await self._send("250 2.0.0 Verbose mode")

    async def smtp_ONEX(self, arg: Optional[str]) -> None:
        await self._send("250 2.0.0 Only one transaction")

    async def smtp_XUSR(self, arg: Optional[str]) -> None:
        await self._send("250 2.0.0 Initial submission")

    async def smtp_AUTH(self, arg: Optional[str]) -> None:
        o = self.srv.options
        assert self.session is not None
        if await self.check_helo_needed("EHLO"):
            return
        if not self.session.extended_smtp:
            await self._send("500 Error: command 'AUTH' not recognized")
            return
        if o["auth_require_tls"] and not self._tls_active():
            await self._send("538 5.7.11 Encryption required for requested "
                             "authentication mechanism")
            return
        if self.session.authenticated:
            await self._send("503 5.5.1 Already authenticated")
            return
        args = (arg or "").split()
        if not args or len(args) > 2:
            await self._send("501 5.5.4 Syntax: AUTH mechanism [initial-response]")
            return
        mech = args[0].upper()
        if mech not in o["auth"]:
            await self._send("504 5.5.4 Unrecognized authentication type")
            return
        initial = args[1] if len(args) > 1 else None
        run = {"PLAIN": self._auth_plain, "LOGIN": self._auth_login,
               "CRAM-MD5": self._auth_cram_md5, "XOAUTH2": self._auth_xoauth2}[mech]
        await run(initial)

    async def _challenge(self, text: str) -> Optional[bytes]:
        """Send 334 text, return the decoded answer (None: reply already sent)."""
        await self._send(f"334 {text}")
        line = (await self._reader.readline()).strip()
        if line == b"*":
            await self._send("501 5.7.0 Auth aborted")
            return None
        blob = b64decode_strict(line)
        if blob is None:
            await self._send("501 5.5.2 Can't decode base64")
        return blob

    async def _initial(self, initial: Optional[str], challenge: str) -> Optional[bytes]:
        if initial is None:
            return await self._challenge(challenge)
        if initial == "=":
            return b""
        blob = b64decode_strict(initial)
        if blob is None:
            await self._send("501 5.5.2 Can't decode base64")
        return blob

    async def _finish_auth(self, mech: str, user: Optional[str], ok: bool) -> None:
        with self.srv._cond:
            s = self._record()
            s.auth_attempts.append((mech, user, ok))
            if ok and user is not None:
                s.auth = AuthInfo(mech, user)
            self.srv._cond.notify_all()
        if ok:
            assert self.session is not None
            self.session.authenticated = True
            await self._send(AUTH_OK)
        else:
            await self._send(AUTH_INVALID)

    def _password_ok(self, user: str, password: str) -> bool:
        want = self.srv.options["users"].get(user)
        return want is not None and hmac.compare_digest(
            want.encode("utf-8"), password.encode("utf-8"))

    async def _auth_plain(self, initial: Optional[str]) -> None:
        blob = await self._initial(initial, "")
        if blob is None:
            return
        parsed = parse_plain(blob)
        if parsed is None:
            await self._send("501 5.5.2 Can't split auth value")
            return
        user, password = parsed
        await self._finish_auth("PLAIN", user, self._password_ok(user, password))

    async def _auth_login(self, initial: Optional[str]) -> None:
        login = await self._initial(initial, base64.b64encode(b"User Name\x00").decode())
        if login is None:
            return
        password = await self._challenge(base64.b64encode(b"Password\x00").decode())
        if password is None:
            return
        user = login.decode("utf-8", "replace")
        await self._finish_auth("LOGIN", user, self._password_ok(
            user, password.decode("utf-8", "replace")))

    async def _auth_cram_md5(self, initial: Optional[str]) -> None:
        if initial is not None:
            await self._send("501 5.7.0 CRAM-MD5 takes no initial response")
            return
        challenge = self.srv.options["cram_challenge"].encode()
        blob = await self._challenge(base64.b64encode(challenge).decode())
        if blob is None:
            return
        parsed = parse_cram_md5(blob)
        if parsed is None:
            await self._finish_auth("CRAM-MD5", None, False)
            return
        user, digest = parsed
        want = self.srv.options["users"].get(user)
        ok = want is not None and hmac.compare_digest(
            cram_md5_digest(want, challenge), digest)
        await self._finish_auth("CRAM-MD5", user, ok)

    async def _auth_xoauth2(self, initial: Optional[str]) -> None:
        blob = await self._initial(initial, "")
        if blob is None:
            return
        parsed = parse_xoauth2(blob)
        if parsed is not None and self._password_ok(*parsed):
            await self._finish_auth("XOAUTH2", parsed[0], True)
            return
        # Like Gmail: an error challenge, then 535 whatever the client answers.
        await self._send(f"334 {XOAUTH2_ERROR}")
        await self._reader.readline()
        with self.srv._cond:
            self._record().auth_attempts.append(
                ("XOAUTH2", parsed[0] if parsed else None, False))
        await self._send(AUTH_INVALID)


class _BigLimits(dict):
    def __missing__(self, key: str) -> int:
        return _Protocol.command_size_limit


class _Handler:
    """aiosmtpd hooks: end of data, and exceptions (recorded, not logged)."""

    def __init__(self, proto: _Protocol) -> None:
        self.proto = proto

    async def handle_exception(self, error: Exception) -> str:
        p = self.proto
        with p.srv._cond:
            p.srv._errors.append(error)
            if isinstance(error, TLSSetupException):
                p.srv._sessions[p.sid].tls_error = repr(error.__cause__)
            p.srv._cond.notify_all()
        return f"500 Error: ({type(error).__name__}) {error}"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Envelope) -> str:
        p = self.proto
        srv = p.srv
        with srv._cond:
            rec = srv._sessions[p.sid]
            msg = ReceivedMessage(
                mail_from=envelope.mail_from or "",
                mail_options=list(envelope.mail_options),
                rcpt_tos=list(envelope.rcpt_tos),
                rcpt_options=list(envelope.rcpt_options),
                data=bytes(envelope.original_content or b""),
                auth=rec.auth,
                tls=p._tls_active(),
                ehlo_name=rec.ehlo_name,
                session_id=p.sid,
            )
        fault = srv._take_fault("DATA_END", "")
        if fault is not None and fault.kind == "hold":
            assert fault.hold is not None
            await fault.hold._block()
            fault = None
        if fault is None:
            srv._add_message(srv._messages, msg)
            return "250 Message accepted for delivery"
        if fault.kind == "fail":
            assert fault.reply is not None
            srv._add_message(srv._rejected, msg)
            await p._send_lines(fault.reply[:-1])
            return fault.reply[-1]
        srv._add_message(srv._unacked, msg)
        if fault.kind == "disconnect":
            p._abort()
        await p.loop.create_future()  # cancelled by connection loss / stop()
        return ""  # pragma: no cover


# --------------------------------------------------------------------------
# The server (thread + event loop)


class SMTPTestServer:
    """A loopback SMTP server running in its own thread; see module doc."""

    __test__ = False

    host = "127.0.0.1"

    def __init__(
        self, *,
        tls: str = "none",
        cert: str = "good",
        request_client_cert: bool = False,
        starttls: Optional[bool] = None,
        auth: Sequence[str] = (),
        users: Optional[dict[str, str]] = None,
        auth_require_tls: bool = False,
        auth_required: bool = False,
        cram_challenge: Optional[str] = None,
        helo_only: bool = False,
        reject_helo_name: Optional[str] = None,
        pipelining: bool = True,
        smtputf8: bool = True,
        eightbitmime: bool = True,
        size: Optional[int] = DEFAULT_SIZE,
        verb: bool = False,
        extra_ehlo_lines: Sequence[str] = (),
        hostname: str = "capture.test",
        greeting: str | Sequence[str] | None = None,
        greeting_code: int = 220,
        delay: float = 0.0,
    ) -> None:
        if tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {TLS_MODES}, not {tls!r}")
        if cert not in CERT_KINDS:
            raise ValueError(f"cert must be one of {CERT_KINDS}, not {cert!r}")
        mechs = [m.upper() for m in auth]
        for m in mechs:
            if m not in MECHANISMS:
                raise ValueError(f"unknown AUTH mechanism {m!r}")
        if starttls is None:
            starttls = tls == "starttls"
        if starttls and tls == "implicit":
            raise ValueError("STARTTLS on an implicit-TLS port makes no sense")
        self.options: dict[str, Any] = dict(
            tls=tls, cert=cert, request_client_cert=request_client_cert,
            starttls=starttls, auth=mechs, users=dict(users or {}),
            auth_require_tls=auth_require_tls, auth_required=auth_required,
            cram_challenge=cram_challenge or f"<12345.67890@{hostname}>",
            helo_only=helo_only, reject_helo_name=reject_helo_name,
            pipelining=pipelining, smtputf8=smtputf8, eightbitmime=eightbitmime,
            size=size, verb=verb, extra_ehlo_lines=list(extra_ehlo_lines),
            hostname=hostname, greeting=greeting, greeting_code=greeting_code,
            delay=delay,
        )
        ctx = None
        if starttls or tls == "implicit":
            ctx = certificates().server_context(cert, request_client_cert)
        self._starttls_context = ctx if starttls else None
        self._implicit_context = ctx if tls == "implicit" else None
        self.port: int = 0
        self._cond = threading.Condition(threading.RLock())
        self._sessions: dict[int, Session] = {}
        self._commands: list[tuple[int, str]] = []
        self._messages: list[ReceivedMessage] = []
        self._unacked: list[ReceivedMessage] = []
        self._rejected: list[ReceivedMessage] = []
        self._errors: list[BaseException | str] = []
        self._faults: list[_Fault] = []
        self._live: set[_Protocol] = set()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._server: Optional[asyncio.base_events.Server] = None

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> "SMTPTestServer":
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.set_exception_handler(self._loop_error)
            try:
                self._server = loop.run_until_complete(loop.create_server(
                    self._accept, self.host, 0, ssl=self._implicit_context))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as e:  # reported to start()
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="SMTPTestServer", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            fut.result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None
        with self._cond:
            for f in self._faults:
                if f.hold is not None:
                    f.hold.release()
            self._cond.notify_all()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        with self._cond:
            live = list(self._live)
        for proto in live:
            proto._abort()
            if proto._original_transport is not None:
                proto._original_transport.abort()
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    def __enter__(self) -> "SMTPTestServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<SMTPTestServer {self.host}:{self.port} tls={self.options['tls']}>"

    # -- event loop side --------------------------------------------------
    def _accept(self) -> _Protocol:
        with self._cond:
            sid = len(self._sessions) + 1
            self._sessions[sid] = Session(sid)
            self._cond.notify_all()
        proto = _Protocol(self, sid)
        with self._cond:
            self._live.add(proto)
        return proto

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        with self._cond:
            self._errors.append(context.get("exception") or context.get("message", ""))

    def _add_command(self, sid: int, text: str) -> None:
        with self._cond:
            self._commands.append((sid, text))
            self._sessions[sid].commands.append(text)
            self._cond.notify_all()

    def _add_message(self, bucket: list[ReceivedMessage], msg: ReceivedMessage) -> None:
        with self._cond:
            bucket.append(msg)
            self._cond.notify_all()

    def _take_fault(self, command: str, arg: str) -> Optional[_Fault]:
        with self._cond:
            for f in self._faults:
                if f.command == command and f.times > 0 and f.matches(arg):
                    f.times -= 1
                    return f
        return None

    # -- fault injection API ------------------------------------------------
    def _add_fault(self, fault: _Fault) -> _Fault:
        if fault.times < 1:
            raise ValueError("times must be >= 1")
        with self._cond:
            self._faults.append(fault)
        return fault

    def fail(self, command: str, code: int, text: str, times: int = 1,
             match: Optional[str] = None) -> None:
        """Answer the next `times` `command`s with `code text`."""
        cmd = command.upper()
        self._add_fault(_Fault(cmd, "fail", times, match, reply=reply_lines(code, text)))

    def disconnect(self, command: str, times: int = 1, match: Optional[str] = None) -> None:
        """Drop the connection instead of replying."""
        self._add_fault(_Fault(command.upper(), "disconnect", times, match))

    def stall(self, command: str, times: int = 1, match: Optional[str] = None) -> None:
        """Never reply (until stop() or the client hangs up)."""
        self._add_fault(_Fault(command.upper(), "stall", times, match))

    def hold(self, command: str, times: int = 1, match: Optional[str] = None) -> Hold:
        """Delay the reply until the returned handle is released."""
        h = Hold(command.upper())
        self._add_fault(_Fault(command.upper(), "hold", times, match, hold=h))
        return h

    # -- observations -------------------------------------------------------
    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._cond:
            return list(self._messages)

    @property
    def received_but_unacknowledged(self) -> list[ReceivedMessage]:
        with self._cond:
            return list(self._unacked)

    @property
    def rejected_messages(self) -> list[ReceivedMessage]:
        with self._cond:
            return list(self._rejected)

    @property
    def connections(self) -> int:
        with self._cond:
            return len(self._sessions)

    @property
    def commands(self) -> list[tuple[int, str]]:
        with self._cond:
            return list(self._commands)

    @property
    def sessions(self) -> dict[int, Session]:
        with self._cond:
            return dict(self._sessions)

    def session(self, session_id: int) -> Session:
        with self._cond:
            return self._sessions[session_id]

    @property
    def errors(self) -> list[BaseException | str]:
        with self._cond:
            return list(self._errors)

    def round_trips(self, session_id: int) -> int:
        """Socket reads that returned data in that session (see module doc)."""
        with self._cond:
            return self._sessions[session_id].reads

    def wait_until(self, predicate: Callable[["SMTPTestServer"], bool],
                   timeout: float = 5.0) -> None:
        """Block until predicate(self) holds; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:  # reentrant, so predicate may use the properties
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"condition not met within {timeout} s")
                self._cond.wait(remaining)

    def wait_for_messages(self, n: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Block until n messages were accepted; return them."""
        try:
            self.wait_until(lambda s: len(s._messages) >= n, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{len(self.messages)} of {n} messages within {timeout} s") from None
        return self.messages
