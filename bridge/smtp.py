"""One SMTP session with smtpmail's semantics, on top of smtplib and ssl.

The pure parts (EHLO parsing, MAIL parameters, reply classification,
transcript redaction) are functions that tests drive without a socket; the
I/O lives in :class:`Connection` (one TCP/TLS connection) and
:class:`Sender` (smtpmail's retry loop, reusing one connection for
consecutive messages to the same server, as a flush does).
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from bridge import message as msg
from bridge.errors import (AmbiguousDeliveryError, AuthError, BridgeError,
                           Cancelled, MessageError, PermanentError, TransientError)

if TYPE_CHECKING:
    from bridge.auth import Credentials
    from bridge.config import Settings

CredentialProvider = Callable[[str, "int | str", "str | None", bool], "Credentials | None"]
Transcript = Callable[[str, str], None]

REDACTED = "<redacted>"

# --- pure protocol helpers ---------------------------------------------------

def parse_ehlo(reply: str) -> dict[str, str]:
    """EHLO reply text (lines without codes) -> {keyword: parameters}.

    The first line is the server's name and is skipped.  For repeated
    keywords the last line wins, as in smtpmail (relevant for AUTH).
    """
    features: dict[str, str] = {}
    for line in reply.splitlines()[1:]:
        words = line.strip().split(None, 1)
        if words:
            features[words[0].lower()] = words[1] if len(words) > 1 else ""
    return features


def auth_mechanisms(features: dict[str, str]) -> list[str]:
    """Mechanisms offered on the AUTH line, lower-cased."""
    return [m.lower() for m in features.get("auth", "").split()]


def mail_parameters(features: dict[str, str], info: msg.DataInfo,
                    utf8: bool) -> str:
    """The ESMTP parameters for MAIL FROM, given what the server offers."""
    params = ""
    if "size" in features:
        params += f" SIZE={info.size}"
    if info.eight_bit and "8bitmime" in features:
        params += " BODY=8BITMIME"
    if utf8:
        params += " SMTPUTF8"
    return params


def rcpt_address(address: str, sendto_domain: str | None) -> str:
    """smtpmail-sendto-domain: appended to bare names at RCPT time only."""
    if sendto_domain and "@" not in address:
        return f"{address}@{sendto_domain}"
    return address


def reply_text(code: int, text: bytes | str) -> str:
    """Reply as "CODE line" per line, the way smtpmail quotes it."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = text.splitlines() or [""]
    last = len(lines) - 1
    shown = f"{code:03d}" if code >= 0 else "???"
    return "\n".join(f"{shown}{'-' if i < last else ' '}{line}".rstrip()
                     for i, line in enumerate(lines))


def failure(code: int, text: str, what: str, *, ambiguous: bool = False) -> BridgeError:
    """The error for a reply >= 400 (or a dead connection: code 0)."""
    cls = PermanentError if 500 <= code < 600 else TransientError
    if ambiguous:
        cls = AmbiguousDeliveryError
    return cls(what, code=code or None, reply=text or None)


def ehlo_name(local_domain: str | None) -> str:
    """smtpmail-fqdn: system-name, plus "." local-domain when that is set."""
    name = socket.gethostname()
    return f"{name}.{local_domain}" if local_domain else name


_AUTH_LINE = re.compile(r"^(AUTH\s+\S+)\s.*", re.I)


def redact_command(line: str, in_auth: bool) -> str:
    """Transcript form of a client line: never an AUTH payload or secret."""
    if in_auth:
        m = _AUTH_LINE.match(line)
        if m:
            return f"{m.group(1)} {REDACTED}"
        if line.upper().startswith("AUTH "):
            return line
        return REDACTED
    return line


# --- TLS ---------------------------------------------------------------------

_default_context: ssl.SSLContext | None = None


def tls_context(client_cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    """A verifying context (system store, SSL_CERT_FILE/DIR honoured).

    Built once and only when TLS is used: creating one costs tens of ms.
    """
    global _default_context
    if client_cert is None:
        if _default_context is None:
            _default_context = ssl.create_default_context()
        return _default_context
    ctx = ssl.create_default_context()
    key, cert = client_cert
    ctx.load_cert_chain(cert, key)
    return ctx


# --- cancelling from another thread -------------------------------------------

class Cancel:
    """Lets another thread stop a Sender at once, even inside a blocked read.

    ``set()`` shuts the live connections' sockets down; the blocked call
    fails and the Sender raises Cancelled (or AmbiguousDeliveryError, if the
    final "." had already gone out: the message may have been delivered).
    Socket objects, not descriptor numbers, are kept: a closed socket object
    no longer refers to its old number, which another connection may reuse.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)

    def set(self) -> None:
        with self._lock:
            self._event.set()
            for sock in self._socks:
                _shutdown(sock)

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks = [s for s in self._socks if s.fileno() != -1]
            self._socks.append(sock)
            if self._event.is_set():
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        # The plain socket method also for TLS sockets: stop the connection
        # under the TLS layer without touching its state from this thread.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


# --- one connection ----------------------------------------------------------

class _SMTP(smtplib.SMTP):
    """smtplib with a redacting transcript hook on every line both ways."""

    def __init__(self, transcript: Transcript | None, timeout: float, name: str) -> None:
        self._transcript = transcript
        self.in_auth = False
        # Passing our EHLO name spares smtplib's socket.getfqdn() (a DNS lookup).
        super().__init__(timeout=timeout, local_hostname=name)

    def send(self, s: str | bytes) -> None:  # noqa: D401 - smtplib API
        if self._transcript and isinstance(s, str):
            for line in s.split("\r\n")[:-1]:
                self._transcript("C", redact_command(line, self.in_auth))
        super().send(s)

    def getreply(self) -> tuple[int, bytes]:
        code, text = super().getreply()
        while 0 <= code < 100:        # smtpmail skips a reply whose code starts with 0
            if self._transcript:
                self._transcript("S", reply_text(code, text))
            code, text = super().getreply()
        if self._transcript:
            for line in reply_text(code, text).splitlines():
                self._transcript("S", line)
        return code, text


class _SSL(_SMTP, smtplib.SMTP_SSL):
    def __init__(self, transcript: Transcript | None, timeout: float, name: str,
                 context: ssl.SSLContext) -> None:
        self._transcript = transcript
        self.in_auth = False
        smtplib.SMTP_SSL.__init__(self, timeout=timeout, context=context, local_hostname=name)


@dataclass
class Session:
    """What the server told us on one connection."""

    features: dict[str, str] = field(default_factory=dict)
    esmtp: bool = True
    tls: ssl.SSLObject | ssl.SSLSocket | None = None
    authenticated: str | None = None      # mechanism used
    auth_user: str | None = None
    greeting: str = ""
    ehlo_reply: str = ""


class Connection:
    """One TCP (or TLS) connection, taken through greeting, EHLO, TLS, AUTH."""

    def __init__(self, settings: "Settings", transcript: Transcript | None = None,
                 cancel: Cancel | None = None) -> None:
        self.settings = settings
        self.cancel = cancel
        self.host = settings.smtp_server or ""
        self.port = settings.smtp_service
        self.transcript = transcript
        self.session = Session()
        self.smtp: _SMTP | None = None
        self.needs_rset = False

    # -- set-up --

    def note(self, text: str) -> None:
        if self.transcript:
            self.transcript("*", text)

    def _port_number(self) -> int:
        from bridge.auth import service_port
        port = service_port(self.port)
        if port is None:
            raise TransientError(f"unknown SMTP service name {self.port!r}")
        return port

    def open(self, credentials: CredentialProvider | None, ask: bool) -> Session:
        s = self.settings
        stream = s.stream_type
        port = self._port_number()
        client_cert = None
        if stream in (None, "starttls", "ssl"):
            client_cert = _client_cert(self.host, s)
        try:
            name = ehlo_name(s.local_domain)
            if stream == "ssl":
                self.smtp = _SSL(self.transcript, s.connect_timeout, name,
                                 tls_context(client_cert))
            else:
                self.smtp = _SMTP(self.transcript, s.connect_timeout, name)
            self.smtp._host = self.host     # smtplib sets it only in __init__
            self.note(f"connecting to {self.host} port {port}"
                      + (" (TLS)" if stream == "ssl" else ""))
            code, text = self.smtp.connect(self.host, port)
        except ssl.SSLCertVerificationError as e:
            self.abort()
            raise TransientError(
                f"TLS certificate of {self.host} not accepted: {e.verify_message}") from None
        except (ssl.SSLError, OSError, smtplib.SMTPException) as e:
            self.abort()
            raise TransientError(f"cannot connect to {self.host} port {port}: {_oserror(e)}") from None
        self.smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.cancel is not None:
            self.cancel.watch(self.smtp.sock)
        self.smtp.sock.settimeout(s.command_timeout)
        self.session.greeting = reply_text(code, text)
        if stream == "ssl":
            self.session.tls = self.smtp.sock
        if code >= 400 or code < 200:
            self.close()
            raise failure(code, self.session.greeting,
                          f"{self.host} does not accept connections: {self.session.greeting}")
        self._ehlo()
        if stream != "plain" and stream != "ssl":
            self._starttls(required=stream == "starttls", client_cert=client_cert)
        self._authenticate(credentials, ask)
        for cmd, wanted in (("ONEX", ("onex", "xone")),
                            ("VERB", ("verb", "xvrb") if s.debug_verb else ()),
                            ("XUSR", ("xusr",))):
            if any(w in self.session.features for w in wanted):
                self._expect(cmd, cmd)
        return self.session

    def _ehlo(self) -> None:
        name = ehlo_name(self.settings.local_domain)
        code, text = self._cmd(f"EHLO {name}")
        if 200 <= code < 400:
            self.session.ehlo_reply = text
            self.session.features = parse_ehlo(text)
            self.session.esmtp = True
        else:
            self._expect(f"HELO {name}", f"HELO {name}")
            self.session.features = {}
            self.session.esmtp = False
        assert self.smtp is not None
        # Keep smtplib's view consistent for its own helpers.
        self.smtp.ehlo_resp = text.encode("utf-8", "replace")
        self.smtp.does_esmtp = self.session.esmtp
        self.smtp.esmtp_features = dict(self.session.features)

    def _starttls(self, required: bool, client_cert: tuple[str, str] | None) -> None:
        assert self.smtp is not None
        if "starttls" not in self.session.features:
            if required:
                self.close()
                raise TransientError(
                    f"{self.host} does not offer STARTTLS (stream-type is starttls); "
                    "nothing was sent")
            return
        code, text = self._cmd("STARTTLS")
        if code != 220:
            if required:
                self.close()
                raise failure(code, text, f"STARTTLS refused by {self.host}: {text}")
            self.note("STARTTLS refused; continuing without TLS as smtpmail does")
            return
        try:
            sock = tls_context(client_cert).wrap_socket(
                self.smtp.sock, server_hostname=self.host)
        except ssl.SSLCertVerificationError as e:
            self.abort()
            raise TransientError(
                f"TLS certificate of {self.host} not accepted: {e.verify_message}") from None
        except (ssl.SSLError, OSError) as e:
            self.abort()
            raise TransientError(f"TLS handshake with {self.host} failed: {_oserror(e)}") from None
        self.smtp.sock = sock
        self.smtp.file = None
        self.session.tls = sock
        if self.cancel is not None:
            self.cancel.watch(sock)
        self.note(f"TLS {sock.version()} {sock.cipher()[0]}")
        self._ehlo()

    def _authenticate(self, credentials: CredentialProvider | None, ask: bool) -> None:
        from bridge import auth

        offered = auth_mechanisms(self.session.features)
        if not offered:
            if ask:
                hint = "" if self.session.tls else " (many servers offer AUTH only after STARTTLS)"
                raise AuthError(f"{self.host} requires authentication but does not offer AUTH{hint}")
            return
        s = self.settings
        creds = credentials(self.host, s.smtp_service, s.smtp_user, ask) if credentials else None
        if creds is None:
            if ask:
                raise AuthError(
                    f"{self.host} requires authentication and no credentials were found "
                    f"for machine {self.host} port {s.smtp_service}"
                    + (f" login {s.smtp_user}" if s.smtp_user else ""))
            return
        mech = auth.choose_mechanism(offered, s.auth_supported, creds.mechanism)
        self._run_sasl(mech, creds)

    def _run_sasl(self, mech: str, creds: "Credentials") -> None:
        from bridge import auth

        assert self.smtp is not None
        name = mech.upper()
        self.smtp.in_auth = True
        try:
            if mech == "plain":
                code, text = self._cmd(f"AUTH PLAIN {auth.plain_response(creds.user, creds.secret)}")
                ok = code == 235
            elif mech == "login":
                code, text = self._cmd("AUTH LOGIN")
                if code < 400:
                    code, text = self._cmd(auth.login_user(creds.user))
                if code < 400:
                    code, text = self._cmd(auth.login_secret(creds.secret))
                ok = code < 400
            elif mech == "cram-md5":
                code, text = self._cmd("AUTH CRAM-MD5")
                if code == 334:
                    challenge = text.strip()
                    code, text = self._cmd(auth.cram_md5_response(creds.user, creds.secret, challenge))
                ok = code < 400
            elif mech == "xoauth2":
                code, text = self._cmd(f"AUTH XOAUTH2 {auth.xoauth2_response(creds.user, creds.secret)}")
                if code == 334:       # an error challenge: answer empty to get the final reply
                    code, text = self._cmd("")
                ok = code < 400
            else:
                raise AuthError(f"mechanism {mech} is not implemented")
        except (OSError, smtplib.SMTPException) as e:
            self.abort()
            raise TransientError(f"connection to {self.host} lost during AUTH: {_oserror(e)}") from None
        finally:
            self.smtp.in_auth = False
        if not ok:
            raise AuthError(f"{self.host} rejected AUTH {name} for {creds.user}: "
                            f"{reply_text(code, text)}", code=code, reply=reply_text(code, text))
        self.session.authenticated = mech
        self.session.auth_user = creds.user

    # -- low level --

    def _cmd(self, line: str) -> tuple[int, str]:
        """Send one command line, read its reply; a dead link raises."""
        assert self.smtp is not None
        try:
            self.smtp.send(line + "\r\n")
            code, text = self.smtp.getreply()
        except (OSError, smtplib.SMTPException) as e:
            verb = "AUTH" if self.smtp.in_auth else _verb(line)
            self.abort()
            raise TransientError(
                f"connection to {self.host} lost after {verb}: {_oserror(e)}") from None
        return code, text.decode("utf-8", "replace")

    def _expect(self, line: str, what: str) -> tuple[int, str]:
        code, text = self._cmd(line)
        if code >= 400 or code < 200:
            reply = reply_text(code, text)
            raise failure(code, reply, f"{reply} in response to {what}")
        return code, text

    # -- one transaction --

    def transaction(self, env: msg.Envelope, info: msg.DataInfo) -> str:
        """MAIL, RCPT..., DATA for one envelope; returns the final reply.

        The addresses were checked for CR/LF/NUL by Sender.deliver.

        Raises _MailRejected for a MAIL FROM failure (the retry loop decides),
        BridgeError otherwise.  All recipients must be accepted: if the
        server took DATA after a refused recipient, the connection is dropped
        before the final "." so that nothing is delivered.
        """
        assert self.smtp is not None
        s = self.settings
        f = self.session.features
        if self.needs_rset:
            self._expect("RSET", "RSET")
            self.needs_rset = False
        utf8 = any(msg.needs_smtputf8(a) for a in [env.sender, *env.recipients])
        if utf8:
            if "smtputf8" not in f:
                raise PermanentError(
                    f"an address needs SMTPUTF8, which {self.host} does not offer")
            self.smtp.command_encoding = "utf-8"
        mail = f"MAIL FROM:<{env.sender}>{mail_parameters(f, info, utf8)}"
        rcpts = [f"RCPT TO:<{rcpt_address(r, s.sendto_domain)}>" for r in env.recipients]
        if "pipelining" in f:
            replies = self._pipelined([mail, *rcpts, "DATA"])
        else:
            replies = self._lockstep([mail, *rcpts, "DATA"])
        code, text = replies[0]
        if code >= 400 or code < 200:
            self.needs_rset = len(replies) > 1 and replies[-1][0] != 354
            if replies[-1][0] == 354:
                self.abort()
            raise _MailRejected(code, reply_text(code, text))
        for (code, text), r in zip(replies[1:], env.recipients):
            if code >= 400 or code < 200:
                reply = reply_text(code, text)
                if replies[-1][0] == 354:
                    self.abort()       # never let a partial message through
                else:
                    self.needs_rset = True
                raise _RcptRejected(code, reply, r)
        code, text = replies[-1]
        if code != 354:
            self.needs_rset = True
            reply = reply_text(code, text)
            raise failure(code, reply, f"{reply} in response to DATA")
        return self._data(env, info)

    def _pipelined(self, lines: list[str]) -> list[tuple[int, str]]:
        assert self.smtp is not None
        try:
            self.smtp.send("".join(line + "\r\n" for line in lines))
            replies = []
            for _ in lines:
                code, text = self.smtp.getreply()
                replies.append((code, text.decode("utf-8", "replace")))
        except (OSError, smtplib.SMTPException) as e:
            self.abort()
            raise TransientError(f"connection to {self.host} lost during MAIL/RCPT: {_oserror(e)}") from None
        return replies

    def _lockstep(self, lines: list[str]) -> list[tuple[int, str]]:
        replies = []
        for line in lines:
            code, text = self._cmd(line)
            replies.append((code, text))
            if code >= 400 or code < 200:
                break
        return replies

    def _data(self, env: msg.Envelope, info: msg.DataInfo) -> str:
        assert self.smtp is not None
        sock = self.smtp.sock
        try:
            for chunk in msg.wire_chunks(env.data):
                sock.sendall(chunk)
        except OSError as e:
            self.abort()
            raise TransientError(f"connection to {self.host} lost while sending the message: "
                                 f"{_oserror(e)}") from None
        if self.transcript:
            self.transcript("C", f"<{info.size} bytes of message data>")
            self.transcript("C", ".")
        try:
            sock.settimeout(self.settings.data_timeout)
            code, text = self.smtp.getreply()
            sock.settimeout(self.settings.command_timeout)
        except (OSError, smtplib.SMTPException) as e:
            self.abort()
            raise AmbiguousDeliveryError(
                f"no reply from {self.host} after the end of the message ({_oserror(e)}): "
                "it may or may not have been delivered") from None
        reply = reply_text(code, text.decode("utf-8", "replace"))
        if code >= 400 or code < 200:
            raise failure(code, reply, f"{reply} in response to the end of the message")
        return reply

    # -- teardown --

    def alive(self) -> bool:
        return self.smtp is not None and self.smtp.sock is not None

    def close(self) -> None:
        """QUIT and close; errors here never hide the real one."""
        if self.alive():
            assert self.smtp is not None
            try:
                self.smtp.send("QUIT\r\n")
                self.smtp.getreply()
            except (OSError, smtplib.SMTPException):
                pass
        self.abort()

    def abort(self) -> None:
        """Drop the connection without QUIT."""
        if self.smtp is not None:
            try:
                self.smtp.close()
            except OSError:
                pass
        self.smtp = None


class _MailRejected(Exception):
    def __init__(self, code: int, reply: str) -> None:
        super().__init__(reply)
        self.code, self.reply = code, reply


class _RcptRejected(Exception):
    def __init__(self, code: int, reply: str, recipient: str) -> None:
        super().__init__(reply)
        self.code, self.reply, self.recipient = code, reply, recipient


def _client_cert(host: str, settings: "Settings") -> tuple[str, str] | None:
    from bridge import auth
    try:
        return auth.client_certificate(host, settings.smtp_service, settings)
    except BridgeError:
        return None


def _oserror(e: BaseException) -> str:
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, smtplib.SMTPServerDisconnected):
        # smtplib turns a read timeout into "Connection unexpectedly closed".
        if isinstance(e.__context__, (socket.timeout, TimeoutError)):
            return "timed out"
        return "connection closed by server"
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return text


def _verb(line: str) -> str:
    return line.split(" ", 1)[0].upper()


# --- smtpmail's retry loop ---------------------------------------------------

class Sender:
    """Delivers envelopes to one server, reusing the connection between them."""

    def __init__(self, settings: "Settings", credentials: CredentialProvider | None = None,
                 transcript: Transcript | None = None, cancel: Cancel | None = None) -> None:
        if not settings.smtp_server:
            from bridge.errors import ConfigError
            raise ConfigError("smtp-server is not set (give --smtp-server, SMTPSERVER, "
                              "or smtp-server in the config file)")
        self.settings = settings
        self.credentials = credentials
        self.transcript = transcript
        self.cancel = cancel
        self.conn: Connection | None = None

    def _requires_auth(self) -> bool:
        from bridge.config import requires_authorization
        return requires_authorization(self.settings)

    def _connection(self, ask: bool) -> Connection:
        if self.conn is not None and self.conn.alive():
            if not ask or self.conn.session.authenticated:
                return self.conn
            self.conn.close()
        self.conn = Connection(self.settings, self.transcript, self.cancel)
        self.conn.open(self.credentials, ask)
        return self.conn

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def deliver(self, env: msg.Envelope) -> str:
        """Send one envelope with smtpmail's retries; returns the final reply."""
        try:
            return self._deliver(env)
        except BridgeError as e:
            if (self.cancel is not None and self.cancel.is_set()
                    and not isinstance(e, AmbiguousDeliveryError)):
                raise Cancelled(f"cancelled: {env.label or 'message'} not sent") from None
            raise

    def _deliver(self, env: msg.Envelope) -> str:
        s = self.settings
        for a in [env.sender, *env.recipients]:
            msg.check_address(a)
        if not env.recipients:
            raise MessageError("no recipients")
        for name, value in (("local-domain", s.local_domain), ("sendto-domain", s.sendto_domain)):
            if value:
                msg.check_address(value, name)
        info = msg.data_info(env.data)
        ask = self._requires_auth()
        attempt = 1
        while True:
            if self.cancel is not None and self.cancel.is_set():
                raise Cancelled("cancelled")
            conn = self._connection(ask)
            offered = bool(auth_mechanisms(conn.session.features))
            can_ask = offered and not ask and not conn.session.authenticated
            try:
                return conn.transaction(env, info)
            except _MailRejected as e:
                if 400 <= e.code < 500 and attempt < s.retries:
                    conn.note(f"Got transient error code {e.code} when sending; "
                              f"retrying attempt {attempt}...")
                    self._drop()
                    if self.cancel is not None:
                        self.cancel.wait(s.retry_delay)
                    else:
                        time.sleep(s.retry_delay)
                    attempt += 1
                    continue
                if e.code == 530 and can_ask:
                    self._drop()
                    ask, attempt = True, 1
                    continue
                if e.code == 530:
                    raise AuthError(f"{e.reply} (in reply to MAIL FROM)", code=e.code, reply=e.reply)
                raise failure(e.code, e.reply, f"{e.reply} (in reply to MAIL FROM)") from None
            except _RcptRejected as e:
                if 550 <= e.code <= 554 and can_ask:
                    self._drop()
                    ask, attempt = True, 1
                    continue
                raise failure(e.code, e.reply,
                              f"recipient {e.recipient} refused: {e.reply}") from None
            except BridgeError:
                if self.conn is not None and not self.conn.alive():
                    self.conn = None
                raise

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> "Sender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send(settings: "Settings", env: msg.Envelope, *,
         credentials: CredentialProvider | None = None,
         transcript: Transcript | None = None, cancel: Cancel | None = None) -> str:
    """Deliver one envelope over a new connection (then QUIT)."""
    with Sender(settings, credentials, transcript, cancel) as sender:
        return sender.deliver(env)
