"""Credentials (authinfo/netrc, GPG, password-command) and SASL payloads.

The parsing, matching and SASL parts are pure functions so they can be
checked byte for byte against what Emacs sent; only ``load_entries``,
``lookup`` and the gpg/password-command runners touch files or processes.
Nothing here prints, logs or puts a secret into an exception message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import AuthError

if TYPE_CHECKING:
    from .config import Settings


# ---------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Credentials:
    """What AUTH needs; ``source`` says where it came from, for ``check``."""

    user: str
    secret: str = field(repr=False)
    mechanism: str | None = None       # authinfo ``smtp-auth``, lower case
    key: str | None = None             # client certificate key file
    cert: str | None = None            # client certificate file
    source: str = ""                   # e.g. "~/.authinfo line 3"


@dataclass(frozen=True)
class LookupResult:
    """Credentials, or a hint saying why there are none (never a secret)."""

    credentials: Credentials | None
    hint: str | None = None


class Entry(dict[str, str]):
    """One netrc entry: canonical key -> value, and the line it starts on.

    Keys are canonical (``machine``, ``login``, ``password``, ``port``) for
    auth-source's aliases, as written otherwise.  ``default`` is true for a
    netrc ``default`` entry, which matches any host.
    """

    def __init__(self, line: int, default: bool = False) -> None:
        super().__init__()
        self.line = line
        self.default = default

    def __repr__(self) -> str:
        shown = {k: ("<hidden>" if k == "password" else v) for k, v in self.items()}
        kind = "default" if self.default else "entry"
        return f"Entry({kind}, line={self.line}, {shown!r})"


# First alias wins, as in auth-source-netrc-parse's check.
_ALIASES = {
    "machine": "machine", "host": "machine",
    "login": "login", "account": "login", "user": "login",
    "password": "password", "secret": "password",
    "port": "port", "protocol": "port",
}

_WHITESPACE = " \t\r\n"


# ---------------------------------------------------------------------------
# netrc parsing (pure)


class _Scanner:
    """auth-source's tokenizer: quoted or bare tokens, ``#`` comments."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def line(self) -> int:
        return self.text.count("\n", 0, self.pos) + 1

    def _skip(self) -> None:
        text, n = self.text, len(self.text)
        while self.pos < n:
            ch = text[self.pos]
            if ch in _WHITESPACE:
                self.pos += 1
            elif ch == "#":
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end + 1
            else:
                return

    def token(self) -> tuple[str, int, bool] | None:
        """Next token, its line and whether it was quoted; None at the end."""
        self._skip()
        text, start = self.text, self.pos
        if start >= len(text):
            return None
        line = self.line()
        quote = text[start]
        if quote in "'\"":
            end = text.find(quote, start + 1)
            if end >= 0:
                self.pos = end + 1
                return text[start + 1:end], line, True
            # An unterminated quote is a bare token, quote included (auth-source).
        end = start
        while end < len(text) and text[end] not in _WHITESPACE:
            end += 1
        self.pos = end
        return text[start:end], line, False

    def skip_macdef(self) -> None:
        """Skip a .netrc macro body: the lines up to the next blank line."""
        text = self.text
        nl = text.find("\n", self.pos)
        if nl < 0:
            self.pos = len(text)
            return
        pos = nl + 1
        while pos < len(text):
            nl = text.find("\n", pos)
            end = len(text) if nl < 0 else nl
            if not text[pos:end].strip():
                self.pos = end
                return
            pos = end + 1
        self.pos = len(text)


def parse_netrc(text: str) -> list[Entry]:
    """Parse authinfo/netrc text the way Emacs's auth-source does.

    Raises AuthError (with the line number) for a bare ``machine`` token
    where a value was expected, which auth-source also rejects (it rejects a
    quoted ``'machine'`` too; here quoting makes it a value).
    """
    scanner = _Scanner(text)
    entries: list[Entry] = []
    current: Entry | None = None
    while (tok := scanner.token()) is not None:
        word, line, _ = tok
        if word == "default":
            current = Entry(line, default=True)
            entries.append(current)
            continue
        if word == "macdef":
            scanner.token()             # the macro's name
            scanner.skip_macdef()
            continue
        if word == "machine" or current is None:
            # Keys before any ``machine`` form an entry without a host, which
            # (missing key matches anything) matches every host, as in Emacs.
            current = Entry(line)
            entries.append(current)
        value_tok = scanner.token()
        if value_tok is None:
            break
        value, value_line, quoted = value_tok
        if value == "machine" and not quoted:
            raise AuthError(f"line {value_line}: unexpected 'machine' where a value "
                            f"for '{word}' was expected")
        current.setdefault(_ALIASES.get(word, word), value)
    return [e for e in entries if e or e.default]


# ---------------------------------------------------------------------------
# Matching (pure)

# Used before getservbyname so results don't depend on /etc/services.
_SERVICES = {
    "smtp": 25, "mail": 25,
    "submission": 587,
    "smtps": 465, "ssmtp": 465, "submissions": 465, "urd": 465,
}


def service_port(service: int | str) -> int | None:
    """The TCP port number a service names (25, "25", "smtp"), or None."""
    if isinstance(service, int):
        return service
    text = service.strip()
    if text.isdigit():
        return int(text)
    name = text.lower()
    if name in _SERVICES:
        return _SERVICES[name]
    try:
        return socket.getservbyname(name, "tcp")
    except OSError:
        return None


def port_matches(entry_port: str, service: int | str) -> bool:
    """Equal as written (auth-source), or naming the same port number."""
    if entry_port == str(service):
        return True
    a, b = service_port(entry_port), service_port(service)
    return a is not None and a == b


def entry_matches(entry: Entry, host: str, port: int | str | None,
                  user: str | None) -> bool:
    """auth-source's test: a key the entry lacks matches anything."""
    if not entry.default and "machine" in entry and entry["machine"] != host:
        return False
    if port is not None and "port" in entry and not port_matches(entry["port"], port):
        return False
    if user is not None and "login" in entry and entry["login"] != user:
        return False
    return True


def match(entries: Iterable[Entry], host: str, port: int | str | None,
          user: str | None) -> Entry | None:
    """The first entry matching host, port and (when given) user."""
    for entry in entries:
        if entry_matches(entry, host, port, user):
            return entry
    return None


# ---------------------------------------------------------------------------
# I/O: files, gpg, password-command


def _gpg_decrypt(data: bytes | None, path: str, what: str) -> str:
    """Decrypt a file (data None) or bytes with gpg; plaintext stays in memory."""
    import subprocess      # only when a .gpg source exists: start-up time counts
    argv = ["gpg", "--batch", "--quiet", "--decrypt"]
    if data is None:
        argv.append(path)
    # Never let gpg read our stdin: under ``serve`` that is Emacs's pipe.
    stdin = {"input": data} if data is not None else {"stdin": subprocess.DEVNULL}
    try:
        proc = subprocess.run(argv, capture_output=True, check=False, **stdin)
    except FileNotFoundError:
        raise AuthError(f"cannot decrypt {what}: gpg is not installed") from None
    if proc.returncode != 0:
        first = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        why = first[0] if first else f"exit status {proc.returncode}"
        raise AuthError(f"cannot decrypt {what}: {why}")
    try:
        return proc.stdout.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthError(f"{what}: decrypted text is not UTF-8") from None


def _read_source(path: str) -> str | None:
    """The text of one auth source (decrypted if .gpg), None if absent."""
    real = os.path.expanduser(path)
    if not os.path.exists(real):
        return None
    if real.endswith(".gpg"):
        if not os.access(real, os.R_OK):
            raise AuthError(f"cannot read {path}: permission denied")
        return _gpg_decrypt(None, real, path)
    try:
        with open(real, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise AuthError(f"cannot read {path}: {exc.strerror}") from None
    return raw.decode("utf-8", "replace")


def load_entries(settings: Settings) -> list[tuple[str, list[Entry]]]:
    """Parse every existing auth source, in order: (source name, entries)."""
    loaded = []
    for path in settings.auth_sources:
        text = _read_source(path)
        if text is None:
            continue
        try:
            entries = parse_netrc(text)
        except AuthError as exc:
            raise AuthError(f"{path}: {exc.message}") from None
        loaded.append((path, entries))
    return loaded


def _first_match(loaded: list[tuple[str, list[Entry]]], host: str,
                 port: int | str | None, user: str | None
                 ) -> tuple[str, Entry] | None:
    for path, entries in loaded:
        entry = match(entries, host, port, user)
        if entry is not None:
            return path, entry
    return None


def _entry_secret(entry: Entry, where: str) -> str | None:
    secret = entry.get("password")
    if secret is not None and secret.startswith("gpg:"):
        # auth-source's GPG token: base64 of the encrypted password.
        try:
            blob = base64.b64decode(secret[4:], validate=True)
        except binascii.Error:
            raise AuthError(f"{where}: password 'gpg:...' token is not base64") from None
        secret = _gpg_decrypt(blob, "", f"the gpg: password token of {where}")
    return secret


def run_password_command(command: str, timeout: float | None = None) -> str:
    """Run password-command with sh; its first output line is the secret."""
    import subprocess
    try:
        proc = subprocess.run(["sh", "-c", command], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AuthError(f"password-command did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        raise AuthError(f"password-command failed with exit status {proc.returncode}")
    line = proc.stdout.split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise AuthError("password-command printed nothing on its first line")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthError("password-command output is not UTF-8") from None


def _expand(path: str | None) -> str | None:
    return os.path.expanduser(path) if path is not None else None


def _resolve(loaded: list[tuple[str, list[Entry]]], host: str, port: int | str,
             user: str | None, settings: Settings) -> LookupResult:
    found = _first_match(loaded, host, port, user)
    entry = found[1] if found is not None else Entry(0)
    where = f"{found[0]} line {entry.line}" if found is not None else ""
    mechanism = entry.get("smtp-auth", "").lower() or None
    key, cert = _expand(entry.get("key")), _expand(entry.get("cert"))
    login = entry.get("login")

    if found is not None:
        secret = _entry_secret(entry, where)
        if secret is not None:
            name = login or user or settings.smtp_user
            if not name:
                return LookupResult(None, f"{where} has a password but no login, "
                                          "and smtp-user is not set")
            return LookupResult(Credentials(name, secret, mechanism, key, cert, where))

    name = login or user or settings.smtp_user
    if settings.password_command:
        if not name:
            return LookupResult(None, "password-command is set but no user name is "
                                      "known: set smtp-user or add a login to authinfo")
        secret = run_password_command(settings.password_command,
                                      settings.command_timeout)
        source = "password-command"
        if found is not None:
            source += f" (login from {where})"
        return LookupResult(Credentials(name, secret, mechanism, key, cert, source))

    if found is not None:
        who = f"user {login}" if login else "it"
        return LookupResult(None, f"{where} matches {host} port {port} but "
                                  f"{who} has no password (and no password-command is set)")
    searched = ", ".join(settings.auth_sources) or "no auth sources"
    wanted = f"host {host} port {port}" + (f" user {user}" if user else "")
    return LookupResult(None, f"no entry for {wanted} in {searched}")


def lookup_result(host: str, port: int | str, user: str | None,
                  settings: Settings) -> LookupResult:
    """Credentials for host/port/user, or why there are none.

    Order: each of ``settings.auth_sources`` (first matching entry wins),
    then ``settings.password_command`` when that entry had no password or
    there was no entry.
    """
    return _resolve(load_entries(settings), host, port, user, settings)


def lookup(host: str, port: int | str, user: str | None,
           settings: Settings) -> Credentials | None:
    """Credentials for smtpmail-smtp-server/-service/-user, or None."""
    return lookup_result(host, port, user, settings).credentials


def _certificate(loaded: list[tuple[str, list[Entry]]], host: str,
                 port: int | str) -> tuple[str, str] | None:
    found = _first_match(loaded, host, port, None)
    if found is None:
        return None
    key, cert = _expand(found[1].get("key")), _expand(found[1].get("cert"))
    if key and cert and os.access(key, os.R_OK) and os.access(cert, os.R_OK):
        return key, cert
    return None


def client_certificate(host: str, port: int | str,
                       settings: Settings) -> tuple[str, str] | None:
    """(key file, cert file) for TLS, as smtpmail finds them.

    Only the first entry matching host and port counts (auth-source
    ``:max 1``, no user filter); it needs both ``key`` and ``cert``, readable.
    """
    return _certificate(load_entries(settings), host, port)


class FileCredentials:
    """The shell's CredentialProvider: authinfo files and password-command.

    Results (found or not) are cached per instance, like auth-source's
    session cache; ``forget`` drops them after the server rejected them.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loaded: list[tuple[str, list[Entry]]] | None = None
        self._results: dict[tuple[str, str, str | None], LookupResult] = {}

    def _entries(self) -> list[tuple[str, list[Entry]]]:
        if self._loaded is None:
            self._loaded = load_entries(self.settings)
        return self._loaded

    def result(self, host: str, port: int | str, user: str | None) -> LookupResult:
        """The cached LookupResult for host/port/user."""
        cache_key = (host, str(port), user)
        if cache_key not in self._results:
            self._results[cache_key] = _resolve(self._entries(), host, port, user,
                                                self.settings)
        return self._results[cache_key]

    def __call__(self, host: str, port: int | str, user: str | None,
                 required: bool) -> Credentials | None:
        """None when nothing is found; AuthError instead when ``required``."""
        res = self.result(host, port, user)
        if res.credentials is None and required:
            raise AuthError(f"{host} requires authentication: {res.hint}")
        return res.credentials

    def client_certificate(self, host: str, port: int | str) -> tuple[str, str] | None:
        """Like the module's client_certificate, from the cached files."""
        return _certificate(self._entries(), host, port)

    def forget(self, host: str, port: int | str) -> None:
        """Drop cached results for host/port (after an AUTH failure)."""
        for cache_key in [k for k in self._results if k[:2] == (host, str(port))]:
            del self._results[cache_key]
        self._loaded = None


# ---------------------------------------------------------------------------
# SASL (pure)

IMPLEMENTED = ("cram-md5", "plain", "login", "xoauth2")


def choose_mechanism(offered: Iterable[str], supported: Sequence[str],
                     forced: str | None) -> str:
    """The AUTH mechanism to use, lower case.

    ``forced`` (authinfo ``smtp-auth``, any case) wins but must be offered;
    otherwise the first of ``supported`` the server offers.
    """
    server = [m.lower() for m in offered]
    shown = " ".join(m.upper() for m in server) or "nothing"
    if forced:
        mech = forced.lower()
        if mech not in IMPLEMENTED:
            raise AuthError(f"AUTH {mech.upper()} (smtp-auth) is not implemented; "
                            f"use one of: {' '.join(IMPLEMENTED)}")
        if mech not in server:
            raise AuthError(f"server does not offer AUTH {mech.upper()}; "
                            f"it offers: {shown}")
        return mech
    for mech in (m.lower() for m in supported):
        if mech in server and mech in IMPLEMENTED:
            return mech
    raise AuthError(f"no AUTH mechanism in common: server offers {shown}; "
                    f"auth-supported is {' '.join(supported) or 'empty'}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def plain_response(user: str, secret: str) -> str:
    """AUTH PLAIN initial response: b64(NUL user NUL secret), no authzid."""
    return _b64(b"\0" + user.encode() + b"\0" + secret.encode())


def login_user(user: str) -> str:
    """AUTH LOGIN's answer to the user name challenge."""
    return _b64(user.encode())


def login_secret(secret: str) -> str:
    """AUTH LOGIN's answer to the password challenge."""
    return _b64(secret.encode())


def cram_md5_response(user: str, secret: str, challenge_b64: str) -> str:
    """b64(user + " " + hex HMAC-MD5(secret, challenge)); challenge as sent after 334."""
    try:
        challenge = base64.b64decode(challenge_b64.strip(), validate=True)
    except binascii.Error:
        raise AuthError("server sent a CRAM-MD5 challenge that is not base64") from None
    digest = hmac.new(secret.encode(), challenge, hashlib.md5).hexdigest()
    return _b64(user.encode() + b" " + digest.encode("ascii"))


def xoauth2_response(user: str, token: str) -> str:
    """AUTH XOAUTH2 initial response for an already obtained access token."""
    return _b64(f"user={user}\x01auth=Bearer {token}\x01\x01".encode())


def secret_forms(credentials: Credentials) -> set[str]:
    """Every form of the secret that could leak: raw and the base64 payloads."""
    user, secret = credentials.user, credentials.secret
    return {secret, login_secret(secret), plain_response(user, secret),
            xoauth2_response(user, secret)}
