"""``smtpmail-bridge check``: what the server offers and what we would do.

Connects exactly as a send would (same stream type, same TLS checks, same
credential lookup) but stops before MAIL FROM, and explains the common
mistakes in plain words.  Never prints a secret.
"""

from __future__ import annotations

import datetime
import ssl
from typing import TYPE_CHECKING, TextIO

from bridge.errors import BridgeError

if TYPE_CHECKING:
    from bridge.config import Settings

IMPLICIT_TLS_PORTS = {465, "smtps", "465"}
STARTTLS_PORTS = {25, 587, "smtp", "submission", "25", "587"}


def hints(settings: "Settings", error: BridgeError | None, offered_auth: list[str],
          tls: bool, ehlo_ok: bool) -> list[str]:
    """Plain-words advice for the usual misconfigurations (pure)."""
    out = []
    port = settings.smtp_service
    text = str(error or "")
    if settings.stream_type == "ssl" and port in STARTTLS_PORTS:
        out.append(f"port {port} normally speaks plain SMTP + STARTTLS; "
                   "stream-type ssl (implicit TLS) is for port 465")
    if settings.stream_type != "ssl" and port in IMPLICIT_TLS_PORTS:
        out.append(f"port {port} normally expects implicit TLS: set stream-type = \"ssl\"")
    if error and ("timed out" in text or "closed" in text) and settings.stream_type != "ssl":
        out.append("the server said nothing: if it expects TLS from the first byte, "
                   "set stream-type = \"ssl\"")
    if error and "wrong version number" in text:
        out.append("TLS was attempted against a plain-text port (or the reverse)")
    if not ehlo_ok:
        out.append("the server rejected EHLO; if it dislikes our host name, "
                   "set local-domain")
    if not offered_auth and not tls and not error:
        out.append("no AUTH offered on an unencrypted connection: many servers "
                   "offer AUTH only after STARTTLS")
    if error and "certificate" in text:
        out.append("the certificate is not trusted for this host name: check "
                   "smtp-server is the name on the certificate (SSL_CERT_FILE "
                   "selects another CA bundle)")
    return out


def _cert_lines(sock: ssl.SSLSocket) -> list[str]:
    cert = sock.getpeercert() or {}

    def name(field: str) -> str:
        parts = cert.get(field, ())
        return ", ".join(f"{k}={v}" for rdn in parts for k, v in rdn)

    lines = [f"tls: {sock.version()} {sock.cipher()[0]}",
             f"certificate subject: {name('subject')}",
             f"certificate issuer: {name('issuer')}"]
    if "notAfter" in cert:
        expiry = datetime.datetime.fromtimestamp(
            ssl.cert_time_to_seconds(cert["notAfter"]), datetime.timezone.utc)
        lines.append(f"certificate expires: {expiry:%Y-%m-%d %H:%M} UTC")
    lines.append("certificate verification: ok (hostname checked)")
    return lines


def run(settings: "Settings", out: TextIO, credentials=None) -> int:
    """Connect, report, QUIT.  Exit status 0 only when all went well."""
    from bridge import auth, smtp
    from bridge.config import requires_authorization

    if credentials is None:
        credentials = auth.FileCredentials(settings)
    conn = smtp.Connection(settings)
    error: BridgeError | None = None
    out.write(f"server: {settings.smtp_server} port {settings.smtp_service} "
              f"stream-type {settings.stream_type or 'nil'}\n")
    probe = _Probe(credentials)
    try:
        if not settings.smtp_server:
            from bridge.errors import ConfigError
            raise ConfigError("smtp-server is not set")
        conn.open(probe, requires_authorization(settings))
    except BridgeError as e:
        error = e
    session = conn.session
    if session.greeting:
        out.write(f"greeting: {session.greeting}\n")
    if session.ehlo_reply:
        out.write("ehlo:\n")
        for line in session.ehlo_reply.splitlines():
            out.write(f"  {line}\n")
    elif session.greeting:
        out.write("ehlo: rejected, HELO used (no extensions)\n")
    if isinstance(session.tls, ssl.SSLSocket):
        for line in _cert_lines(session.tls):
            out.write(line + "\n")
    elif session.greeting:
        out.write("tls: none (connection is not encrypted)\n")
    offered = smtp.auth_mechanisms(session.features)
    out.write(f"auth offered: {' '.join(m.upper() for m in offered) or 'none'}\n")
    if probe.found is not None:
        c = probe.found
        out.write(f"credentials: found for {c.user} in {c.source or 'provider'}\n")
        if offered:
            try:
                mech = auth.choose_mechanism(offered, settings.auth_supported, c.mechanism).upper()
            except BridgeError as e:
                mech = f"none ({e})"
            out.write(f"auth mechanism: {mech}\n")
        if session.authenticated:
            out.write("auth: accepted\n")
    elif probe.asked:
        out.write("credentials: none found\n")
    conn.close()
    for hint in hints(settings, error, offered, session.tls is not None,
                      bool(session.ehlo_reply) or not session.greeting):
        out.write(f"hint: {hint}\n")
    if error is not None:
        out.write(f"error: {error}\n")
        return error.exit_code
    out.write("ok\n")
    return 0


class _Probe:
    """A credential provider that remembers what it handed out."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.found = None
        self.asked = False

    def __call__(self, host, port, user, required):
        self.asked = True
        self.found = self.inner(host, port, user, required)
        return self.found
