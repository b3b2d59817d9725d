"""``smtpmail-bridge serve``: the Emacs shim's backend on stdin/stdout.

One reader (the main thread) parses requests; every request that may touch
the network or the disk runs in its own thread, so a stalled server holds
up only its own job.  All output goes through one lock, one line at a time.
The wire format is in docs/protocol.md and bridge/protocol.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable

from bridge import __version__, protocol
from bridge.config import Settings
from bridge.errors import AuthError, BridgeError, Cancelled, MessageError, QueueError
from bridge.protocol import ProtocolError, Request, Sym

# Requests answered by the reader thread itself: they never block.
INLINE_OPS = {"hello", "cancel", "credential", "shutdown"}
SETTING_NAMES = {f.name.replace("_", "-") for f in dataclasses.fields(Settings)}


class _CredentialWait:
    """One outstanding credential-request: the job thread blocks on it."""

    def __init__(self, job: "Job") -> None:
        self.job = job
        self.done = threading.Event()
        self.credentials: Any = None
        self.refusal: str | None = None


class Job:
    """A request running in its own thread."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.cancelled = threading.Event()
        from bridge.smtp import Cancel
        self.cancel = Cancel()          # stops its SMTP session, even mid-read
        self.thread: threading.Thread | None = None
        self.waits: list[int] = []
        self.auth_pending: int | None = None   # cid whose AUTH we watch for


def _lisp_value(value: Any) -> Any:
    """A parsed Lisp value as config.from_mapping(emacs=True) expects it."""
    if isinstance(value, Sym):
        return str(value)
    if isinstance(value, list):
        return [_lisp_value(v) for v in value]
    return value


def settings_for(base: Settings, variables: dict[str, Any]) -> Settings:
    """``base`` with the shim's smtpmail variables applied.

    Names that are not settings (the shim may send more than we use) are
    ignored, so an older backend keeps working with a newer shim.
    """
    from bridge import config
    known = {k: _lisp_value(v) for k, v in variables.items() if k in SETTING_NAMES}
    if not known:
        return base
    return config.from_mapping(base, known, "emacs", emacs=True)


def _entry_id(entry: Any) -> str | None:
    for attr in ("id", "name", "entry_id"):
        value = getattr(entry, attr, None)
        if isinstance(value, str):
            return value
    path = getattr(entry, "path", None) or getattr(entry, "data_path", None)
    return Path(path).name if path else None


def _plain(value: Any) -> Any:
    """Queue entries and reports as printable plists (strings, ints, lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name.replace("_", "-"): _plain(getattr(value, f.name))
                for f in dataclasses.fields(value) if f.repr}
    if isinstance(value, dict):
        return {str(k).replace("_", "-"): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class Server:
    """The request loop; ``run`` returns the exit status."""

    def __init__(self, settings: Settings, stdin: BinaryIO, stdout: BinaryIO, *,
                 line_limit: int = protocol.MAX_LINE) -> None:
        self.settings = settings
        self.stdin = stdin
        self.stdout = stdout
        self.line_limit = line_limit
        self.out_lock = threading.Lock()
        self.state_lock = threading.Lock()
        self.jobs: dict[int, Job] = {}
        self.waits: dict[int, _CredentialWait] = {}
        self.cids = itertools.count(1)
        self.closing = threading.Event()   # EOF or shutdown: nobody will answer
        self.output_broken = False

    # -------------------------------------------------------------- output

    def write(self, line: str) -> None:
        with self.out_lock:
            if self.output_broken:
                return
            try:
                self.stdout.write(line.encode("utf-8", "surrogateescape"))
                self.stdout.flush()
            except (BrokenPipeError, OSError, ValueError):
                self.output_broken = True

    def event(self, job: Job, type_: str, **plist: Any) -> None:
        self.write(protocol.event(job.request.id, type_, **plist))

    # ---------------------------------------------------------------- loop

    def _chunks(self):
        read = getattr(self.stdin, "read1", self.stdin.read)
        while True:
            chunk = read(65536)
            if not chunk:
                return
            yield chunk

    def run(self) -> int:
        self.write(protocol.hello_line(__version__))
        shutdown: Request | None = None
        for line in protocol.iter_lines(self._chunks(), self.line_limit):
            if not line.strip():
                continue
            try:
                request = protocol.parse_request(line, self.line_limit)
            except ProtocolError as exc:
                self.write(protocol.error(exc.request_id, "protocol", exc.message))
                continue
            if request.op == "shutdown":
                shutdown = request
                break
            self.dispatch(request)
        self.closing.set()
        self._release_waits("the shim went away" if shutdown is None else "shutting down")
        for job in list(self.jobs.values()):
            if job.thread is not None:
                job.thread.join()
        if shutdown is not None:
            self.write(protocol.ok(shutdown.id))
        return 0

    def _release_waits(self, why: str) -> None:
        with self.state_lock:
            waits = list(self.waits.values())
        for wait in waits:
            wait.refusal = why
            wait.done.set()

    def dispatch(self, request: Request) -> None:
        if request.op in INLINE_OPS:
            self.answer(request, None)
            return
        with self.state_lock:
            if request.id in self.jobs:
                self.write(protocol.error(request.id, "protocol",
                                          f"id {request.id} is already in use"))
                return
            job = Job(request)
            self.jobs[request.id] = job
        job.thread = threading.Thread(target=self.answer, args=(request, job),
                                      name=f"job-{request.id}", daemon=True)
        job.thread.start()

    def answer(self, request: Request, job: Job | None) -> None:
        """Run one request and write its single final reply."""
        try:
            handler: Callable[..., dict[str, Any]] = getattr(self, "op_" + request.op)
            result = handler(request, job)
            line = protocol.ok(request.id, **result)
        except ProtocolError as exc:
            line = protocol.error(request.id, "protocol", exc.message)
        except BridgeError as exc:
            line = protocol.error(request.id, exc.kind, exc.message,
                                  code=exc.code, reply=exc.reply)
        except Exception as exc:  # a bug must not kill the server
            line = protocol.error(request.id, "internal",
                                  f"{type(exc).__name__}: {exc}")
        finally:
            if job is not None:
                with self.state_lock:
                    self.jobs.pop(request.id, None)
                    for cid in job.waits:
                        self.waits.pop(cid, None)
        self.write(line)

    # --------------------------------------------------------- job helpers

    def job_settings(self, request: Request) -> Settings:
        return settings_for(self.settings, request.vars())

    def credential_provider(self, job: Job, settings: Settings):
        """Ask Emacs: emit credential-request and block this job until answered."""
        def provide(host: str, port: int | str, user: str | None, required: bool):
            if self.closing.is_set():
                raise Cancelled("no Emacs to ask for credentials")
            cid = next(self.cids)
            wait = _CredentialWait(job)
            with self.state_lock:
                self.waits[cid] = wait
                job.waits.append(cid)
            self.event(job, "credential-request", cid=cid, host=host,
                       port=str(port), user=user, required=bool(required))
            answered = wait.done.wait(settings.command_timeout)
            with self.state_lock:
                self.waits.pop(cid, None)
            if job.cancelled.is_set():
                raise Cancelled("cancelled while waiting for credentials")
            if not answered:
                raise AuthError(f"no answer from Emacs for the credentials of {host}:{port}")
            if wait.refusal is not None and wait.credentials is None:
                if required:
                    raise AuthError(f"no credentials for {host}:{port}: {wait.refusal}")
                return None
            if wait.credentials is not None:
                job.auth_pending = cid
            return wait.credentials
        return provide

    def transcript(self, job: Job, settings: Settings):
        def record(direction: str, line: str) -> None:
            if job.auth_pending is not None and direction == "S" and line.startswith("235"):
                cid, job.auth_pending = job.auth_pending, None
                self.event(job, "auth-ok", cid=cid)
            if settings.debug_info:
                self.event(job, "trace", host=settings.smtp_server,
                           dir=direction, line=line)
        return record

    def _message_bytes(self, request: Request) -> bytes:
        data = request.data()
        path = request.string("file")
        if (data is None) == (path is None):
            raise ProtocolError(f"{request.op}: give exactly one of :data and :file",
                                request.id)
        if data is not None:
            return data
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise MessageError(f"cannot read message file {path}: {exc.strerror}") from None

    def _envelope(self, request: Request, settings: Settings):
        from bridge import message
        data = self._message_bytes(request)
        recipients = request.strings("recipients")
        return message.prepare(data, sender=request.string("sender"),
                               recipients=recipients,
                               extract=not request.flag("no-extract"),
                               mail_address=settings.mail_address,
                               label=request.string("label") or "message")

    # ----------------------------------------------------------------- ops

    def op_hello(self, request: Request, job: None) -> dict[str, Any]:
        return {"protocol": protocol.PROTOCOL_VERSION, "version": __version__,
                "ops": [Sym(o) for o in protocol.OPS]}

    def op_cancel(self, request: Request, job: None) -> dict[str, Any]:
        target = request.integer("job", required=True)
        with self.state_lock:
            victim = self.jobs.get(target)
            waits = [self.waits[c] for c in (victim.waits if victim else []) if c in self.waits]
        if victim is None:
            return {"cancelled": None}
        victim.cancelled.set()
        victim.cancel.set()
        for wait in waits:
            wait.refusal = "cancelled"
            wait.done.set()
        return {"cancelled": True}

    def op_credential(self, request: Request, job: None) -> dict[str, Any]:
        from bridge.auth import Credentials
        cid = request.integer("for", required=True)
        with self.state_lock:
            wait = self.waits.get(cid)
        if wait is None:
            raise ProtocolError(f"credential: no pending request {cid}", request.id)
        user, secret = request.string("user"), request.string("secret")
        if user is not None and secret is not None:
            wait.credentials = Credentials(user=user, secret=secret,
                                           mechanism=request.string("mechanism"),
                                           key=request.string("key"),
                                           cert=request.string("cert"),
                                           source="Emacs auth-source")
        else:
            wait.refusal = request.string("error") or "Emacs has none"
        wait.done.set()
        return {}

    def op_send(self, request: Request, job: Job) -> dict[str, Any]:
        from bridge import delivery
        settings = self.job_settings(request)
        envelope = self._envelope(request, settings)
        keep = request.flag("queue-on-failure")
        try:
            outcome = delivery.send_or_queue(
                settings, envelope,
                credentials=self.credential_provider(job, settings),
                transcript=self.transcript(job, settings),
                queue_on_failure=keep, cancel=job.cancel)
        except BridgeError as exc:
            if self.closing.is_set() and not isinstance(exc, (MessageError, QueueError)):
                # Nobody is left to keep the message: hand it to the queue.
                entry = delivery.queue_message(settings, envelope)
                exc.message = f"{exc.message} (queued as {_entry_id(entry)})"
            raise
        reply: dict[str, Any] = {"status": Sym(outcome.status),
                                 "entry": outcome.entry_id,
                                 "recipients": list(envelope.recipients)}
        err = outcome.error
        if err is not None:
            reply.update(kind=Sym(err.kind), message=err.message,
                         code=err.code, reply=err.reply)
        if job.auth_pending is not None and outcome.status == "sent":
            self.event(job, "auth-ok", cid=job.auth_pending)
        return reply

    def op_queue(self, request: Request, job: Job) -> dict[str, Any]:
        from bridge import delivery
        settings = self.job_settings(request)
        envelope = self._envelope(request, settings)
        entry = delivery.queue_message(settings, envelope)
        return {"status": Sym("queued"), "entry": _entry_id(entry),
                "recipients": list(envelope.recipients)}

    def op_flush(self, request: Request, job: Job) -> dict[str, Any]:
        from bridge import delivery
        settings = self.job_settings(request)

        def progress(p: Any) -> None:
            self.event(job, "progress", done=p.done, total=p.total,
                       entry=p.entry_id, recipient=p.recipient,
                       rate=round(float(p.rate), 3))
        report = delivery.flush(settings,
                                credentials=self.credential_provider(job, settings),
                                transcript=self.transcript(job, settings),
                                progress=progress, cancel=job.cancel)
        return {"sent": list(report.sent),
                "failures": [_plain(f) for f in report.failures],
                "skipped": list(report.skipped),
                "problems": list(report.problems),
                "exit": report.exit_code}

    def _queue(self, request: Request):
        from bridge.queue import Queue
        return Queue.from_settings(self.job_settings(request))

    def op_list(self, request: Request, job: Job) -> dict[str, Any]:
        scanned = self._queue(request).scan()
        entries = getattr(scanned, "entries", scanned)
        return {"entries": [_plain(e) for e in entries],
                "unsafe": _plain(getattr(scanned, "unsafe", [])),
                "problems": _plain(getattr(scanned, "problems", []))}

    def _find(self, request: Request):
        queue = self._queue(request)
        prefix = request.string("entry", required=True)
        return queue, queue.find(prefix)

    def op_show(self, request: Request, job: Job) -> dict[str, Any]:
        _, entry = self._find(request)
        return {"entry": _plain(entry)}

    def _under_lock(self, request: Request, action: str) -> str | None:
        """Run the queue's ``action`` ("remove", "retry") on the entry, locked."""
        queue, entry = self._find(request)
        with queue.lock(self.job_settings(request).lock_timeout):
            getattr(queue, action)(entry)
        return _entry_id(entry)

    def op_drop(self, request: Request, job: Job) -> dict[str, Any]:
        return {"dropped": self._under_lock(request, "remove")}

    def op_retry(self, request: Request, job: Job) -> dict[str, Any]:
        return {"retried": self._under_lock(request, "retry")}

    def op_check(self, request: Request, job: Job) -> dict[str, Any]:
        import io
        from bridge import check
        settings = self.job_settings(request)
        out = io.StringIO()
        status = check.run(settings, out, credentials=self.credential_provider(job, settings))
        return {"status": status, "report": out.getvalue()}


def main(settings: Settings) -> int:
    """Entry point for ``smtpmail-bridge serve`` (wired by bridge/cli.py)."""
    return Server(settings, sys.stdin.buffer, sys.stdout.buffer).run()
