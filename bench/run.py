"""`make bench`: every scenario of issue 5 side by side, one table of medians.

Why one process runs them all: the contenders of one scenario take turns
inside each repetition (bridge, Emacs, smtp-source, msmtp ...), so a noisy
moment on a shared machine hits them alike and the ratios stay fair.
Everything talks to 127.0.0.1 only.  This prints; it never gates anything.

    python -m bench.run [--quick] [--only 1,3] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from bench import workload as W

REPO = Path(__file__).resolve().parent.parent
SINK = "/usr/sbin/smtp-sink"
SOURCE = "/usr/sbin/smtp-source"
GNU_TIME = "/usr/bin/time"
MSG_SIZE = 5 * 1024
BIG_SIZE = 50 * 1024 * 1024


# --- results -------------------------------------------------------------------

@dataclass
class Row:
    """One line of the table."""

    scenario: str
    what: str
    runs: int
    value: str
    detail: str = ""
    verdict: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, object] = field(default_factory=dict)

    def add(self, *args: object, **kw: object) -> None:
        self.rows.append(Row(*args, **kw))  # type: ignore[arg-type]
        r = self.rows[-1]
        print(f"  {r.scenario} | {r.what}: {r.value} {r.detail} {r.verdict}".rstrip(),
              file=sys.stderr, flush=True)

    def table(self) -> str:
        head = Row("scenario", "contender", 0, "median", "detail", "target")
        cols = [head] + self.rows
        w = [max(len(getattr(r, k)) for r in cols) for k in ("scenario", "what", "value", "detail")]
        lines = []
        for i, r in enumerate(cols):
            runs = "runs" if i == 0 else str(r.runs)
            lines.append(f"{r.scenario:<{w[0]}}  {r.what:<{w[1]}}  {runs:>4}  "
                         f"{r.value:>{w[2]}}  {r.detail:<{w[3]}}  {r.verdict}".rstrip())
            if i == 0:
                lines.append("-" * max(len(line) for line in lines))
        return "\n".join(lines)


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt_s(x: float) -> str:
    if x != x:
        return "n/a"
    if x >= 1:
        return f"{x:.2f} s"
    if x >= 0.001:
        return f"{x * 1000:.1f} ms"
    return f"{x * 1e6:.0f} us"


def verdict(ok: bool, text: str) -> str:
    return f"{text}: {'met' if ok else 'MISSED'}"


# --- plumbing --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    """Set-up only: poll until the server accepts, or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as s:
            s.recv(100)         # the greeting
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@contextlib.contextmanager
def smtp_sink(pipelining: bool = True) -> Iterator[int]:
    """Postfix's smtp-sink on a free loopback port (no AUTH announced)."""
    port = free_port()
    cmd = [SINK, "-a"]
    if not pipelining:
        cmd.append("-p")
    if os.geteuid() == 0:
        cmd += ["-u", "nobody"]
    cmd += [f"127.0.0.1:{port}", "256"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class Run:
    wall: float
    rc: int
    err: str


def timed(cmd: list[str], *, env: dict[str, str], stdin: Path | None = None,
          timeout: float = 600, cwd: Path | None = None) -> Run:
    """Wall time of one process, start-up included."""
    f = open(stdin, "rb") if stdin else subprocess.DEVNULL
    try:
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, stdin=f, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=env, timeout=timeout, cwd=cwd)
        except subprocess.TimeoutExpired as e:
            return Run(time.perf_counter() - t0, -1, (e.stderr or b"").decode(errors="replace"))
        return Run(time.perf_counter() - t0, p.returncode, p.stderr.decode(errors="replace"))
    finally:
        if stdin:
            f.close()  # type: ignore[union-attr]


def peak_rss_kb(cmd: list[str], *, env: dict[str, str], stdin: Path | None = None) -> tuple[int, Run]:
    """Peak RSS of one process (GNU time's %M, in KiB)."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as out:
        r = timed([GNU_TIME, "-f", "%M", "-o", out.name] + cmd, env=env, stdin=stdin)
        text = Path(out.name).read_text().strip().splitlines()
    return (int(text[-1]) if text and text[-1].isdigit() else -1), r


def check(run: Run, what: str) -> None:
    if run.rc != 0:
        raise RuntimeError(f"{what} failed (exit {run.rc}): {run.err.strip()[-2000:]}")


class Bench:
    """Shared state: temp dirs, programs, environment."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="smtpmail-bridge-bench."))
        self.home = self.tmp / "home"
        (self.home / ".emacs.d").mkdir(parents=True)
        (self.home / ".config").mkdir()
        self.bridge = args.bridge or shutil.which("smtpmail-bridge", path=str(Path(sys.executable).parent)) \
            or shutil.which("smtpmail-bridge")
        self.emacs = shutil.which(args.emacs)
        self.msmtp = shutil.which("msmtp")
        self.report = Report()
        self.msg = self.tmp / "message.eml"
        self.msg.write_bytes(W.message(MSG_SIZE, 0))
        self._templates: dict[int, Path] = {}
        self._n = 0

    def env(self, config: Path | None = None) -> dict[str, str]:
        # Bytecode is cached (as after a pip or Debian install) but outside
        # the checkout; PYTHONDONTWRITEBYTECODE would add ~25 ms per start.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SMTPMAIL_BRIDGE_")
               and k not in ("SMTPSERVER", "PYTHONDONTWRITEBYTECODE")}
        env.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"),
                   LANG="C.UTF-8", LC_ALL="C.UTF-8", PYTHONPYCACHEPREFIX=str(self.tmp / "pycache"),
                   PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}")
        if config is not None:
            env["SMTPMAIL_BRIDGE_CONFIG"] = str(config)
        return env

    def fresh(self, name: str) -> Path:
        self._n += 1
        return self.tmp / f"{name}-{self._n}"

    def template(self, n: int) -> Path:
        if n not in self._templates:
            old = os.umask(0o077)
            try:
                self._templates[n] = W.write_queue(self.tmp / f"template-{n}", n, MSG_SIZE)
            finally:
                os.umask(old)
        return self._templates[n]

    def queue_copy(self, n: int) -> Path:
        old = os.umask(0o077)
        try:
            return W.copy_queue(self.template(n), self.fresh(f"queue{n}"))
        finally:
            os.umask(old)

    def bridge_flush(self, port: int, n: int, timeout: float = 600) -> tuple[Run, int]:
        q = self.queue_copy(n)
        cfg = W.bridge_config(self.fresh("cfg.toml"), port, q)
        r = timed([self.bridge, "flush"], env=self.env(cfg), timeout=timeout)
        left = W.queue_left(q)
        if r.rc != -1:
            check(r, f"smtpmail-bridge flush N={n}")
            if left:
                raise RuntimeError(f"smtpmail-bridge flush left {left} of {n} queued")
        shutil.rmtree(q)
        return r, n - left

    def emacs_run(self, body: str, timeout: float = 900) -> tuple[Run, dict[str, list[float]]]:
        """Batch Emacs with HOME in the temp dir; MARK lines carry numbers back."""
        script = self.fresh("bench.el")
        script.write_text(EMACS_PRELUDE + body + "\n(kill-emacs 0)\n", encoding="utf-8")
        r = timed([self.emacs, "-Q", "--batch", "-L", str(REPO / "elisp"), "-l", str(script)],
                  env=self.env(), timeout=timeout, cwd=self.home)
        check(r, "emacs")
        marks: dict[str, list[float]] = {}
        for line in r.err.splitlines():
            if line.startswith("MARK "):
                _, key, value = line.split()
                marks.setdefault(key, []).append(float(value))
        return r, marks

    def emacs_flush(self, port: int, n: int) -> tuple[float, float]:
        """(seconds inside smtpmail-send-queued-mail, process wall)."""
        q = self.queue_copy(n)
        body = f"""
(setq smtpmail-smtp-server "127.0.0.1" smtpmail-smtp-service {port}
      smtpmail-stream-type 'plain smtpmail-queue-dir {el_str(str(q) + "/")})
(let ((t0 (float-time)))
  (smtpmail-send-queued-mail)
  (bench-mark "flush" (- (float-time) t0)))
"""
        r, marks = self.emacs_run(body)
        left = W.queue_left(q)
        if left:
            raise RuntimeError(f"Emacs smtpmail-send-queued-mail left {left} of {n} queued")
        shutil.rmtree(q)
        return marks["flush"][0], r.wall


def el_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


EMACS_PRELUDE = r"""
(require 'smtpmail)
(setq user-mail-address "alice@example.org" user-full-name "Alice Example"
      mail-aliases nil auth-source-do-cache nil smtpmail-debug-info nil
      message-log-max nil)
(defun bench-mark (key seconds)
  (princ (format "MARK %s %.6f\n" key seconds) #'external-debugging-output))
"""


# --- scenario 1: queue flush -----------------------------------------------------

def scenario_flush(b: Bench) -> None:
    a = b.args
    reps, emacs_reps = a.reps, a.emacs_reps
    n_main = a.n
    with smtp_sink() as port:
        src_msg = b.tmp / "source.eml"
        src_msg.write_bytes(W.message(MSG_SIZE, 0))
        bridge_t, emacs_t, emacs_wall, source_t, source_d_t = [], [], [], [], []
        for i in range(reps):
            r, _ = b.bridge_flush(port, n_main)
            bridge_t.append(r.wall)
            for flags, out in (([], source_t), (["-d"], source_d_t)):
                s = timed([SOURCE, *flags, "-m", str(n_main), "-F", str(src_msg),
                           "-f", W.SENDER, "-t", W.RECIPIENT, "-M", "localhost",
                           f"127.0.0.1:{port}"], env=b.env())
                check(s, "smtp-source")
                out.append(s.wall)
            if b.emacs and i < emacs_reps:
                inside, wall = b.emacs_flush(port, n_main)
                emacs_t.append(inside)
                emacs_wall.append(wall)
        br, em, so = med(bridge_t), med(emacs_t), med(source_t)
        sc = f"1 flush N={n_main} x 5 KB"
        b.report.add(sc, "smtpmail-bridge flush (process)", reps, fmt_s(br),
                     f"{fmt_s(br / n_main)}/msg")
        if emacs_t:
            b.report.add(sc, "Emacs smtpmail-send-queued-mail (inside)", len(emacs_t), fmt_s(em),
                         f"{fmt_s(em / n_main)}/msg; Emacs/bridge {em / br:.1f}x",
                         verdict(em / br >= 20, "bridge >= 20x faster"))
        else:
            b.report.add(sc, "Emacs smtpmail-send-queued-mail", 0, "n/a", "emacs not found")
        b.report.add(sc, "smtp-source (1 connection/msg)", reps, fmt_s(so),
                     f"{fmt_s(so / n_main)}/msg; bridge/source {br / so:.2f}x",
                     verdict(br / so <= 2, "bridge <= 2x smtp-source"))
        sd = med(source_d_t)
        b.report.add(sc, "smtp-source -d (1 connection)", reps, fmt_s(sd),
                     f"{fmt_s(sd / n_main)}/msg; bridge/source {br / sd:.2f}x")
        b.report.raw["flush"] = dict(bridge=bridge_t, emacs_inside=emacs_t, emacs_wall=emacs_wall,
                                     smtp_source=source_t, smtp_source_d=source_d_t)

        # Growth with N, bridge alone.
        per: dict[int, float] = {n_main: br / n_main}
        for n in a.growth:
            if n == n_main:
                continue
            times, note = [], ""
            count = reps if n <= n_main else a.big_reps
            for _ in range(count):
                r, sent = b.bridge_flush(port, n, timeout=a.flush_timeout)
                if r.rc == -1:
                    note = (f"timed out after {fmt_s(r.wall)} with {sent} of {n} sent "
                            f"({fmt_s(r.wall / max(sent, 1))}/msg so far)")
                    times = []
                    break
                times.append(r.wall)
            if times:
                per[n] = med(times) / n
                b.report.add(f"1 flush growth N={n}", "smtpmail-bridge flush", len(times),
                             fmt_s(med(times)), f"{fmt_s(per[n])}/msg")
            else:
                b.report.add(f"1 flush growth N={n}", "smtpmail-bridge flush", 1, "timeout", note,
                             "linear: MISSED")
                per[n] = float("inf")
            b.report.raw[f"flush_{n}"] = times
        # Marginal cost per message between sizes: start-up cancels out,
        # so 1.0 means linear and an O(N^2) index rewrite shows as ~10x.
        ns = sorted(per)
        if len(ns) >= 3 and all(per[n] != float("inf") for n in ns):
            t = {n: per[n] * n for n in ns}
            lo = (t[ns[1]] - t[ns[0]]) / (ns[1] - ns[0])
            hi = (t[ns[2]] - t[ns[1]]) / (ns[2] - ns[1])
            b.report.add("1 flush growth", f"marginal cost/msg N={ns[1]}..{ns[2]} vs {ns[0]}..{ns[1]}",
                         0, f"{hi / lo:.2f}x", f"{fmt_s(hi)} vs {fmt_s(lo)} (1.0 = linear)",
                         verdict(hi / lo < 1.5, "linear (< 1.5x)"))


# --- scenario 2: Emacs blocked per send ---------------------------------------------

def emacs_compose_defun() -> str:
    data = W.message(MSG_SIZE, 0).decode()
    head, _, body = data.partition("\n\n")
    return f"""
(defun bench-compose ()
  (with-current-buffer (get-buffer-create "*bench mail*")
    (erase-buffer) (mail-mode)
    (insert {el_str(head)} "\\n" mail-header-separator "\\n" {el_str(body)})
    (current-buffer)))
(defun bench-time (fn)
  (with-current-buffer (bench-compose)
    (let ((t0 (float-time))) (funcall fn) (- (float-time) t0))))
"""


def scenario_blocked(b: Bench) -> None:
    from tests.smtpserver import SMTPTestServer
    if not b.emacs:
        b.report.add("2 Emacs blocked", "all", 0, "n/a", "emacs not found")
        return
    for delay in b.args.delays:
        reps = b.args.blocked_reps if delay < 0.5 else max(1, b.args.blocked_reps - 2)
        with SMTPTestServer(delay=delay) as srv:
            body = emacs_compose_defun() + f"""
(require 'smtpmail-bridge)
(setq smtpmail-smtp-server "127.0.0.1" smtpmail-smtp-service {srv.port}
      smtpmail-stream-type 'plain
      smtpmail-queue-dir {el_str(str(b.fresh("queue")) + "/")}
      smtpmail-bridge-program (list {el_str(b.bridge)} "serve"))
(bench-time #'smtpmail-send-it)                 ; warm-up: loads what it autoloads
(dotimes (_ {reps})
  (bench-mark "smtpmail" (bench-time #'smtpmail-send-it)))
(dotimes (_ {reps})
  (when (smtpmail-bridge--live-p) (delete-process smtpmail-bridge--process))
  (bench-mark "cold" (bench-time #'smtpmail-bridge-send-it))
  (unless (smtpmail-bridge-wait 120) (error "bridge send did not finish"))
  (bench-mark "warm" (bench-time #'smtpmail-bridge-send-it))
  (unless (smtpmail-bridge-wait 120) (error "bridge send did not finish")))
"""
            _, marks = b.emacs_run(body)
            expected = 1 + 3 * reps
            srv.wait_for_messages(expected, timeout=60)
            got = len(srv.messages)
            if got != expected:
                raise RuntimeError(f"delay {delay}: server got {got} of {expected} messages")
        sc = f"2 Emacs blocked, delay {delay:g} s"
        em, warm, cold = med(marks["smtpmail"]), med(marks["warm"]), med(marks["cold"])
        b.report.add(sc, "smtpmail-send-it", reps, fmt_s(em))
        b.report.add(sc, "smtpmail-bridge-send-it, backend running", reps, fmt_s(warm),
                     f"{em / warm:.0f}x less blocking", verdict(warm < 0.010, "< 10 ms"))
        b.report.add(sc, "smtpmail-bridge-send-it, first (starts backend)", reps, fmt_s(cold),
                     "", verdict(cold < 0.010, "< 10 ms"))
        b.report.raw[f"blocked_{delay}"] = marks


# --- scenario 3: one message from the shell -----------------------------------------

def scenario_shell(b: Bench) -> None:
    reps = b.args.shell_reps
    with smtp_sink() as port:
        cfg = W.bridge_config(b.fresh("cfg.toml"), port, b.fresh("queue"))
        env = b.env(cfg)
        rc = W.msmtprc(b.fresh("msmtprc"), port) if b.msmtp else None
        cmds: dict[str, tuple[list[str], Path | None]] = {
            "smtpmail-bridge send": ([b.bridge, "send", W.RECIPIENT], b.msg),
            "smtpmail-bridge --version": ([b.bridge, "--version"], None),
            "python3 -c pass (interpreter floor)": ([sys.executable, "-c", "pass"], None),
            "python3 -S -c pass (no site-packages)": ([sys.executable, "-S", "-c", "pass"], None),
        }
        if rc:
            cmds["msmtp"] = ([b.msmtp, "-C", str(rc), W.RECIPIENT], b.msg)
            cmds["msmtp --version"] = ([b.msmtp, "--version"], None)
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for name, (cmd, stdin) in cmds.items():        # warm the page cache
            check(timed(cmd, env=env, stdin=stdin), name)
        for _ in range(reps):
            for name, (cmd, stdin) in cmds.items():
                r = timed(cmd, env=env, stdin=stdin)
                check(r, name)
                times[name].append(r.wall)
    sc = "3 one message, shell"
    send = med(times["smtpmail-bridge send"])
    if rc:
        ms = med(times["msmtp"])
        b.report.add(sc, "msmtp", reps, fmt_s(ms))
        b.report.add(sc, "smtpmail-bridge send", reps, fmt_s(send), f"bridge/msmtp {send / ms:.2f}x",
                     verdict(send <= ms, "no slower than msmtp"))
    else:
        b.report.add(sc, "smtpmail-bridge send", reps, fmt_s(send), "msmtp not found")
    for name in ("smtpmail-bridge --version", "python3 -c pass (interpreter floor)",
                 "python3 -S -c pass (no site-packages)", "msmtp --version"):
        if name in times:
            b.report.add("3 start-up", name, reps, fmt_s(med(times[name])))
    b.report.raw["shell"] = times


# --- scenario 4: round trips ------------------------------------------------------

def scenario_round_trips(b: Bench) -> None:
    from tests.smtpserver import SMTPTestServer

    def settle(srv: SMTPTestServer, sessions: int) -> list[int]:
        srv.wait_until(lambda s: len(s.sessions) == sessions
                       and all(x.closed for x in s.sessions.values()), timeout=30)
        return [srv.round_trips(i) for i in sorted(srv.sessions)]

    extra = b.args.rt_messages
    for pipelining in (True, False):
        label = "PIPELINING" if pipelining else "no PIPELINING"
        sc = f"4 round trips, {label}"
        with SMTPTestServer(pipelining=pipelining) as srv:
            cfg = W.bridge_config(b.fresh("cfg.toml"), srv.port, b.fresh("queue"))
            check(timed([b.bridge, "send", W.RECIPIENT], env=b.env(cfg), stdin=b.msg), "send")
            one = settle(srv, 1)[0]
        b.report.add(sc, "smtpmail-bridge send, 1 message", 1, str(one), "round trips/session")
        counts = []
        for n in (1, 1 + extra):
            with SMTPTestServer(pipelining=pipelining) as srv:
                b.bridge_flush(srv.port, n)
                rts = settle(srv, 1)
                counts.append(rts[0])
        marginal = (counts[1] - counts[0]) / extra
        b.report.add(sc, f"smtpmail-bridge flush, per msg after the 1st", 1, f"{marginal:.2f}",
                     f"1 msg: {counts[0]}, {1 + extra} msgs: {counts[1]} in one session",
                     verdict(marginal <= 2, "<= 2") if pipelining else "")
        if b.emacs:
            with SMTPTestServer(pipelining=pipelining) as srv:
                b.emacs_flush(srv.port, 3)
                rts = settle(srv, 3)
            b.report.add(sc, "Emacs smtpmail (per message, 1 session each)", 3,
                         f"{med([float(x) for x in rts]):g}")
        b.report.raw[f"round_trips_{pipelining}"] = dict(send=one, flush=counts)


# --- scenario 5: memory ------------------------------------------------------------

def scenario_memory(b: Bench) -> None:
    if not Path(GNU_TIME).exists():
        b.report.add("5 memory", "all", 0, "n/a", f"{GNU_TIME} not found")
        return
    reps = b.args.mem_reps
    mb = BIG_SIZE / 1024 / 1024
    big = b.fresh("big.eml")
    big.write_bytes(W.big_message(BIG_SIZE))
    with smtp_sink() as port:
        cfg = W.bridge_config(b.fresh("cfg.toml"), port, b.fresh("queue"))
        env = b.env(cfg)
        rss: dict[str, list[int]] = {"send": [], "flush": [], "baseline": [], "msmtp": []}
        for _ in range(reps):
            kb, r = peak_rss_kb([b.bridge, "send", W.RECIPIENT], env=env, stdin=big)
            check(r, "send 50 MB")
            rss["send"].append(kb)
            q = b.fresh("bigqueue")
            q.mkdir(mode=0o700)
            (q / f"{W.STAMP}_1").write_bytes(big.read_bytes())
            (q / f"{W.STAMP}_1.el").write_bytes(W.el_text([W.RECIPIENT]))
            (q / "index").write_text(f"{q / (W.STAMP + '_1')}\n")
            for p in q.iterdir():
                p.chmod(0o600)
            qcfg = W.bridge_config(b.fresh("cfg.toml"), port, q)
            kb, r = peak_rss_kb([b.bridge, "flush"], env=b.env(qcfg))
            check(r, "flush 50 MB")
            if W.queue_left(q):
                raise RuntimeError("flush of the 50 MB message left it queued")
            rss["flush"].append(kb)
            kb, _ = peak_rss_kb([b.bridge, "--version"], env=env)
            rss["baseline"].append(kb)
            if b.msmtp:
                rc = W.msmtprc(b.fresh("msmtprc"), port)
                kb, r = peak_rss_kb([b.msmtp, "-C", str(rc), W.RECIPIENT], env=env, stdin=big)
                check(r, "msmtp 50 MB")
                rss["msmtp"].append(kb)
            shutil.rmtree(q)
    sc = f"5 peak RSS, {mb:.0f} MB message"
    for key, what in (("send", "smtpmail-bridge send"), ("flush", "smtpmail-bridge flush")):
        m = med([float(x) for x in rss[key]]) / 1024
        b.report.add(sc, what, reps, f"{m:.1f} MB", f"{m / mb:.2f}x message size",
                     verdict(m < 1.5 * mb, "< 1.5x"))
    b.report.add(sc, "smtpmail-bridge --version (floor)", reps,
                 f"{med([float(x) for x in rss['baseline']]) / 1024:.1f} MB")
    if rss["msmtp"]:
        b.report.add(sc, "msmtp (for reference)", reps,
                     f"{med([float(x) for x in rss['msmtp']]) / 1024:.1f} MB")
    b.report.raw["rss_kb"] = rss


# --- main -------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[[Bench], None]] = {
    "1": scenario_flush, "2": scenario_blocked, "3": scenario_shell,
    "4": scenario_round_trips, "5": scenario_memory,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="1,2,3,4,5", help="comma-separated scenario numbers")
    p.add_argument("--quick", action="store_true", help="small N, one repetition (smoke test)")
    p.add_argument("--json", type=Path, help="also write the raw numbers here")
    p.add_argument("--bridge", help="smtpmail-bridge executable (default: next to this python)")
    p.add_argument("--emacs", default=os.environ.get("EMACS", "emacs"))
    a = p.parse_args(argv)
    a.n, a.growth, a.reps, a.emacs_reps, a.big_reps = 1000, [100, 10000], 5, 3, 3
    a.flush_timeout = 120.0
    a.delays, a.blocked_reps, a.shell_reps, a.rt_messages, a.mem_reps = [0.0, 0.1, 0.5], 5, 20, 20, 3
    if a.quick:
        a.n, a.growth, a.reps, a.emacs_reps, a.big_reps = 100, [10, 300], 1, 1, 1
        a.flush_timeout = 60.0
        a.delays, a.blocked_reps, a.shell_reps, a.rt_messages, a.mem_reps = [0.0, 0.1], 1, 3, 5, 1
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    b = Bench(a)
    missing = [name for name, ok in (("smtp-sink", Path(SINK).exists()),
                                      ("smtp-source", Path(SOURCE).exists()),
                                      ("smtpmail-bridge", bool(b.bridge))) if not ok]
    if missing:
        print(f"bench: missing {', '.join(missing)} (run `make bench` as root on Debian "
              "to install them)", file=sys.stderr)
        return 1
    started = time.monotonic()
    # Fill the bytecode cache so no contender pays for compiling.
    subprocess.run([sys.executable, "-c", "import bridge.cli, bridge.delivery, bridge.smtp, "
                    "bridge.queue, bridge.serve, bridge.auth, bridge.config, bridge.message"],
                   env=b.env(), check=True, cwd=REPO)
    print(f"bench: {b.bridge}; emacs {b.emacs or 'missing'}; msmtp {b.msmtp or 'missing'}; "
          f"{os.cpu_count()} CPUs; temp {b.tmp}", file=sys.stderr)
    try:
        for key in a.only.split(","):
            t0 = time.monotonic()
            print(f"bench: scenario {key} ...", file=sys.stderr, flush=True)
            SCENARIOS[key.strip()](b)
            print(f"bench: scenario {key} took {time.monotonic() - t0:.0f} s", file=sys.stderr)
    finally:
        shutil.rmtree(b.tmp, ignore_errors=True)
    print()
    print(f"smtpmail-bridge benchmarks: medians, loopback 127.0.0.1, {os.cpu_count()} CPUs, "
          f"{time.monotonic() - started:.0f} s in all")
    print(b.report.table())
    if a.json:
        a.json.write_text(json.dumps({"rows": [r.__dict__ for r in b.report.rows],
                                      "raw": b.report.raw}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
