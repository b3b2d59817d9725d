"""The error taxonomy shared by every front end, and its sysexits codes.

Every failure the core raises is a :class:`BridgeError`; the CLI maps
``exit_code`` to the process status, ``serve`` sends ``kind``, ``code`` and
``reply`` to Emacs.  Messages never contain secrets.
"""

from __future__ import annotations

# sysexits.h
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78


class BridgeError(Exception):
    """Base class: a failure with a user-facing one-line message."""

    exit_code = EX_SOFTWARE
    kind = "internal"

    def __init__(self, message: str, *, code: int | None = None,
                 reply: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code          # SMTP reply code, when a server answered
        self.reply = reply        # the server's full reply text, when any

    def __str__(self) -> str:
        return self.message


class UsageError(BridgeError):
    """Bad command-line usage."""

    exit_code = EX_USAGE
    kind = "usage"


class ConfigError(BridgeError):
    """A bad setting: names the file, key and what was expected."""

    exit_code = EX_CONFIG
    kind = "config"


class MessageError(BridgeError):
    """The message itself cannot be sent: no recipients, CR/LF in an address."""

    exit_code = EX_DATAERR
    kind = "message"


class AuthError(BridgeError):
    """No credentials where required, or the server rejected them."""

    exit_code = EX_NOPERM
    kind = "auth"


class TransientError(BridgeError):
    """A 4xx reply, a network failure or a timeout: try again later."""

    exit_code = EX_TEMPFAIL
    kind = "transient"


class AmbiguousDeliveryError(TransientError):
    """The connection failed after the final "." was sent: maybe delivered."""

    kind = "ambiguous"


class Cancelled(TransientError):
    """The caller (the Emacs shim's cancel) stopped the job before it finished."""

    kind = "cancelled"


class PermanentError(BridgeError):
    """A 5xx reply or a server that cannot take this message at all."""

    exit_code = EX_UNAVAILABLE
    kind = "permanent"


class QueueError(BridgeError):
    """The queue directory or one of its files cannot be used."""

    exit_code = EX_CANTCREAT
    kind = "queue"


class QueueBusy(QueueError):
    """Another flusher holds the queue lock."""

    exit_code = EX_TEMPFAIL
    kind = "busy"
