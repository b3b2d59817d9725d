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

from dataclasses import dataclass, field
from typing import Callable

from bridge.errors import BridgeError


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
