"""The serve wire format: printer/parser round trips and bad input."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings, strategies as st

from bridge import protocol as P
from bridge.protocol import ProtocolError, Sym

names = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,12}\Z").filter(lambda s: s not in ("nil", "t"))
symbols = names.map(Sym) | names.map(P.kw)
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
atoms = (st.none() | st.just(True) | st.integers(-2**70, 2**70) | texts | symbols
         | st.floats(allow_nan=False, allow_infinity=False, width=64))
values = st.recursive(atoms, lambda inner: st.lists(inner, min_size=1, max_size=5), max_leaves=25)


@given(values)
@settings(max_examples=400)
def test_print_then_parse_is_identity(value):
    line = P.dumps(value)
    assert "\n" not in line           # one s-expression per line
    assert P.loads(line) == value


@given(st.binary(max_size=2048), texts, st.integers(0, 2**31))
@settings(max_examples=200)
def test_message_bytes_survive_a_request(data, sender, rid):
    line = P.dumps([Sym("send"), P.kw("id"), rid, P.kw("sender"), sender,
                    P.kw("data"), P.encode_data(data)]).encode()
    req = P.parse_request(line)
    assert (req.op, req.id, req.string("sender")) == ("send", rid, sender)
    assert req.data() == data


def test_every_byte_value_inline():
    data = bytes(range(256)) * 3
    req = P.parse_request(f'(send :id 1 :data "{base64.b64encode(data).decode()}")'.encode())
    assert req.data() == data


def test_emacs_prin1_forms():
    # What Emacs prints with print-escape-newlines t.
    req = P.parse_request(
        b'(send :id 12 :sender "a\\"b\\\\c\\nd\rz" :vars (:smtp-server "h" '
        b':smtp-service 587 :stream-type starttls :smtp-user nil :debug-info t '
        b':auth-supported (cram-md5 plain) :retries -1) :recipients ("x@y"))')
    assert req.string("sender") == 'a"b\\c\nd\rz'
    assert req.vars() == {"smtp-server": "h", "smtp-service": 587, "stream-type": "starttls",
                          "smtp-user": None, "debug-info": True,
                          "auth-supported": ["cram-md5", "plain"], "retries": -1}
    assert req.strings("recipients") == ["x@y"]
    assert "é".encode() in P.dumps("é").encode()     # UTF-8, not escapes


def test_printer_output_is_what_emacs_expects():
    assert P.dumps([Sym("ok"), P.kw("id"), 3, P.kw("s"), 'q"b\\\n', None, True, -5]) \
        == '(ok :id 3 :s "q\\"b\\\\\\n" nil t -5)'
    assert P.ok(7, status=Sym("sent"), entry=None) == "(ok :id 7 :status sent :entry nil)\n"
    assert P.dumps({"k": [1]}) == "(:k (1))"
    with pytest.raises(ValueError):
        P.dumps(Sym("has space"))
    with pytest.raises(ValueError):
        P.dumps(Sym("nil"))


@pytest.mark.parametrize("line, rid, fragment", [
    (b"(send :id 3", 3, "unreadable"),
    (b"garbage ))", None, "unreadable"),
    (b"(frob :id 9)", 9, "unknown op"),
    (b"(send :id x)", None, ":id must be an integer"),
    (b"(send :id 4 5)", 4, "plist"),
    (b'"just a string"', None, "a request is a list"),
    (b"(send :id 6 :x '(1))", 6, "unsupported"),
    (b"(send :id 7) (list :id 8)", 7, "one s-expression"),
    (b"(send :id 8 :x \"\xff\")", 8, "UTF-8"),
    (b"(hello :id 2 :x 1.5 . 2)", 2, "plist"),
])
def test_bad_requests_raise_with_the_id_when_known(line, rid, fragment):
    with pytest.raises(ProtocolError) as info:
        P.parse_request(line)
    assert info.value.request_id == rid
    assert fragment in info.value.message


def test_wrong_types_are_reported():
    req = P.parse_request(b'(send :id 1 :data 5 :sender sym :recipients ("a" 2))')
    for call in (req.data, lambda: req.string("sender"), lambda: req.strings("recipients")):
        with pytest.raises(ProtocolError) as info:
            call()
        assert info.value.request_id == 1
    with pytest.raises(ProtocolError):
        P.parse_request(b'(send :id 1 :data "@@@")').data()


def test_long_line_is_cut_and_refused_with_its_id():
    big = b'(send :id 5 :data "' + b"A" * 5000 + b'")'
    lines = list(P.iter_lines([big[:100], big[100:] + b"\n(list :id 6)\n"], limit=1000))
    assert len(lines) == 2 and len(lines[0]) == 1001
    with pytest.raises(ProtocolError) as info:
        P.parse_request(lines[0], limit=1000)
    assert info.value.request_id == 5 and "too long" in info.value.message
    assert P.parse_request(lines[1], limit=1000).op == "list"


@given(st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=8),
       st.integers(1, 7))
def test_iter_lines_splits_at_lf_whatever_the_chunking(lines, size):
    stream = b"".join(line + b"\n" for line in lines)
    chunks = [stream[i:i + size] for i in range(0, len(stream), size)]
    assert list(P.iter_lines(chunks, limit=10**6)) == lines
