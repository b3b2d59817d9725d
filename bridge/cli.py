"""The shell front end: sendmail-compatible ``send`` and the queue verbs.

In the manner of msmtp and sendmail: flags users already know, sysexits
exit codes, quiet on success, one clear line on failure, ``--debug`` for a
redacted transcript.  Every verb only translates arguments into calls on
``delivery``, ``queue`` and ``smtp``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

from bridge.errors import EX_OK, EX_SOFTWARE, BridgeError, UsageError

if TYPE_CHECKING:
    from argparse import Namespace

PROG = "smtpmail-bridge"
VERBS = ("send", "list", "flush", "show", "drop", "retry", "check", "config", "serve")

# Long options every verb accepts: name -> takes a value.
GLOBAL_OPTIONS = {
    "--config": True, "--smtp-server": True, "--smtp-service": True,
    "--stream-type": True, "--smtp-user": True, "--queue-dir": True,
    "--debug": False,
}


# --- argument parsing ----------------------------------------------------------

@dataclass
class SendArgs:
    """sendmail's command line, as msmtp and Postfix accept it."""

    extract: bool = False                 # -t
    sender: str | None = None             # -f / -r
    full_name: str | None = None          # -F
    recipients: list[str] = field(default_factory=list)
    queue: bool = False                   # --queue, -odq
    queue_on_failure: bool = False        # --queue-on-failure
    verbose: bool = False                 # -v
    options: dict[str, object] = field(default_factory=dict)   # global long options


# Flags sendmail accepts that change nothing for us (delivery mode,
# error mode, DSN, body type...): accepted silently, as msmtp does.
_IGNORED_WITH_VALUE = {"-N", "-B", "-V", "-R", "-X", "-L", "-O", "-h", "-p"}
# Short flags whose value may be the next word: "-f addr" as well as "-faddr".
_SHORT_WITH_VALUE = {"-f", "-r", "-F", "-C"} | _IGNORED_WITH_VALUE


def _take_value(argv: list[str], i: int, flag: str) -> tuple[str, int]:
    arg = argv[i]
    if len(arg) > len(flag):
        return arg[len(flag):], i + 1
    if i + 1 >= len(argv):
        raise UsageError(f"option {flag} needs a value")
    return argv[i + 1], i + 2


def parse_send(argv: Sequence[str]) -> SendArgs:
    """Parse sendmail-style arguments (short flags may precede the verb)."""
    argv = list(argv)
    args = SendArgs()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            args.recipients.extend(argv[i + 1:])
            break
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            takes_value = GLOBAL_OPTIONS.get(name) or name in ("--from", "--envelope-sender")
            if takes_value and not eq:
                if i + 1 >= len(argv):
                    raise UsageError(f"option {name} needs a value")
                value = argv[i + 1]
                i += 1
            if name in GLOBAL_OPTIONS:
                args.options[name[2:]] = value if takes_value else True
            elif name == "--queue":
                args.queue = True
            elif name == "--queue-on-failure":
                args.queue_on_failure = True
            elif name == "--read-recipients":
                args.extract = True
            elif name in ("--from", "--envelope-sender"):
                args.sender = value
            else:
                raise UsageError(f"unknown option {name}")
            i += 1
            continue
        if not arg.startswith("-") or arg == "-":
            args.recipients.append(arg)
            i += 1
            continue
        if arg == "-t":
            args.extract = True
        elif arg in ("-i", "-oi", "-oI"):
            pass                          # a lone "." never ends input: always so
        elif arg == "-v":
            args.verbose = True
        elif arg == "-odq":
            args.queue = True
        elif arg.startswith("-f") or arg.startswith("-r"):
            args.sender, i = _take_value(argv, i, arg[:2])
            continue
        elif arg.startswith("-F"):
            args.full_name, i = _take_value(argv, i, "-F")
            continue
        elif arg.startswith("-C"):
            args.options["config"], i = _take_value(argv, i, "-C")
            continue
        elif arg[:2] in _IGNORED_WITH_VALUE:
            _, i = _take_value(argv, i, arg[:2])
            continue
        elif arg.startswith("-o") or arg.startswith("-b") or arg in ("-m", "-n", "-U", "-G"):
            if arg.startswith("-b") and arg not in ("-bm", "-bs"):
                raise UsageError(f"sendmail mode {arg} is not supported; only -bm")
            if arg == "-bs":
                raise UsageError("sendmail mode -bs (SMTP on stdin) is not supported")
        else:
            raise UsageError(f"unknown option {arg}")
        i += 1
    return args


def _parser(**kw):
    """An argparse parser whose usage errors exit 64 (EX_USAGE) with one line.

    argparse is imported here, not at module level: `send` never needs it,
    and every millisecond of start-up counts for a sendmail.
    """
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise UsageError(f"{self.prog}: {message}")

    return Parser(**kw)


def _global_parser():
    p = _parser(add_help=False)
    for name, takes in GLOBAL_OPTIONS.items():
        if takes:
            p.add_argument(name)
        else:
            p.add_argument(name, action="store_true", default=None)
    return p


def _verb_parser(verb: str):
    p = _parser(prog=f"{PROG} {verb}", parents=[_global_parser()])
    if verb in ("show", "drop", "retry"):
        p.add_argument("ids", nargs="+", metavar="ID", help="queue id or unique prefix")
    if verb == "flush":
        p.add_argument("ids", nargs="*", metavar="ID", help="only these entries")
        p.add_argument("--progress", action="store_true", default=None,
                       help="show progress even when stdout is not a terminal")
    if verb == "list":
        p.add_argument("--all", action="store_true", help="also show problems in full")
    return p


def split_verb(argv: Sequence[str]) -> tuple[str, list[str], list[str]]:
    """(verb, tokens before it, tokens after it); no verb means send."""
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in VERBS:
            return arg, argv[:i], argv[i + 1:]
        if arg in GLOBAL_OPTIONS and GLOBAL_OPTIONS[arg]:
            i += 2
            continue
        if arg in _SHORT_WITH_VALUE:
            i += 2
            continue
        if not arg.startswith("-"):
            break                          # a recipient: sendmail mode
        i += 1
    return "send", [], argv


def _long_only(tokens: list[str]) -> list[str]:
    """Drop sendmail's short flags given before a non-send verb."""
    kept: list[str] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if GLOBAL_OPTIONS.get(t):
            kept += tokens[i:i + 2]
            i += 2
        elif t.startswith("--"):
            kept.append(t)
            i += 1
        else:
            i += 2 if t in _SHORT_WITH_VALUE else 1
    return kept


# --- settings ---------------------------------------------------------------------

def load_settings(options: dict[str, object]):
    from bridge import config
    return config.load(cli=options, env=os.environ)


def _stderr_transcript(direction: str, line: str) -> None:
    sys.stderr.write(f"{direction}: {line}\n")


def _err(text: str) -> None:
    sys.stderr.write(f"{PROG}: {text}\n")


# --- verbs ----------------------------------------------------------------------

def cmd_send(args: SendArgs, stdin=None) -> int:
    from bridge import delivery, message

    settings, _ = load_settings(args.options)
    data = stdin or sys.stdin.buffer
    env = message.prepare(data, sender=args.sender, recipients=args.recipients,
                          extract=args.extract, mail_address=settings.mail_address)
    transcript = _stderr_transcript if (settings.debug_info or args.verbose) else None
    if args.queue:
        settings = settings.replace(queue_mail=True)
    outcome = delivery.send_or_queue(settings, env, transcript=transcript,
                                     queue_on_failure=args.queue_on_failure)
    if outcome.error is not None:
        state = delivery.failure_state(outcome.error)
        _err(f"not sent, queued ({state}) as {outcome.entry_id}: {outcome.error}")
        if state == "rejected":
            return outcome.error.exit_code     # kept on disk, but the caller must know
    return EX_OK


def _verb_args(verb: str, tokens: list[str]) -> Namespace:
    return _verb_parser(verb).parse_args(tokens)


def _options(ns: Namespace) -> dict[str, object]:
    return {k.replace("_", "-"): v for k, v in vars(ns).items()
            if k.replace("_", "-") in {n[2:] for n in GLOBAL_OPTIONS}}


def cmd_config(ns: Namespace) -> int:
    from bridge import config
    settings, sources = load_settings(_options(ns))
    rows = config.describe(settings, sources)
    width = max(len(r[0]) for r in rows)
    for name, value, origin in rows:
        print(f"{name:<{width}}  {value}  ({origin})")
    return EX_OK


def cmd_list(ns: Namespace) -> int:
    from bridge import delivery
    settings, _ = load_settings(_options(ns))
    queue = delivery.open_queue(settings)
    scan = queue.scan()
    for problem in scan.problems:
        _err(f"warning: {problem}")
    for unsafe in scan.unsafe:
        _err(f"unsafe entry {unsafe.id} left untouched: {unsafe.reason}")
    for e in scan.entries:
        stored = ""
        if e.stored:
            st = e.stored
            stored = f" via {st.get('server') or '-'}:{st.get('service') or '-'}"
        state = e.state + (f" ({e.last_error})" if e.last_error else "")
        print(f"{e.id}  {e.date}  {e.sender or '-'}  -> {', '.join(e.recipients)}  "
              f"{e.size} bytes{stored}  {state}")
    return EX_OK


def cmd_show(ns: Namespace) -> int:
    from bridge import delivery
    settings, _ = load_settings(_options(ns))
    queue = delivery.open_queue(settings)
    for i, ident in enumerate(ns.ids):
        e = queue.find(ident, include_unsafe=True)
        if i:
            print()
        if not hasattr(e, "recipients"):
            print(f"id: {e.id}\nfile: {e.data_path}\nstate: unsafe (left untouched): {e.reason}")
            continue
        print(f"id: {e.id}")
        print(f"file: {e.data_path}")
        print(f"date: {e.date}")
        print(f"size: {e.size}")
        print(f"envelope-sender: {e.sender or '(at flush time: ' + (settings.mail_address or 'From: header') + ')'}")
        for r in e.recipients:
            print(f"recipient: {r}")
        for k, v in (e.stored or {}).items():
            print(f"stored {k}: {v}")
        print(f"state: {e.state}")
        if e.last_error:
            print(f"last-error: {e.last_error}")
        print("--- headers")
        sys.stdout.write(e.headers().decode("utf-8", "replace"))
        transcript = getattr(e, "transcript", None)
        if transcript:
            print("--- last transcript")
            print(transcript)
    return EX_OK


def cmd_drop(ns: Namespace) -> int:
    from bridge import delivery
    settings, _ = load_settings(_options(ns))
    queue = delivery.open_queue(settings)
    with queue.lock(settings.lock_timeout):
        entries = [queue.find(i, include_unsafe=True) for i in ns.ids]
        for e in entries:
            queue.drop(e)
    return EX_OK


def cmd_retry(ns: Namespace) -> int:
    from bridge import delivery
    settings, _ = load_settings(_options(ns))
    queue = delivery.open_queue(settings)
    with queue.lock(settings.lock_timeout):
        for i in ns.ids:
            queue.retry(queue.find(i))
    return EX_OK


def cmd_flush(ns: Namespace) -> int:
    from bridge import delivery
    settings, _ = load_settings(_options(ns))
    transcript = _stderr_transcript if settings.debug_info else None
    show = ns.progress or sys.stdout.isatty()
    progress = _progress_printer() if show else None
    report = delivery.flush(settings, transcript=transcript, progress=progress,
                            only=[delivery.open_queue(settings).find(i).id for i in ns.ids] or None)
    if show:
        sys.stdout.write(f"\r\x1b[Ksent {len(report.sent)}, failed {len(report.failures)}\n")
    for problem in report.problems:
        _err(f"warning: {problem}")
    for f in report.failures:
        _err(f"{f.entry_id}: {f.state}: {f.error}")
    if report.skipped:
        _err(f"{len(report.skipped)} set-aside entries not sent (see list; use retry ID)")
    return report.exit_code


def _progress_printer() -> Callable:
    def show(p) -> None:
        sys.stdout.write(f"\r\x1b[K{p.done + 1}/{p.total} {p.recipient} "
                         f"({p.rate:.1f} msg/s)")
        sys.stdout.flush()
    return show


def cmd_check(ns: Namespace) -> int:
    from bridge import check
    settings, _ = load_settings(_options(ns))
    return check.run(settings, out=sys.stdout)


def cmd_serve(ns: Namespace) -> int:
    from bridge import serve
    settings, _ = load_settings(_options(ns))
    return serve.main(settings)


COMMANDS: dict[str, Callable[[Namespace], int]] = {
    "config": cmd_config, "list": cmd_list, "show": cmd_show, "drop": cmd_drop,
    "retry": cmd_retry, "flush": cmd_flush, "check": cmd_check, "serve": cmd_serve,
}

USAGE = f"""usage: {PROG} [sendmail flags] [send] [-t] [-f SENDER] [RECIPIENT...] < message
       {PROG} list | flush [ID...] | show ID | drop ID | retry ID | check | config | serve
global options: --config FILE --smtp-server HOST --smtp-service PORT
                --stream-type nil|starttls|ssl|plain --smtp-user USER --queue-dir DIR --debug
"""


SEND_HELP = """
send: the message on stdin, as sendmail reads it.
  -t                 recipients from To/Cc/Bcc (Resent-* when present); Bcc removed
  -f SENDER, -r      envelope sender (else mail-address, else From:)
  -i, -oi            accepted; a lone "." never ends input
  -F NAME, -oem, -odb, -odi, -oep, -v, -N, -B, -V, -R   accepted as sendmail does
  --queue, -odq      queue instead of sending (queue-mail)
  --queue-on-failure queue the message if it cannot be sent now, exit 0
exit: 0 sent, 75 try later, 69 rejected, 65 bad message, 77 auth, 78 config, 64 usage
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``smtpmail-bridge``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.path.basename(sys.argv[0]) == "sendmail":
        return _run(lambda: cmd_send(parse_send(argv)))
    if argv and argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return EX_OK
    if argv and argv[0] == "--version":
        from bridge import __version__
        print(f"{PROG} {__version__}")
        return EX_OK
    verb, before, after = split_verb(argv)
    if verb == "send" and ("--help" in after or "-h" in after):
        sys.stdout.write(USAGE + SEND_HELP)
        return EX_OK
    if verb == "send":
        return _run(lambda: cmd_send(parse_send(before + after)))
    return _run(lambda: COMMANDS[verb](_verb_args(verb, _long_only(before) + after)))


def sendmail_main() -> int:
    """Entry point of ``smtpmail-bridge-sendmail``: exactly ``send``."""
    _fast_exit(_run(lambda: cmd_send(parse_send(sys.argv[1:]))))
    return EX_SOFTWARE    # not reached


def console_main() -> int:
    """Entry point of the ``smtpmail-bridge`` script and ``python -m bridge``."""
    argv = sys.argv[1:]
    rc = main(argv)
    if os.path.basename(sys.argv[0]) == "sendmail" or split_verb(argv)[0] != "serve":
        _fast_exit(rc)
    return rc


def _fast_exit(rc: int) -> None:
    """Exit a one-shot verb without tearing down every imported module.

    By now the message is delivered or on disk, sockets are closed (the
    kernel closes the rest), the queue lock is the kernel's to release and
    spool files are already unlinked: only stdio needs flushing.  Saves
    about 10 ms per send.  Never used for ``serve``.
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        rc = rc or EX_SOFTWARE
    os._exit(rc)


def _run(fn: Callable[[], int]) -> int:
    try:
        return fn()
    except BridgeError as e:
        _err(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        return EX_SOFTWARE
