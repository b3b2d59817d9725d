"""Send now, queue, or flush: the one code path behind every front end.

CONTRACT (signatures fixed; bodies being written):
  send(settings, envelope, *, credentials, transcript) -> None
      Deliver one envelope now with smtpmail's dialogue; raises BridgeError.
  queue_message(settings, envelope) -> queue.Entry
      Write it to the queue (settings.queue_dir), storing the server
      variables when settings.store_queue_variables.
  send_or_queue(settings, envelope, *, credentials, transcript,
                queue_on_failure=False) -> Outcome
      settings.queue_mail -> queue it; else send; with queue_on_failure a
      failed send is queued (never lost) and Outcome.error says why.
  flush(settings, *, credentials, transcript, progress) -> FlushReport
      smtpmail-send-queued-mail, under the queue lock.

  credentials: smtp.CredentialProvider = (host, port, user, required) ->
               auth.Credentials | None
  transcript:  Callable[[str, str], None] | None  (direction "C"/"S"/"*",
               one line, already redacted)
  progress:    Callable[[FlushProgress], None] | None
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from bridge import message as msg
from bridge.errors import (AmbiguousDeliveryError, AuthError, BridgeError,
                           ConfigError, MessageError, PermanentError,
                           TransientError)

if TYPE_CHECKING:
    from bridge.config import Settings
    from bridge.queue import Entry, Queue
    from bridge.smtp import Cancel, CredentialProvider, Transcript


@dataclass
class Outcome:
    status: str                      # "sent" | "queued"
    entry_id: str | None = None      # set when queued
    error: BridgeError | None = None  # why a send ended in the queue


@dataclass
class FlushProgress:
    done: int
    total: int
    entry_id: str
    recipient: str
    rate: float                      # messages per second so far


@dataclass
class EntryFailure:
    entry_id: str
    state: str                       # "deferred" | "rejected" | "possibly-delivered" | "unsafe"
    error: str


@dataclass
class FlushReport:
    sent: list[str] = field(default_factory=list)
    failures: list[EntryFailure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # set aside earlier
    problems: list[str] = field(default_factory=list)  # index/scan reports

    @property
    def exit_code(self) -> int:
        if any(f.state == "rejected" for f in self.failures):
            return 69
        if self.failures:
            return 75
        return 0


def file_credentials(settings: "Settings") -> "CredentialProvider":
    """The shell's credential source: authinfo files, then password-command."""
    from bridge.auth import FileCredentials
    return FileCredentials(settings)


def send(settings: "Settings", envelope: msg.Envelope, *,
         credentials: "CredentialProvider | None" = None,
         transcript: "Transcript | None" = None, cancel: "Cancel | None" = None) -> str:
    """Deliver one envelope now; returns the server's final reply."""
    from bridge import smtp
    if credentials is None:
        credentials = file_credentials(settings)
    return smtp.send(settings, envelope, credentials=credentials, transcript=transcript,
                     cancel=cancel)


def stored_variables(settings: "Settings") -> dict[str, object] | None:
    """smtpmail-store-queue-variables: what the .el records, if anything."""
    if not settings.store_queue_variables:
        return None
    return {"server": settings.smtp_server, "stream_type": settings.stream_type,
            "service": settings.smtp_service, "user": settings.smtp_user}


def open_queue(settings: "Settings") -> "Queue":
    from bridge.queue import Queue
    return Queue.from_settings(settings)


def queue_message(settings: "Settings", envelope: msg.Envelope) -> "Entry":
    """Write the envelope to the queue; nothing is sent."""
    if hasattr(envelope.data, "seek"):
        envelope.data.seek(0)           # a spooled stdin may have been sent from
    return open_queue(settings).add(envelope.data, envelope.recipients,
                                    stored=stored_variables(settings),
                                    sender=envelope.sender)


def send_or_queue(settings: "Settings", envelope: msg.Envelope, *,
                  credentials: "CredentialProvider | None" = None,
                  transcript: "Transcript | None" = None,
                  queue_on_failure: bool = False, cancel: "Cancel | None" = None) -> Outcome:
    """smtpmail-send-it's choice: queue-mail queues, else send now.

    With ``queue_on_failure`` a message the server did not accept is queued,
    so it is never lost; the Outcome says why.  A message the server
    rejected for good (5xx) or that is malformed is not queued silently: it
    is queued set aside, so the user can read the reason and retry or drop.
    """
    if settings.queue_mail:
        entry = queue_message(settings, envelope)
        return Outcome("queued", entry.id)
    try:
        send(settings, envelope, credentials=credentials, transcript=transcript, cancel=cancel)
        return Outcome("sent")
    except BridgeError as e:
        if not queue_on_failure:
            raise
        entry = queue_message(settings, envelope)
        open_queue(settings).set_state(entry, failure_state(e), error=str(e))
        return Outcome("queued", entry.id, e)


def failure_state(error: BridgeError) -> str:
    """Queue state for an entry whose delivery failed with ``error``."""
    if isinstance(error, AmbiguousDeliveryError):
        return "possibly-delivered"
    if isinstance(error, (PermanentError, MessageError)):
        return "rejected"
    return "deferred"


# --- flush ---------------------------------------------------------------------

SENDABLE = ("queued", "deferred")


def entry_settings(settings: "Settings", entry: "Entry") -> "Settings":
    """The entry's own stored variables, else the current settings.

    smtpmail binds the stored variables once around the whole flush, so one
    entry's server leaks into the next; here each entry stands alone.
    """
    stored = entry.stored or {}
    changes = {}
    for key, name in (("server", "smtp_server"), ("stream_type", "stream_type"),
                      ("service", "smtp_service"), ("user", "smtp_user")):
        if key in stored:
            changes[name] = stored[key]
    # smtpmail's aliases for stream types: tls = ssl, network = nil
    if changes.get("stream_type") in ("tls", "network"):
        changes["stream_type"] = "ssl" if changes["stream_type"] == "tls" else None
    return settings.replace(**changes) if changes else settings


def server_key(s: "Settings") -> tuple:
    return (s.smtp_server, str(s.smtp_service), s.stream_type, s.smtp_user)


def entry_sender(settings: "Settings", entry: "Entry") -> str | None:
    """smtpmail's flush rule: the recorded sender, else mail-address (Emacs's
    user-mail-address), else From:, else $EMAIL / login@host if valid."""
    if entry.sender:
        return entry.sender
    if settings.mail_address:
        return settings.mail_address
    return msg.from_address(entry.headers()) or msg.default_sender()


def flush(settings: "Settings", *,
          credentials: "CredentialProvider | None" = None,
          transcript: "Transcript | None" = None,
          progress: "Callable[[FlushProgress], None] | None" = None,
          only: "list[str] | None" = None, cancel: "Cancel | None" = None) -> FlushReport:
    """smtpmail-send-queued-mail, fixed: per-entry settings, no stop on error.

    Runs under the queue lock.  Entries sharing a server go over one SMTP
    session; each is removed only after the server's final 250.
    """
    if credentials is None:
        credentials = file_credentials(settings)
    queue = open_queue(settings)
    report = FlushReport()
    with queue.lock(settings.lock_timeout), queue.batch() as removals:
        scan = queue.scan()
        report.problems.extend(scan.problems)
        for unsafe in scan.unsafe:
            report.failures.append(EntryFailure(unsafe.id, "unsafe", unsafe.reason))
        groups: dict[tuple, list[tuple["Entry", "Settings"]]] = {}
        for entry in scan.entries:
            if only is not None and entry.id not in only:
                continue
            if entry.state not in SENDABLE:
                report.skipped.append(entry.id)
                continue
            s = entry_settings(settings, entry)
            groups.setdefault(server_key(s), []).append((entry, s))
        run = _FlushRun(queue, removals, report, credentials, transcript, progress,
                        total=sum(len(m) for m in groups.values()), cancel=cancel)
        for members in groups.values():
            run.group(members)
    return report


class _FlushRun:
    """One flush's bookkeeping: progress, per-entry transcript, outcomes."""

    def __init__(self, queue, removals, report: FlushReport, credentials, transcript,
                 progress, total: int, cancel: "Cancel | None" = None) -> None:
        self.cancel = cancel
        self.queue, self.removals, self.report = queue, removals, report
        self.credentials, self.transcript, self.progress = credentials, transcript, progress
        self.total, self.done, self.start = total, 0, time.monotonic()
        self.lines: list[str] = []

    def tap(self, direction: str, line: str) -> None:
        self.lines.append(f"{direction}: {line}")
        if self.transcript:
            self.transcript(direction, line)

    def group(self, members: list[tuple["Entry", "Settings"]]) -> None:
        """Entries for one server, over one Sender (one SMTP session)."""
        from bridge.smtp import Sender
        group_error: BridgeError | None = None
        sender = None
        try:
            sender = Sender(members[0][1], self.credentials, self.tap, self.cancel)
        except ConfigError as e:
            group_error = e
        try:
            for entry, s in members:
                if self.cancel is not None and self.cancel.is_set():
                    return            # the rest stay queued, untouched
                error = group_error or self.one(sender, entry, s)
                if error is not None and _fails_the_rest(error, sender, self.lines):
                    group_error = error
        finally:
            if sender is not None:
                sender.close()

    def one(self, sender, entry: "Entry", s: "Settings") -> BridgeError | None:
        """Deliver one entry and record the outcome; returns its error, if any."""
        self.lines.clear()
        if self.progress:
            rate = self.done / max(time.monotonic() - self.start, 1e-6)
            self.progress(FlushProgress(self.done, self.total, entry.id,
                                        entry.recipients[0] if entry.recipients else "", rate))
        self.done += 1
        try:
            sender.deliver(_envelope(s, entry))
        except BridgeError as e:
            error: BridgeError = e
        except OSError as e:          # e.g. an Emacs flush removed the file meanwhile
            error = TransientError(f"{entry.id}: cannot read the queued message: "
                                   f"{e.strerror or e}")
        else:
            self.removals.remove(entry)
            self.report.sent.append(entry.id)
            return None
        state = failure_state(error)
        try:
            self.queue.set_state(entry, state, error=str(error), transcript="\n".join(self.lines))
        except (BridgeError, OSError) as e:
            self.report.problems.append(f"{entry.id}: state not recorded: {e}")
        self.report.failures.append(EntryFailure(entry.id, state, str(error)))
        return error


def _fails_the_rest(error: BridgeError, sender, lines: list[str]) -> bool:
    """A server we cannot reach or log in to fails its other entries alike,
    without waiting for the same timeout once per message."""
    if isinstance(error, (AuthError, ConfigError)):
        return True
    return (isinstance(error, TransientError) and not isinstance(error, AmbiguousDeliveryError)
            and sender is not None and sender.conn is None and not _was_connected(lines))


def _was_connected(lines: list[str]) -> bool:
    return any(line.startswith("S:") for line in lines)


def _envelope(settings: "Settings", entry: "Entry") -> msg.Envelope:
    sender = entry_sender(settings, entry)
    if not sender:
        raise MessageError(f"{entry.id}: no envelope sender (set mail-address)")
    if not entry.recipients:
        raise MessageError(f"{entry.id}: no recipients")
    return msg.Envelope(sender, list(entry.recipients), Path(entry.data_path), entry.id)
