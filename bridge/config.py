"""Settings: smtpmail's variables under their names without ``smtpmail-``.

CONTRACT (fixed):
  Settings is a frozen dataclass; every front end builds one and passes it
  to the core.  ``settings.replace(**kw)`` returns a modified copy (used for
  per-entry stored queue variables and for the Emacs shim's variables).

The loader merges, later wins: built-in defaults, the TOML file, the
environment, command-line flags.  Every value goes through :func:`coerce`,
so a bad value is reported once, naming where it came from, the setting and
what was expected.  Heavy modules (tomllib, platformdirs, difflib) are
imported inside the functions that need them: start-up time is benchmarked.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridge.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

STREAM_TYPES = (None, "starttls", "ssl", "plain")
AUTH_MECHANISMS = ("cram-md5", "plain", "login", "xoauth2")

#: setting name -> where its value came from ("default", "file <path>",
#: "env SMTPSERVER", "flag --smtp-server", ...)
Sources = dict[str, str]


@dataclass(frozen=True)
class Settings:
    smtp_server: str | None = None
    smtp_service: int | str = 25
    smtp_user: str | None = None
    stream_type: str | None = None          # None = smtpmail's nil
    local_domain: str | None = None
    sendto_domain: str | None = None
    retries: int = 10
    retry_delay: float = 1.0                # smtpmail sleeps 1 s between tries
    debug_info: bool = False
    debug_verb: bool = False
    queue_mail: bool = False
    queue_dir: str = "~/Mail/queued-mail/"
    queue_index_file: str = "index"
    store_queue_variables: bool = False
    servers_requiring_authorization: str | None = None
    mail_address: str | None = None
    auth_supported: tuple[str, ...] = ("cram-md5", "plain", "login")
    auth_sources: tuple[str, ...] = ("~/.authinfo.gpg", "~/.authinfo", "~/.netrc")
    password_command: str | None = None
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    lock_timeout: float = 30.0

    def replace(self, **changes: object) -> "Settings":
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------
# Converters.  Each takes (value, strict, emacs) and returns the typed value
# or raises _Bad(expected).  strict: the value comes from TOML, which has
# real types, so a string is not parsed as a number.  emacs: the value comes
# from the Emacs shim (symbols as strings, nil as None or [], any non-nil
# value is true).

class _Bad(Exception):
    def __init__(self, expected: str, *, show_value: bool = True) -> None:
        super().__init__(expected)
        self.expected = expected
        self.show_value = show_value


def _is_nil(value: object, emacs: bool) -> bool:
    if value is None:
        return True
    return emacs and (value == [] or value == ())


def _has_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def _optional_text(expected: str, *, spaces: bool) -> Callable[..., str | None]:
    """A nil-able string: empty (or Emacs nil) means nil."""
    def convert(value: object, strict: bool, emacs: bool) -> str | None:
        if _is_nil(value, emacs):
            return None
        if not isinstance(value, str):
            raise _Bad(expected)
        text = value if spaces else value.strip()
        if text == "" or (emacs and text == "nil"):
            return None
        if _has_control(text) or (not spaces and any(c.isspace() for c in text)):
            raise _Bad(expected)
        return text
    return convert


def _required_text(expected: str) -> Callable[..., str]:
    def convert(value: object, strict: bool, emacs: bool) -> str:
        if not isinstance(value, str) or value == "" or "\0" in value:
            raise _Bad(expected)
        return value
    return convert


def _service(value: object, strict: bool, emacs: bool) -> int | str:
    expected = "a port number (1-65535) or a service name"
    if isinstance(value, int) and not isinstance(value, bool):
        if 1 <= value <= 65535:
            return value
        raise _Bad(expected)
    if not isinstance(value, str):
        raise _Bad(expected)
    text = value.strip()
    if text.isdigit() and text.isascii():
        port = int(text)
        if 1 <= port <= 65535:
            return port
        raise _Bad(expected)
    # /etc/services names: letters, digits, "-", "_", "+", ".", not all digits
    if text and text.isascii() and text[0].isalpha() and all(
            c.isalnum() or c in "-_+." for c in text):
        return text
    raise _Bad(expected)


def _stream_type(value: object, strict: bool, emacs: bool) -> str | None:
    expected = ('"starttls", "ssl" (or "tls"), "plain", or nil '
                '(absent, "nil" or "network": opportunistic STARTTLS)')
    if _is_nil(value, emacs):
        return None
    if not isinstance(value, str):
        raise _Bad(expected)
    text = value.strip().lower()
    if text in ("", "nil", "network"):
        return None
    if text == "tls":
        return "ssl"
    if text in ("starttls", "ssl", "plain"):
        return text
    raise _Bad(expected)


def _count(value: object, strict: bool, emacs: bool) -> int:
    expected = "a whole number of attempts (0 or more)"
    if isinstance(value, str) and not strict:
        text = value.strip()
        if not (text.isdigit() and text.isascii()):
            raise _Bad(expected)
        value = int(text)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _Bad(expected)


_TRUE = ("t", "true", "yes", "on", "1")
_FALSE = ("nil", "false", "no", "off", "0", "")


def _bool(value: object, strict: bool, emacs: bool) -> bool:
    if isinstance(value, bool):
        return value
    if emacs:
        # Emacs: nil is false, anything else is true ("nil" = the symbol)
        return not (_is_nil(value, emacs) or value == "nil")
    expected = "true or false" if strict else \
        "true or false (also t/nil, yes/no, on/off, 1/0)"
    if strict:
        raise _Bad(expected)
    if value is None:
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _Bad(expected)


def _seconds(*, zero_ok: bool) -> Callable[..., float]:
    expected = ("a number of seconds (0 or more)" if zero_ok
                else "a positive number of seconds")

    def convert(value: object, strict: bool, emacs: bool) -> float:
        if isinstance(value, str) and not strict:
            try:
                value = float(value.strip())
            except ValueError:
                raise _Bad(expected) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Bad(expected)
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            raise _Bad(expected)
        if number < 0 or (number == 0 and not zero_ok):
            raise _Bad(expected)
        return number
    return convert


def _regexp(value: object, strict: bool, emacs: bool) -> str | None:
    if _is_nil(value, emacs):
        return None
    if not isinstance(value, str):
        raise _Bad("a regular expression (a string)")
    if value == "" or (emacs and value == "nil"):
        return None
    import re
    pattern = value
    if emacs:
        try:
            pattern = emacs_regexp(value)
        except ValueError as exc:
            raise _Bad(f"an Emacs regexp this bridge can translate ({exc})") from None
    try:
        re.compile(pattern)
    except re.error as exc:
        raise _Bad(f"a Python regular expression ({exc})") from None
    return pattern


def _string_list(value: object, strict: bool, emacs: bool, *,
                 separators: str | None, expected: str) -> tuple[str, ...]:
    if _is_nil(value, emacs):
        return ()
    if isinstance(value, str):
        if strict:
            raise _Bad(expected)
        if emacs:
            return () if value == "nil" else (value,)
        if separators is None:
            items = value.split(os.pathsep)
        else:
            for sep in separators:
                value = value.replace(sep, " ")
            items = value.split()
        return tuple(item for item in (i.strip() for i in items) if item)
    if isinstance(value, (list, tuple)):
        if not all(isinstance(item, str) and item and "\0" not in item
                   for item in value):
            raise _Bad(expected)
        return tuple(value)
    raise _Bad(expected)


def _mechanisms(value: object, strict: bool, emacs: bool) -> tuple[str, ...]:
    expected = ("a list of mechanisms among "
                + ", ".join(f'"{m}"' for m in AUTH_MECHANISMS))
    items = _string_list(value, strict, emacs, separators=",",
                         expected=expected)
    result = tuple(item.strip().lower() for item in items)
    if not all(item in AUTH_MECHANISMS for item in result):
        raise _Bad(expected)
    return result


def _paths(value: object, strict: bool, emacs: bool) -> tuple[str, ...]:
    expected = ("a list of file names" if strict else
                f"a list of file names (separated by {os.pathsep!r})")
    return _string_list(value, strict, emacs, separators=None,
                        expected=expected)


def _command(value: object, strict: bool, emacs: bool) -> str | None:
    # Never echo the value: the command line may embed a secret.
    if _is_nil(value, emacs):
        return None
    if not isinstance(value, str) or "\0" in value:
        raise _Bad("a shell command (a string)", show_value=False)
    if value.strip() == "" or (emacs and value == "nil"):
        return None
    return value


_HOST = "a host name (no spaces), or nil"

_CONVERTERS: dict[str, Callable[..., object]] = {
    "smtp-server": _optional_text(_HOST, spaces=False),
    "default-smtp-server": _optional_text(_HOST, spaces=False),
    "smtp-service": _service,
    "smtp-user": _optional_text("a user name, or nil", spaces=True),
    "stream-type": _stream_type,
    "local-domain": _optional_text("a domain name (no spaces), or nil", spaces=False),
    "sendto-domain": _optional_text("a domain name (no spaces), or nil", spaces=False),
    "retries": _count,
    "retry-delay": _seconds(zero_ok=True),
    "debug-info": _bool,
    "debug-verb": _bool,
    "queue-mail": _bool,
    "queue-dir": _required_text("a directory name"),
    "queue-index-file": _required_text("a file name"),
    "store-queue-variables": _bool,
    "servers-requiring-authorization": _regexp,
    "mail-address": _optional_text("an e-mail address, or nil", spaces=False),
    "auth-supported": _mechanisms,
    "auth-sources": _paths,
    "password-command": _command,
    "connect-timeout": _seconds(zero_ok=False),
    "command-timeout": _seconds(zero_ok=False),
    "data-timeout": _seconds(zero_ok=False),
    "lock-timeout": _seconds(zero_ok=True),
}

#: Every Settings field, dashed, in declaration order.
SETTING_NAMES: tuple[str, ...] = tuple(
    f.name.replace("_", "-") for f in dataclasses.fields(Settings))
#: Everything a file, the environment or the Emacs shim may set.
KNOWN_NAMES: tuple[str, ...] = SETTING_NAMES + ("default-smtp-server",)

assert set(_CONVERTERS) == set(KNOWN_NAMES)


def _show(value: object) -> str:
    """A value as the user wrote it (TOML-ish), for error messages."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "a table"
    return str(value)


def _suggest(name: str, names: Iterable[str]) -> str:
    import difflib
    candidates = list(names)
    key = name.lower().replace("_", "-")
    if key.startswith("smtpmail-") and key[len("smtpmail-"):] in candidates:
        return f' (did you mean "{key[len("smtpmail-"):]}"?)'
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def unknown_setting(name: str, origin: str) -> ConfigError:
    """The error for a name that is no setting, with the closest known name."""
    return ConfigError(f"{origin}: {name}: unknown setting"
                       f"{_suggest(name, KNOWN_NAMES)}")


def _coerce(name: str, value: object, origin: str, *,
            strict: bool = False, emacs: bool = False) -> object:
    convert = _CONVERTERS.get(name)
    if convert is None:
        raise unknown_setting(name, origin)
    try:
        return convert(value, strict, emacs)
    except _Bad as bad:
        got = f", got {_show(value)}" if bad.show_value else ""
        raise ConfigError(f"{origin}: {name}: expected {bad.expected}{got}") from None


def coerce(name: str, value: object, origin: str) -> object:
    """Validate and convert one value for the setting *name* (dashed).

    Strings are parsed as the setting's type (environment, flags).  *origin*
    starts the error message: a file name, ``env VAR``, ``flag --x``.
    """
    return _coerce(_canonical(name), value, origin)


def _canonical(name: str) -> str:
    key = name.replace("_", "-")
    if key.startswith("smtpmail-") and key[len("smtpmail-"):] in _CONVERTERS:
        return key[len("smtpmail-"):]
    return key


def settings_from_mapping(data: Mapping[str, object], origin: str, *,
                          emacs: bool = False) -> dict[str, object]:
    """Validate a mapping of setting names to values; dashed name -> value.

    Names may be dashed, underscored or carry smtpmail's ``smtpmail-``
    prefix.  ``default-smtp-server`` is kept as its own key.  *emacs*: values
    from the Emacs shim (nil as None or [], any non-nil is true, the regexp
    is in Emacs syntax and is translated to Python's).
    """
    result: dict[str, object] = {}
    for raw_name, value in data.items():
        if not isinstance(raw_name, str):
            raise ConfigError(f"{origin}: {raw_name!r}: setting names are strings")
        name = _canonical(raw_name)
        result[name] = _coerce(name, value, origin, emacs=emacs)
    return result


def _apply(base: Settings, values: Mapping[str, object]) -> Settings:
    changes = {name.replace("-", "_"): value for name, value in values.items()
               if name != "default-smtp-server"}
    settings = base.replace(**changes) if changes else base
    fallback = values.get("default-smtp-server")
    if settings.smtp_server is None and fallback is not None:
        settings = settings.replace(smtp_server=fallback)
    return settings


def from_mapping(base: Settings, data: Mapping[str, object], origin: str, *,
                 emacs: bool = False) -> Settings:
    """*base* with the settings in *data* applied (see settings_from_mapping).

    ``serve`` uses this with ``emacs=True`` for the shim's variables.
    """
    return _apply(base, settings_from_mapping(data, origin, emacs=emacs))


# ---------------------------------------------------------------------------
# Emacs regexps

_CHAR_CLASSES = {
    "alpha": "a-zA-Z", "alnum": "a-zA-Z0-9", "digit": "0-9",
    "xdigit": "0-9a-fA-F", "upper": "A-Z", "lower": "a-z",
    "space": r"\s", "blank": r" \t", "word": r"\w",
    "punct": r"!-/:-@\[-`{-~", "ascii": r"\x00-\x7f",
    "nonascii": r"\x80-\U0010ffff", "cntrl": r"\x00-\x1f",
}


def emacs_regexp(pattern: str) -> str:
    """Translate an Emacs regexp to Python ``re`` syntax (ValueError if not).

    Covers what host-name patterns use: ``\\(...\\)``, ``\\(?:``, ``\\|``,
    ``\\{m,n\\}``, ``\\` \\'``, word boundaries, ``\\w``, ``\\sw``/``\\s-``,
    bracket expressions with ``[:class:]``; literal ``( ) | { }``; ``^ $ *``
    are literal where Emacs treats them so.
    """
    import re
    out: list[str] = []
    i, n = 0, len(pattern)

    def at_group_start() -> bool:
        return not out or out[-1] in ("(", "(?:", "|")

    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise ValueError("trailing backslash")
            d = pattern[i + 1]
            i += 2
            if d == "(":
                if pattern.startswith("?:", i):
                    out.append("(?:")
                    i += 2
                elif pattern.startswith("?", i):
                    raise ValueError("explicitly numbered groups \\(?N:")
                else:
                    out.append("(")
            elif d in ")|{}":
                out.append(d)
            elif d == "`":
                out.append(r"\A")
            elif d == "'":
                out.append(r"\Z")
            elif d in "<>b":
                out.append(r"\b")
            elif d == "_" and i < n and pattern[i] in "<>":
                out.append(r"\b")
                i += 1
            elif d in "BwW" or d.isdigit() and d != "0":
                out.append("\\" + d)
            elif d in "sS" and i < n:
                cls = pattern[i]
                i += 1
                py = {"-": "s", " ": "s", "w": "w"}.get(cls)
                if py is None:
                    raise ValueError(f"syntax class \\{d}{cls}")
                out.append("\\" + (py.upper() if d == "S" else py))
            elif d in "=cC":
                raise ValueError(f"\\{d}")
            else:
                out.append(re.escape(d))
        elif c == "[":
            i = _bracket(pattern, i, out)
        elif c in "()|{}":
            out.append("\\" + c)
            i += 1
        elif c == "^":
            out.append("^" if at_group_start() else r"\^")
            i += 1
        elif c == "$":
            rest = pattern[i + 1:]
            end = rest == "" or rest.startswith("\\)") or rest.startswith("\\|")
            out.append("$" if end else r"\$")
            i += 1
        elif c in "*+?":
            if at_group_start() or out[-1] == "^":
                out.append("\\" + c)
            else:
                out.append(c)
            i += 1
        else:
            out.append(c if c == "." else re.escape(c))
            i += 1
    return "".join(out)


def _bracket(pattern: str, i: int, out: list[str]) -> int:
    """Copy the bracket expression at pattern[i] == "["; return the index after."""
    n = len(pattern)
    j = i + 1
    parts = ["["]
    if j < n and pattern[j] == "^":
        parts.append("^")
        j += 1
    first = True
    while True:
        if j >= n:
            raise ValueError("unterminated [")
        c = pattern[j]
        if c == "]" and not first:
            break
        first = False
        if c == "[" and pattern.startswith("[:", j):
            end = pattern.find(":]", j + 2)
            if end < 0:
                raise ValueError("unterminated [:class:]")
            name = pattern[j + 2:end]
            if name not in _CHAR_CLASSES:
                raise ValueError(f"character class [:{name}:]")
            parts.append(_CHAR_CLASSES[name])
            j = end + 2
            continue
        # In Emacs only "]", "^" and "-" are special inside brackets.
        parts.append("\\" + c if c in "\\[]&~|" else c)
        j += 1
    parts.append("]")
    out.append("".join(parts))
    return j + 1


def requires_authorization(settings: Settings, host: str | None = None) -> bool:
    """Does servers-requiring-authorization match the server, as smtpmail does?

    ``string-match-p``: an unanchored search, case-insensitive under Emacs's
    default ``case-fold-search`` t.
    """
    pattern = settings.servers_requiring_authorization
    host = settings.smtp_server if host is None else host
    if pattern is None or host is None:
        return False
    import re
    return re.search(pattern, host, re.IGNORECASE) is not None


# ---------------------------------------------------------------------------
# Loading

ENV_PREFIX = "SMTPMAIL_BRIDGE_"
CONFIG_ENV = "SMTPMAIL_BRIDGE_CONFIG"


def env_name(name: str) -> str:
    """The environment variable for a setting: SMTPMAIL_BRIDGE_SMTP_SERVICE."""
    return ENV_PREFIX + name.upper().replace("-", "_")


def default_config_path() -> str:
    """platformdirs' user config dir + config.toml (XDG on Linux)."""
    import platformdirs
    return os.path.join(platformdirs.user_config_dir("smtpmail-bridge"),
                        "config.toml")


def config_file(cli_path: str | None, env: Mapping[str, str]) -> tuple[str, bool]:
    """(path, explicit): --config wins over $SMTPMAIL_BRIDGE_CONFIG."""
    if cli_path:
        return os.path.expanduser(cli_path), True
    if env.get(CONFIG_ENV):
        return os.path.expanduser(env[CONFIG_ENV]), True
    return default_config_path(), False


def read_file(path: str, *, explicit: bool) -> dict[str, object]:
    """The top-level TOML table of *path* ({} if an implicit file is absent)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as fp:
            return tomllib.load(fp)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: configuration file not found") from None
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _cli_items(cli: Mapping[str, object]) -> Iterable[tuple[str, object, str]]:
    """(setting, value, origin) for the flags that were given."""
    for key, value in cli.items():
        name = key.replace("_", "-")
        if value is None:
            continue
        if name == "debug":
            if value:
                yield "debug-info", True, "flag --debug"
        elif name in _CONVERTERS:
            yield name, value, f"flag --{name}"
        # anything else (config, the verb, ...) is not a setting


def load(cli: Mapping[str, object] | None = None,
         env: Mapping[str, str] | None = None,
         config_path: str | None = None) -> tuple[Settings, dict[str, str]]:
    """Settings from defaults, the TOML file, the environment and flags.

    Returns the settings and, for each setting name, where it came from.
    ``cli`` maps flag names (dashed or underscored; None = not given) to
    values; it may be a whole ``vars(args)``.
    """
    env = os.environ if env is None else env
    cli = dict(cli or {})
    if config_path is None and isinstance(cli.get("config"), str):
        config_path = cli["config"]  # type: ignore[assignment]

    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    fallback: tuple[object, str] | None = None   # default-smtp-server

    def put(name: str, value: object, origin: str) -> None:
        nonlocal fallback
        if name == "default-smtp-server":
            fallback = (value, origin)
        else:
            values[name] = value
            sources[name] = origin

    path, explicit = config_file(config_path, env)
    data = read_file(path, explicit=explicit)
    for name, value in data.items():
        if name not in _CONVERTERS:
            raise unknown_setting(name, path)
        put(name, _coerce(name, value, path, strict=True), f"file {path}")

    for name in KNOWN_NAMES:
        var = env_name(name)
        if var in env:
            put(name, _coerce(name, env[var], f"env {var}"), f"env {var}")

    for name, value, origin in _cli_items(cli):
        put(name, _coerce(name, value, origin), origin)

    # smtpmail's initial value of smtp-server: $SMTPSERVER, else
    # default-smtp-server; an explicit smtp-server anywhere beats both.
    if "smtp-server" not in values:
        server = env.get("SMTPSERVER")
        if server:
            values["smtp-server"] = _coerce("smtp-server", server, "env SMTPSERVER")
            sources["smtp-server"] = "env SMTPSERVER"
        elif fallback is not None and fallback[0] is not None:
            values["smtp-server"] = fallback[0]
            sources["smtp-server"] = f"{fallback[1]} (default-smtp-server)"

    settings = _apply(Settings(), values)
    for name in SETTING_NAMES:
        sources.setdefault(name, "default")
    return settings, sources


def _printed(name: str, value: object) -> str:
    if name == "password-command":
        return "nil" if value is None else "<set>"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return _show(value)


def describe(settings: Settings, sources: Mapping[str, str]
             ) -> list[tuple[str, str, str]]:
    """(name, printed value, origin) per setting, for ``smtpmail-bridge config``.

    Values print as in TOML, nil for unset; password-command prints as
    ``<set>`` because the command line may embed a secret.
    """
    rows = []
    for field in dataclasses.fields(Settings):
        name = field.name.replace("_", "-")
        rows.append((name, _printed(name, getattr(settings, field.name)),
                     sources.get(name, "default")))
    return rows
