"""bridge.queue against real files: Emacs's fixtures, our writes, races, Emacs itself."""

from __future__ import annotations

import base64
import io
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, strategies as st
from sexpdata import Symbol

from bridge import errors
from bridge.config import Settings
from bridge.queue import (IndexBatch, 
    ORPHAN_GRACE_SECONDS, Queue, UnsafeEl, el_pairs, format_el, parse_el,
    parse_index, prin1, read_forms, to_queue_lines,
)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "emacs-queue" / "queued-mail"
EMACS_DIR = "/home/user/Mail/queued-mail/"
FIXED_TIME = 1796334680.0          # 2026-12-03 21:51:20 UTC
FORK = multiprocessing.get_context("fork")

EXPECTED_FIXTURE = {
    "2026-12-03_22:51:20_1": (["eve@example.com", "dave@example.com",
                               "carol@example.com", "bob@example.net"], {}),
    "2026-12-03_22:51:20_2": (["bob@example.net"],
                              {"server": "localhost", "stream_type": "plain",
                               "service": 52526, "user": 'John "Q" Public'}),
    "2026-12-03_22:51:20_3": (["juergen@example.de"], {}),
    "2026-12-03_22:51:20_4": (["juergen@example.de"], {}),
    "2026-12-03_22:51:20_5": (["ivan@example.com", "heidi@example.com",
                               "grace@example.org", "frank@example.net"], {}),
    "2026-12-03_22:51:20_6": (["bob@example.net"],
                              {"server": "127.0.0.1", "stream_type": None,
                               "service": "52527", "user": "Zoë \\ back\\slash"}),
    "2026-12-03_22:51:20_7": (["mallory@example.com", "carol@example.com",
                               "bob@example.net", "john@example.com",
                               "bob@example.net"], {}),
}


def emacs_queue(tmp_path: Path) -> Path:
    """A writable copy of the real Emacs queue, index pointing at the copy."""
    qdir = tmp_path / "queued-mail"
    shutil.copytree(FIXTURES, qdir)
    qdir.chmod(0o755)
    for f in qdir.iterdir():
        f.chmod(0o644)
    index = qdir / "index"
    index.write_bytes(index.read_bytes().replace(EMACS_DIR.encode(), f"{qdir}/".encode()))
    return qdir


def index_lines(q: Queue) -> list[str]:
    return q.index_path.read_text().splitlines()


def make_old(*paths: Path) -> None:
    old = FIXED_TIME - 10 * ORPHAN_GRACE_SECONDS
    for p in paths:
        os.utime(p, (old, old))


MSG = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: t\r\n\r\nbody\r\n.\r\nlast"


# --------------------------------------------------------------------------
# Reading Emacs's own queue


def test_scan_reads_every_emacs_fixture_entry(tmp_path):
    q = Queue(emacs_queue(tmp_path))
    scan = q.scan()
    assert [e.id for e in scan.entries] == list(EXPECTED_FIXTURE)
    assert scan.unsafe == [] and scan.restored == []
    for e in scan.entries:
        recipients, stored = EXPECTED_FIXTURE[e.id]
        assert e.recipients == recipients
        assert e.stored == stored
        assert e.sender is None and e.state == "queued" and e.attempts == 0
        assert e.size == (FIXTURES / e.id).stat().st_size
        assert (e.date.year, e.date.hour, e.date.minute) == (2026, 22, 51)
    by_id = {e.id: e for e in scan.entries}
    assert type(by_id["2026-12-03_22:51:20_2"].stored["service"]) is int
    assert type(by_id["2026-12-03_22:51:20_6"].stored["service"]) is str
    assert by_id["2026-12-03_22:51:20_3"].headers().startswith(b"Date: Thu, 03 Dec 2026")
    assert b"\n\n" not in by_id["2026-12-03_22:51:20_3"].headers()
    # Emacs writes 0755/0644: reported, not fatal.
    assert any("accessible by group/others (mode 0755)" in p for p in scan.problems)
    assert any("readable by group/others" in p for p in scan.problems)


@pytest.mark.parametrize("el", sorted(FIXTURES.glob("*.el")), ids=lambda p: p.name)
def test_format_el_reproduces_fixture_byte_for_byte(el):
    raw = el.read_bytes()
    contents = parse_el(raw)
    stored = contents.stored or None
    assert format_el(el_pairs(contents.recipients, stored, contents.sender)) == raw


def test_prin1_default_rules():
    assert prin1(None) == "nil" and prin1([]) == "nil"
    assert prin1(["a", "b"]) == '("a" "b")'
    assert prin1('x"y\\z\n\t\x7fé') == '"x\\"y\\\\z\n\t\x7fé"'
    assert prin1(52526) == "52526"
    assert prin1(Symbol("plain")) == "plain"
    assert prin1(Symbol('we ird"sym')) == 'we\\ ird\\"sym'
    assert prin1(Symbol("1.5")) == "\\1\\.5"
    with pytest.raises(TypeError):
        prin1(1.5)


# --------------------------------------------------------------------------
# Writing


def test_add_round_trip(tmp_path):
    q = Queue(tmp_path / "q", clock=lambda: FIXED_TIME)
    stored = {"server": "smtp.example.org", "stream_type": "starttls",
              "service": 587, "user": 'Zoë "x" \\'}
    entry = q.add(MSG, ["b@example.net", "c@example.net"], stored=stored,
                  sender="bounce@example.org")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d:\d\d:\d\d_b\d+-\d+", entry.id)
    assert entry.data_path.read_bytes() == (
        b"From: a@example.org\nTo: b@example.net\nSubject: t\n\nbody\n.\nlast\n")
    assert entry.el_path.read_bytes() == (
        '(setq      smtpmail-recipient-address-list ("b@example.net" "c@example.net")\n'
        '     smtpmail-smtp-server "smtp.example.org"\n'
        "     smtpmail-stream-type starttls\n"
        "     smtpmail-smtp-service 587\n"
        '     smtpmail-smtp-user "Zoë \\"x\\" \\\\"\n'
        '     smtpmail-bridge-envelope-sender "bounce@example.org"\n'
        ")\n").encode()
    assert q.index_path.read_bytes() == str(entry.data_path).encode() + b"\n"
    scan = q.scan()
    assert scan.problems == [] and scan.unsafe == []
    [got] = scan.entries
    assert (got.id, got.recipients, got.stored, got.sender, got.size) == (
        entry.id, entry.recipients, stored, "bounce@example.org", entry.size)
    with q.open_data(got) as f:
        assert f.read() == entry.data_path.read_bytes()


def test_add_without_stored_writes_only_recipients(tmp_path):
    q = Queue(tmp_path / "q")
    e = q.add(b"Subject: x\n\nbody\n", [])
    assert e.el_path.read_bytes() == b"(setq      smtpmail-recipient-address-list nil\n)\n"
    assert q.scan().entries[0].recipients == []


def test_add_rejects_line_breaks_in_addresses(tmp_path):
    q = Queue(tmp_path / "q")
    with pytest.raises(errors.MessageError):
        q.add(MSG, ["a@example.org\r\nRCPT TO:<x@y>"])
    with pytest.raises(errors.MessageError):
        q.add(MSG, ["a@example.org"], sender="x\n@y")
    assert not (tmp_path / "q" / "index").exists()


def test_add_streams_path_and_file_objects(tmp_path):
    # 5 MB with CRLF pairs straddling the 1 MiB chunk boundaries.
    line = b"x" * 1023 + b"\r\n"
    big = b"Subject: big\r\n\r\n" + line * 5000
    src = tmp_path / "big.eml"
    src.write_bytes(big)
    q = Queue(tmp_path / "q")
    expected = big.replace(b"\r\n", b"\n")
    from_path = q.add(src, ["a@example.net"])
    from_file = q.add(io.BytesIO(big), ["a@example.net"])
    from_bytes = q.add(memoryview(big), ["a@example.net"])
    for e in (from_path, from_file, from_bytes):
        assert e.data_path.read_bytes() == expected
    with pytest.raises(TypeError):
        q.add(io.StringIO("text"), ["a@example.net"])


def _reference_lines(data: bytes) -> bytes:
    out = data.replace(b"\r\n", b"\n")
    if out.endswith(b"\r"):
        out = out[:-1] + b"\n"
    if out and not out.endswith(b"\n"):
        out += b"\n"
    return out


@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=6))
def test_to_queue_lines_independent_of_chunking(data, cuts):
    cuts = sorted(set(c for c in cuts if c <= len(data)))
    chunks = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
    assert b"".join(to_queue_lines(chunks)) == _reference_lines(data)


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\0"),
                min_size=1, max_size=20)


@given(st.lists(_text, max_size=5), st.one_of(st.none(), _text), st.one_of(st.none(), _text),
       st.one_of(st.integers(1, 65535), _text), st.sampled_from([None, "plain", "ssl", "starttls"]),
       st.one_of(st.none(), _text))
def test_el_print_parse_round_trip(recipients, server, user, service, stream_type, sender):
    stored = {"server": server, "user": user, "service": service, "stream_type": stream_type}
    contents = parse_el(format_el(el_pairs(recipients, stored, sender)))
    assert contents.recipients == recipients
    assert contents.stored == stored
    assert contents.sender == sender


def test_new_queue_dir_and_files_are_private(tmp_path):
    old_umask = os.umask(0)
    try:
        q = Queue(tmp_path / "a" / "b" / "queue")
        e = q.add(MSG, ["x@example.net"])
        q.set_state(e, "deferred", error="451 later")
    finally:
        os.umask(old_umask)
    for d in (tmp_path / "a", tmp_path / "a" / "b", q.directory):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    files = [e.data_path, e.el_path, q.index_path, e.state_path]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert q.scan().problems == []


def test_names_unique_many_adds_in_one_second(tmp_path):
    q = Queue(tmp_path / "q", clock=lambda: FIXED_TIME)
    ids = [q.add(b"S: x\n\nb\n", ["a@example.net"]).id for _ in range(300)]
    assert len(set(ids)) == 300
    assert len({i[:19] for i in ids}) == 1            # really the same second
    assert [Path(l).name for l in index_lines(q)] == ids


def _add_many(directory: str, n: int, start) -> None:
    q = Queue(directory, clock=lambda: FIXED_TIME)
    start.wait()
    for i in range(n):
        q.add(f"Subject: {os.getpid()} {i}\n\nb\n".encode(), ["a@example.net"])


def test_names_unique_across_processes(tmp_path):
    qdir = str(tmp_path / "q")
    Queue(qdir)._ensure_dir()
    start = FORK.Event()
    procs = [FORK.Process(target=_add_many, args=(qdir, 150, start)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    scan = Queue(qdir).scan()
    assert len(scan.entries) == 300 and scan.problems == []
    assert len({e.id for e in scan.entries}) == 300
    assert len(index_lines(Queue(qdir))) == 300
    subjects = {e.headers() for e in scan.entries}
    assert len(subjects) == 300                       # nothing overwritten


# --------------------------------------------------------------------------
# Crash order, index oddities, orphans


def test_crash_before_index_line_leaves_orphan_that_scan_restores(tmp_path):
    q = Queue(tmp_path / "q", clock=lambda: FIXED_TIME)
    kept = q.add(MSG, ["a@example.net"])
    lost = q.add(MSG, ["b@example.net"])
    # Simulate a crash after the files were renamed into place, or Emacs
    # rewriting the index over our append: the line is gone.
    q.index_path.write_text(str(kept.data_path) + "\n")
    make_old(lost.data_path, lost.el_path)
    scan = q.scan()
    assert scan.restored == [lost.id]
    assert [e.id for e in scan.entries] == [kept.id, lost.id]
    assert index_lines(q) == [str(kept.data_path), str(lost.data_path)]
    again = q.scan()
    assert again.restored == [] and again.problems == []


def test_fresh_orphan_is_left_for_its_writer(tmp_path):
    q = Queue(tmp_path / "q", clock=lambda: FIXED_TIME)
    e = q.add(MSG, ["a@example.net"])
    q.index_path.write_bytes(b"")
    os.utime(e.data_path, (FIXED_TIME, FIXED_TIME))
    os.utime(e.el_path, (FIXED_TIME, FIXED_TIME))
    scan = q.scan()
    assert scan.entries == [] and scan.restored == []
    assert any("left for its writer" in p for p in scan.problems)


def test_unsafe_orphan_and_half_orphans_are_not_restored(tmp_path):
    q = Queue(tmp_path / "q", clock=lambda: FIXED_TIME)
    q._ensure_dir()
    d = q.directory
    (d / "2026-12-03_22:51:20_1").write_bytes(MSG)
    (d / "2026-12-03_22:51:20_1.el").write_text('(shell-command "true")')
    (d / "2026-12-03_22:51:20_2").write_bytes(MSG)          # no .el
    (d / "2026-12-03_22:51:20_3.el").write_text(             # no data
        '(setq      smtpmail-recipient-address-list ("a@b.c")\n)\n')
    make_old(*d.iterdir())
    scan = q.scan()
    assert scan.restored == [] and scan.entries == []
    text = "\n".join(scan.problems)
    assert "_1 is not in the index and its .el is unsafe" in text
    assert "_2 has no .el file" in text
    assert "_3.el has no data file" in text
    assert not q.index_path.exists() or q.index_path.read_bytes() == b""


def test_index_line_without_files_is_reported_skipped_and_compacted(tmp_path):
    q = Queue(tmp_path / "q")
    e = q.add(MSG, ["a@example.net"])
    ghost = q.directory / "2026-12-03_22:51:20_9"
    with open(q.index_path, "a") as f:
        f.write(f"{ghost}\n")
    e2 = q.add(MSG, ["b@example.net"])
    half = q.add(MSG, ["c@example.net"])
    half.el_path.unlink()
    scan = q.scan()
    assert [x.id for x in scan.entries] == [e.id, e2.id]
    assert any("_9 has no files" in p for p in scan.problems)
    assert any(f"{half.id} has no .el file" in p for p in scan.problems)
    q.compact()
    assert index_lines(q) == [str(e.data_path), str(e2.data_path), str(half.data_path)]


def test_index_oddities_are_handled_and_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    q = Queue(tmp_path / "q")
    a, b, c, d = (q.add(MSG, [f"{n}@example.net"]) for n in "abcd")
    raw = (f"{a.data_path}\r\n"          # CRLF
           "\n"                          # blank line
           f"{a.data_path}\r\n"          # duplicate
           f"{b.id}\n"                   # relative
           f"~/q/{c.id}\n"               # ~ path
           f"/somewhere/else/{c.id}\n"   # another directory
           f"{d.data_path}")             # no final LF
    q.index_path.write_bytes(raw.encode())
    scan = q.scan()
    assert [e.id for e in scan.entries] == [a.id, b.id, c.id, d.id]
    text = "\n".join(scan.problems)
    for needle in ("CRLF", "line 2 is empty", "listed twice", "relative path",
                   "~ path", "not in the queue directory", "no final newline"):
        assert needle in text, needle
    assert scan.restored == []
    # An append after a last line without LF must not glue two paths.
    e = q.add(MSG, ["e@example.net"])
    assert q.index_path.read_bytes().endswith(f"{d.data_path}\n{e.data_path}\n".encode())
    q.compact()
    assert index_lines(q) == [str(a.data_path), str(b.data_path), str(c.data_path),
                              f"/somewhere/else/{c.id}", str(d.data_path), str(e.data_path)]


def test_parse_index_is_pure_and_total():
    lines = parse_index(b"/a\r\n\n/b")
    assert [(l.text, l.notes) for l in lines] == [
        ("/a", ["CRLF line end"]), ("", []), ("/b", ["no final newline"])]
    assert parse_index(b"") == []


def test_same_second_writers_are_warned_about(tmp_path):
    qdir = emacs_queue(tmp_path)
    q = Queue(qdir, clock=lambda: FIXED_TIME)
    e = q.add(MSG, ["a@example.net"])
    # Rename ours into the fixtures' second, as if both wrote at 22:51:20.
    new_id = "2026-12-03_22:51:20_b1-1"
    for suffix in ("", ".el"):
        os.rename(str(e.data_path) + suffix, str(qdir / new_id) + suffix)
    q.index_path.write_bytes(q.index_path.read_bytes().replace(e.id.encode(), new_id.encode()))
    scan = q.scan()
    assert any("Emacs and the bridge both queued mail at 2026-12-03_22:51:20" in p
               for p in scan.problems)


# --------------------------------------------------------------------------
# Unsafe .el files


UNSAFE = [
    ('(progn (setq smtpmail-recipient-address-list (list "x@example.com")))', "not a (setq"),
    ('(setq smtpmail-recipient-address-list (list "x@example.com"))', "function call"),
    ('(setq smtpmail-recipient-address-list `("x@example.com"))', "backquote"),
    ('(setq smtpmail-recipient-address-list #.(shell-command "true"))', "# read syntax"),
    ('(setq smtpmail-recipient-address-list ("a@b.c") smtpmail-smtp-service ?a)', "character syntax"),
    ('(setq smtpmail-recipient-address-list ("a@b.c") user-mail-address "x@y.z")', "unknown variable user-mail-address"),
    ('(setq smtpmail-recipient-address-list ("a@b.c") smtpmail-debug-info t)', "unknown variable smtpmail-debug-info"),
    ('(setq smtpmail-recipient-address-list "z@example.com" smtpmail-smtp-user)', "odd number"),
    ('(setq smtpmail-recipient-address-list "z@example.com")', "a string, not a list"),
    ('(setq smtpmail-recipient-address-list (1 2))', "not a string"),
    ('(setq smtpmail-recipient-address-list ("a@b.c") smtpmail-smtp-service 5.5)', "not an integer or string"),
    ('(setq smtpmail-recipient-address-list ("a@b.c") smtpmail-smtp-service foo)', "not an integer or string"),
    ('(setq smtpmail-recipient-address-list ("a@b.c") smtpmail-smtp-server 25)', "not a string or nil"),
    ('(setq smtpmail-recipient-address-list ("a@b.c") smtpmail-stream-type "ssl")', "not one of"),
    ('(setq smtpmail-recipient-address-list ("a@b.c") smtpmail-stream-type evil)', "not one of"),
    ('(setq smtpmail-recipient-address-list ("a@b.c")) (shell-command "true")', "more than one"),
    ('(setq smtpmail-recipient-address-list ("a@b.c")', "unbalanced"),
    ('(setq smtpmail-recipient-address-list ("a@b.c")))', "unbalanced"),
    ('(setq smtpmail-recipient-address-list ("a@b.c', "unterminated string"),
    ('(setq smtpmail-recipient-address-list ("a@b.c" . "d@e.f"))', "dotted pair"),
    ('(setq smtpmail-recipient-address-list ["a@b.c"])', "not a list"),
    ('(setq smtpmail-recipient-address-list ("a@b.c\nRCPT TO:<x@y>"))', "line break"),
    ('(setq smtpmail-recipient-address-list ("a@b.c") smtpmail-recipient-address-list nil)', "set twice"),
    ("(setq)", "without arguments"),
    ("", "no expression"),
    ('(setq smtpmail-recipient-address-list ("\\M-a"))', "unsupported escape"),
    ("(" * 5000 + ")" * 5000, "nested too deeply"),
]


@pytest.mark.parametrize("text,reason", UNSAFE, ids=[r for _, r in UNSAFE])
def test_unsafe_el_is_reported_untouched_and_skipped(tmp_path, text, reason):
    q = Queue(tmp_path / "q")
    good = q.add(MSG, ["a@example.net"])
    bad = q.add(MSG, ["b@example.net"])
    bad.el_path.write_text(text)
    before = {p.name: p.read_bytes() for p in q.directory.iterdir() if not p.name.startswith(".")}
    scan = q.scan()
    assert [e.id for e in scan.entries] == [good.id]
    [unsafe] = scan.unsafe
    assert unsafe.id == bad.id and reason in unsafe.reason
    after = {p.name: p.read_bytes() for p in q.directory.iterdir() if not p.name.startswith(".")}
    assert after == before
    with pytest.raises(errors.QueueError):
        q.find(bad.id)
    assert q.find(bad.id, include_unsafe=True).reason == unsafe.reason


def test_el_whose_evaluation_would_create_a_marker_is_never_run(tmp_path):
    marker = tmp_path / "marker"
    q = Queue(tmp_path / "q")
    for code in (f'(progn (with-temp-file "{marker}" (insert "ran")))',
                 f'(setq smtpmail-recipient-address-list (shell-command "touch {marker}"))',
                 f'(setq smtpmail-recipient-address-list '
                 f'(progn (with-temp-file "{marker}" (insert "x")) (list "a@b.c")))'):
        e = q.add(MSG, ["a@example.net"])
        e.el_path.write_text(code)
    scan = q.scan()
    assert scan.entries == [] and len(scan.unsafe) == 3
    assert not marker.exists()


@pytest.mark.parametrize("text", [
    "(setq smtpmail-recipient-address-list '(\"x@example.com\"))",
    "(setq smtpmail-recipient-address-list (quote (\"x@example.com\")))",
])
def test_old_quoted_format_is_read_as_the_list_and_noted(tmp_path, text):
    contents = parse_el(text.encode())
    assert contents.recipients == ["x@example.com"]
    assert any("Emacs 24-27 quoted format" in n for n in contents.notes)
    q = Queue(tmp_path / "q")
    e = q.add(MSG, ["y@example.net"])
    e.el_path.write_text(text)
    scan = q.scan()
    assert scan.entries[0].recipients == ["x@example.com"]
    assert any("Emacs 28's flush would mis-read it" in p for p in scan.problems)


def test_reader_follows_emacs_string_and_symbol_syntax():
    [form] = read_forms('(a "\\x41\\ b\\101\\u00e9\\U0001F600\\n\\t\\s\\\nz" nil t 1. +2 -3 \\1 ; c\n)')
    assert form == [Symbol("a"), "AbAé😀\n\t z", Symbol("nil"), Symbol("t"), 1, 2, -3, Symbol("1")]
    with pytest.raises(UnsafeEl):
        read_forms('("\\351")')       # raw byte: not text


# --------------------------------------------------------------------------
# Locking


def _hold_lock(directory: str, acquired, release) -> None:
    with Queue(directory).lock(timeout=5):
        acquired.set()
        release.recv()      # a pipe, not an Event: SIGKILL mid-wait is harmless


def test_lock_excludes_other_process_and_is_released_when_holder_dies(tmp_path):
    qdir = str(tmp_path / "q")
    q = Queue(qdir)
    acquired = FORK.Event()
    release, release_w = FORK.Pipe(duplex=False)
    holder = FORK.Process(target=_hold_lock, args=(qdir, acquired, release))
    holder.start()
    try:
        assert acquired.wait(30)
        with pytest.raises(errors.QueueBusy) as busy:
            with q.lock(timeout=0):
                pass
        assert str(busy.value) == (f"queue {q.directory} is busy: another flush "
                                   f"(pid {holder.pid}) holds the lock")
        assert busy.value.exit_code == 75
        with pytest.raises(errors.QueueBusy):
            with q.lock(timeout=0.2):
                pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
        assert holder.exitcode == -signal.SIGKILL
        with q.lock(timeout=0):
            assert (q.directory / ".lock").read_text() == f"{os.getpid()}\n"
    finally:
        release_w.close()
        if holder.is_alive():
            holder.kill()
        holder.join()


def test_drop_needs_the_lock(tmp_path):
    q = Queue(tmp_path / "q")
    e = q.add(MSG, ["a@example.net"])
    with pytest.raises(errors.QueueError, match="needs the queue lock"):
        q.drop(e)
    with q.lock(timeout=0):
        q.drop(e)
    assert not e.data_path.exists() and index_lines(q) == []


def _keep_adding(directory: str, n: int, start, out) -> None:
    q = Queue(directory)
    start.wait()
    ids = [q.add(b"Subject: new\n\nb\n", ["n@example.net"]).id for _ in range(n)]
    out.send(ids)


def test_concurrent_add_while_remove_rewrites_index_loses_nothing(tmp_path):
    qdir = str(tmp_path / "q")
    q = Queue(qdir)
    old = [q.add(b"Subject: old\n\nb\n", ["o@example.net"]) for _ in range(150)]
    start = FORK.Event()
    recv, send = FORK.Pipe(duplex=False)
    adder = FORK.Process(target=_keep_adding, args=(qdir, 150, start, send))
    adder.start()
    start.set()
    for e in old:                       # 150 full index rewrites
        q.remove(e)
    new_ids = recv.recv()
    adder.join()
    assert adder.exitcode == 0
    assert [Path(l).name for l in index_lines(q)] == new_ids
    scan = q.scan()
    assert [e.id for e in scan.entries] == new_ids
    assert scan.restored == [] and scan.problems == []


# --------------------------------------------------------------------------
# Removing, batching, finding, state


def test_remove_many_and_batch_rewrite_index_lazily(tmp_path):
    q = Queue(tmp_path / "q")
    es = [q.add(MSG, [f"{i}@example.net"]) for i in range(7)]
    with q.batch(every=3) as b:
        b.remove(es[0])
        b.remove(es[1])
        assert len(index_lines(q)) == 7            # deferred: stale lines
        assert not es[0].data_path.exists()
        scan = q.scan()
        assert [e.id for e in scan.entries] == [e.id for e in es[2:]]
        b.remove(es[2])                            # third: rewrite
        assert len(index_lines(q)) == 4
        b.remove(es[3])
    assert [Path(l).name for l in index_lines(q)] == [e.id for e in es[4:]]
    q.remove_many(es[4:6])
    assert [Path(l).name for l in index_lines(q)] == [es[6].id]
    q.remove(es[6])
    assert q.index_path.read_bytes() == b""        # emptied, not deleted (as Emacs)
    assert sorted(p.name for p in q.directory.iterdir() if not p.name.startswith(".")) == ["index"]


def test_find_by_prefix(tmp_path):
    q = Queue(emacs_queue(tmp_path))
    assert q.find("2026-12-03_22:51:20_3").id == "2026-12-03_22:51:20_3"
    with pytest.raises(errors.QueueError, match="is ambiguous: matches 2026-12-03_22:51:20_1, "):
        q.find("2026-12-03")
    with pytest.raises(errors.QueueError, match="no queued message matches nope"):
        q.find("nope")


def test_state_sidecar_round_trip(tmp_path):
    q = Queue(tmp_path / "q", clock=lambda: FIXED_TIME)
    e = q.add(MSG, ["a@example.net"])
    e = q.set_state(e, "deferred", error="451 4.3.0 later", transcript="C: MAIL\nS: 451")
    e = q.set_state(e, "possibly-delivered", error="timeout after final .")
    [got] = q.scan().entries
    assert (got.state, got.attempts, got.last_error, got.transcript) == (
        "possibly-delivered", 2, "timeout after final .", "C: MAIL\nS: 451")
    assert got.last_attempt.timestamp() == FIXED_TIME
    assert stat.S_IMODE(got.state_path.stat().st_mode) == 0o600
    back = q.retry(got)
    assert q.scan().entries[0].state == "queued" and back.attempts == 2
    with pytest.raises(ValueError):
        q.set_state(back, "sent")
    # Emacs flushed it behind our back: the sidecar goes at the next scan.
    e.data_path.unlink()
    e.el_path.unlink()
    scan = q.scan()
    assert not e.state_path.exists()
    assert any("its entry is gone" in p for p in scan.problems)


def test_corrupt_sidecar_makes_entry_unsafe(tmp_path):
    q = Queue(tmp_path / "q")
    e = q.add(MSG, ["a@example.net"])
    e.state_path.write_text('{"state": "maybe"')
    scan = q.scan()
    assert scan.entries == [] and "state file" in scan.unsafe[0].reason


def test_from_settings_expands_home_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "h1"))
    q1 = Queue.from_settings(Settings())
    monkeypatch.setenv("HOME", str(tmp_path / "h2"))
    q2 = Queue.from_settings(Settings(queue_index_file="idx"))
    assert q1.directory == tmp_path / "h1" / "Mail" / "queued-mail"
    assert q2.index_path == tmp_path / "h2" / "Mail" / "queued-mail" / "idx"


def test_stale_temp_file_of_dead_writer_is_removed(tmp_path):
    q = Queue(tmp_path / "q")
    q.add(MSG, ["a@example.net"])
    child = FORK.Process(target=lambda: None)
    child.start()
    child.join()
    stale = q.directory / f".qtmp-{child.pid}-abc"
    mine = q.directory / f".qtmp-{os.getpid()}-abc"
    stale.write_bytes(b"partial")
    mine.write_bytes(b"in progress")
    q.scan()
    assert not stale.exists() and mine.exists()


# --------------------------------------------------------------------------
# Real Emacs 28


def _emacs_string(s: str) -> str:
    b64 = base64.b64encode(s.encode("utf-8")).decode()
    return f'(decode-coding-string (base64-decode-string "{b64}") \'utf-8-unix)'


def test_format_el_matches_emacs_prin1(tmp_path, emacs_bin):
    rng = random.Random(28)
    pool = "ab \"\\\t\n\x01\x7f\x1bé€日😀\u00a0'();#?.,`[]"
    strings = ["", "plain", 'a"b\\c', "Zoë \\ back\\slash", "\x00nul", "\r\n"]
    strings += ["".join(rng.choice(pool) for _ in range(rng.randint(1, 12))) for _ in range(80)]
    symbols = ["plain", "starttls", 'we ird"sym', "a?b", "?ab", "#ab", "123", "-1", "1.5",
               "+1", "", "a'b", "a;b", "a,b", "a`b", "a[b]", "a(b)", "a\\b", "é", "a\tb",
               "1e5", "-", "+", ".", ".5", "1.", "\u00a0x", "1_0", "0x10", "1/2", "-1.5e+INF"]
    pairs: list[tuple[str, object]] = []
    elisp = []
    for i, s in enumerate(strings):
        pairs.append((f"s{i}", s))
        elisp.append(f"(s{i} . ,{_emacs_string(s)})")
    for i, s in enumerate(symbols):
        pairs.append((f"y{i}", Symbol(s)))
        elisp.append(f"(y{i} . ,(intern {_emacs_string(s)}))")
    pairs += [("l0", strings[:5]), ("l1", []), ("n0", None), ("i0", 52526), ("i1", -7)]
    elisp += [f"(l0 . ,(list {' '.join(_emacs_string(s) for s in strings[:5])}))",
              "(l1 . nil)", "(n0 . nil)", "(i0 . 52526)", "(i1 . -7)"]
    out = tmp_path / "emacs.el"
    script = tmp_path / "print.el"
    script.write_text(
        ";; -*- lexical-binding: t -*-\n"
        f"(let ((pairs `({' '.join(elisp)})))\n"
        "  (with-temp-buffer\n"
        '    (insert "(setq ")\n'
        "    (dolist (p pairs)\n"
        '      (insert (format "     %s %S\\n" (car p) (cdr p))))\n'
        '    (insert ")\\n")\n'
        "    (let ((coding-system-for-write 'utf-8))\n"
        f"      (write-region (point-min) (point-max) {_emacs_string(str(out))}))))\n")
    run = subprocess.run([emacs_bin, "-Q", "--batch", "-l", str(script)],
                         capture_output=True, timeout=120, env=_emacs_env(tmp_path))
    assert run.returncode == 0, run.stderr.decode()
    assert format_el(pairs) == out.read_bytes()


def test_reader_decodes_emacs_escaped_printing(tmp_path, emacs_bin):
    strings = ["a\nb\tc\x7f\x01", "é€日😀 x", "\x00e9a", "\x01" + "7", "Zoë\\\"", "\u00e9" + "a"]
    script = tmp_path / "esc.el"
    out = tmp_path / "esc.txt"
    values = " ".join(_emacs_string(s) for s in strings)
    script.write_text(
        "(let ((print-escape-newlines t) (print-escape-control-characters t)\n"
        "      (print-escape-multibyte t))\n"
        "  (with-temp-buffer\n"
        f"    (insert (format \"%S\" (list {values})))\n"
        "    (let ((coding-system-for-write 'utf-8))\n"
        f"      (write-region (point-min) (point-max) {_emacs_string(str(out))}))))\n")
    run = subprocess.run([emacs_bin, "-Q", "--batch", "-l", str(script)],
                         capture_output=True, timeout=120, env=_emacs_env(tmp_path))
    assert run.returncode == 0, run.stderr.decode()
    text = out.read_text("utf-8")
    assert "\\n" in text and "\\x" in text        # Emacs really escaped them
    assert read_forms(text) == [strings]


def _emacs_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMACS")}
    env.update(HOME=str(home), LANG="C.UTF-8", TZ="Europe/Berlin")
    return env


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_emacs_flushes_a_queue_written_by_add(tmp_path, emacs_bin, smtp_server):
    server = smtp_server()
    qdir = tmp_path / "queue"
    q = Queue(qdir)
    first = q.add(b"From: a@example.org\r\nTo: b@example.net\r\nSubject: 1\r\n\r\n"
                  b".dot line\r\nno final newline", ["b@example.net", "c@example.net"],
                  stored={"server": "127.0.0.1", "stream_type": "plain",
                          "service": server.port, "user": None})
    # No stored vars: Emacs keeps the previous entry's (the leak in section 7).
    second = q.add(b"Subject: 2\n\nbody \xc3\xa9\n", ["d@example.net"],
                   sender="bounce@example.org")
    third = q.add(b"Subject: 3\n\nthree\n", ["e@example.net"],
                  stored={"server": "127.0.0.1", "stream_type": None,
                          "service": str(server.port), "user": None})
    expected = [(e.recipients, e.data_path.read_bytes()) for e in (first, second, third)]
    # The session's own port is closed: only our stored variables can work.
    script = tmp_path / "flush.el"
    script.write_text(
        "(require 'smtpmail)\n"
        '(setq user-mail-address "flusher@example.org"\n'
        '      smtpmail-smtp-server "127.0.0.1"\n'
        f"      smtpmail-smtp-service {_closed_port()}\n"
        "      smtpmail-stream-type nil smtpmail-smtp-user nil\n"
        f"      smtpmail-queue-dir {_emacs_string(str(qdir))})\n"
        "(smtpmail-send-queued-mail)\n")
    run = subprocess.run([emacs_bin, "-Q", "--batch", "-l", str(script)],
                         capture_output=True, timeout=120, env=_emacs_env(tmp_path))
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    got = server.wait_for_messages(3, timeout=30)
    assert [(m.rcpt_tos, m.data) for m in got] == [
        (rcpts, data.replace(b"\n", b"\r\n")) for rcpts, data in expected]
    # Emacs ignores our extension pair: MAIL FROM is the flushing session's.
    assert [m.mail_from for m in got] == ["flusher@example.org"] * 3
    assert q.index_path.read_bytes() == b""
    assert sorted(p.name for p in qdir.iterdir() if not p.name.startswith(".")) == ["index"]
    assert q.scan().entries == []


def test_batch_rewrites_after_each_removal_for_small_queues(tmp_path):
    q = Queue(tmp_path / "q")
    entries = [q.add(b"To: a@x.y\n\nhi\n", ["a@x.y"]) for _ in range(5)]
    with q.batch() as b:
        for i, e in enumerate(entries):
            b.remove(e)
            lines = (q.directory / "index").read_bytes().splitlines()
            assert len(lines) == len(entries) - i - 1      # no stale line, ever
    assert (q.directory / "index").read_bytes() == b""


def test_batch_is_amortised_for_big_queues(tmp_path):
    q = Queue(tmp_path / "q")
    entries = [q.add(b"To: a@x.y\n\nhi\n", ["a@x.y"]) for _ in range(160)]
    rewrites = []
    real = q._rewrite_index

    def counting(ids):
        rewrites.append(len(ids))
        return real(ids)

    q._rewrite_index = counting
    frozen = [0.0]
    with IndexBatch(q, clock=lambda: frozen[0]) as b:
        for e in entries:
            b.remove(e)
            stale = len((q.directory / "index").read_bytes().splitlines()) - len(q.scan().entries)
            assert stale * IndexBatch.FRACTION <= 160
    assert sum(rewrites) == 160
    assert len(rewrites) < 160 // 2           # far fewer rewrites than removals
    assert (q.directory / "index").read_bytes() == b""
