"""message: recipients, Bcc, header end and wire encoding.

The recipient rules are checked against real Emacs: the same header areas
go through smtpmail-deduce-address-list in `emacs -Q --batch`.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from bridge import message
from bridge.errors import MessageError

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"

SAMPLES = [
    "To: bob@example.net, carol@example.com\nCc: dave@example.com\nBcc: eve@example.com\n",
    # fixture f: continuation, comment, quoted name with comma, duplicate, second CC
    'To: "Smith, John" <john@example.com>,\n bob@example.net (Bob B)\nCC: carol@example.com\n'
    "Cc: mallory@example.com, bob@example.net\nSubject: x\n",
    "Resent-To: frank@example.net\nResent-Cc: grace@example.org\nTo: ignored@example.com\n"
    "Resent-Bcc: heidi@example.com, ivan@example.com\n",
    'To: "john smith"@example.com\n',
    "To: ((nested) comment) a@b.c, <x@[127.0.0.1]>, localuser\n",
    "To: undisclosed-recipients:;\n",
    "to: a@x.y\ncC: b@x.y\nbcc:\tc@x.y\nX-Original-To: not@x.y\nResent-From: no@x.y\n",
    "To: Name <one@x.y> <two@x.y>\n",
    "To: a@x.y,,b@x.y ,  c@x.y\n",
    'To: "quoted \\" escape" <q@x.y>, "\\\\" <r@x.y>\n',
    "To: =?utf-8?Q?J=C3=BCrgen?= <juergen@example.de>\n",
    "Subject: no recipients\n",
    "To: <a@x.y> (comment (nested)) , b@x.y\n",
]


def test_fixture_a_order_reverse_and_bcc_included():
    header = SAMPLES[0].encode()
    assert message.deduce_recipients(header) == [
        "eve@example.com", "dave@example.com", "carol@example.com", "bob@example.net"]


def test_fixture_f_duplicates_kept():
    got = message.deduce_recipients(SAMPLES[1].encode())
    assert got == ["bob@example.net", "mallory@example.com", "carol@example.com",
                   "bob@example.net", "john@example.com"]


def test_resent_headers_win():
    got = message.deduce_recipients(SAMPLES[2].encode())
    assert got == ["ivan@example.com", "heidi@example.com", "grace@example.org",
                   "frank@example.net"]


def test_quoted_local_part_splits_as_in_emacs():
    assert message.deduce_recipients(SAMPLES[3].encode()) == ['smith"@example.com', '"john']


def _random_header(rng: random.Random) -> str:
    alphabet = ['a', 'b', '@', 'x.y', ' ', '\t', ',', '"', '<', '>', '(', ')', ':', ';',
                '\\', 'Bob', '\n ']
    names = ["To", "Cc", "Bcc", "CC", "Resent-To", "Resent-Cc", "Subject", "From",
             "X-To", "Resent-Bcc"]
    lines = []
    for _ in range(rng.randint(1, 4)):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25)))
        lines.append(f"{rng.choice(names)}: {value}\n")
    return "".join(lines)


def _emacs_deduce(emacs: str, headers: list[str], tmp_path: Path) -> list[list[str]]:
    src = tmp_path / "headers.json"
    out = tmp_path / "out.json"
    src.write_text(json.dumps(headers), encoding="utf-8")
    script = f"""
(progn
  (require 'smtpmail)
  (require 'json)
  (let* ((headers (with-temp-buffer
                    (insert-file-contents {json.dumps(str(src))})
                    (json-parse-buffer :array-type 'list)))
         (results nil))
    (setq smtpmail-address-buffer (generate-new-buffer "*smtp-mail*"))
    (dolist (h headers)
      (with-temp-buffer
        (insert h)
        (let ((text (current-buffer)))
          (smtpmail-deduce-address-list text (point-min) (point-max))
          (push (vconcat smtpmail-recipient-address-list) results))))
    (with-temp-file {json.dumps(str(out))}
      (insert (json-serialize (vconcat (nreverse results)))))))
"""
    subprocess.run([emacs, "-Q", "--batch", "--eval", script], check=True,
                   capture_output=True, timeout=120)
    return json.loads(out.read_text(encoding="utf-8"))


def test_recipients_match_real_emacs(emacs_bin, tmp_path):
    rng = random.Random(20261203)
    headers = SAMPLES + [_random_header(rng) for _ in range(300)]
    expected = _emacs_deduce(emacs_bin, headers, tmp_path)
    for header, want in zip(headers, expected):
        assert message.deduce_recipients(header.encode()) == want, header


def test_header_end_rules():
    assert message.header_end(b"To: a\nSubject: b\n\nbody\n") == len(b"To: a\nSubject: b\n")
    # "Subject :" (blank before the colon) ends the header area, as in rfc822-goto-eoh
    assert message.header_end(b"To: a\nSubject : b\n\nbody\n") == len(b"To: a\n")
    assert message.header_end(b"To: a\n continued\nX: y") == len(b"To: a\n continued\nX: y")


def test_strip_bcc_removes_continuations_only_in_header():
    data = (b"To: a@x.y\nBcc: b@x.y,\n c@x.y\nResent-Bcc: d@x.y\nSubject: s\n\n"
            b"Bcc: stays in body\n")
    assert message.strip_bcc(data) == b"To: a@x.y\nSubject: s\n\nBcc: stays in body\n"


def test_prepare_strips_bcc_but_delivers_to_it():
    env = message.prepare(b"From: A <a@x.y>\nTo: b@x.y\nBcc: c@x.y\n\nhi\n",
                          sender=None, recipients=None, extract=True)
    assert env.sender == "a@x.y"
    assert env.recipients == ["c@x.y", "b@x.y"]
    assert b"Bcc" not in env.data and b"c@x.y" not in env.data


def test_prepare_positional_and_sender_precedence():
    env = message.prepare(b"From: a@x.y\nTo: b@x.y\n\nhi", sender="f@x.y",
                          recipients=["p@x.y"], extract=False)
    assert (env.sender, env.recipients) == ("f@x.y", ["p@x.y"])
    assert env.data.endswith(b"hi\n")


def test_prepare_refuses_no_recipients_and_injection():
    with pytest.raises(MessageError, match="no recipients"):
        message.prepare(b"Subject: x\n\nhi\n", sender="a@x.y", recipients=[], extract=True)
    with pytest.raises(MessageError, match="CR, LF or NUL"):
        message.prepare(b"To: a@x.y\n\nhi\n", sender="a@x.y\rRCPT TO:<evil@x.y>",
                        recipients=None, extract=True)
    with pytest.raises(MessageError, match="CR, LF or NUL"):
        message.prepare(b"To: a@x.y\r\n\nhi\n", sender="s@x.y", recipients=["b\x00@x.y"],
                        extract=True)


def test_wire_encoding_dot_stuffing_and_crlf():
    data = b"Subject: s\n\n.\n..\n.x\nmid . dot\nbare\rcr\nlast line without LF"
    wire = message.encode(data)
    assert wire == (b"Subject: s\r\n\r\n..\r\n...\r\n..x\r\nmid . dot\r\nbare\rcr\r\n"
                    b"last line without LF\r\n.\r\n")
    info = message.data_info(data)
    # size counts CRLF as two bytes, without dot-stuffing or the final "."
    assert info.size == len(wire) - len(b".\r\n") - 3
    assert not info.eight_bit


def test_wire_crlf_input_not_doubled(tmp_path):
    path = tmp_path / "m"
    path.write_bytes(b"A: b\r\n\r\nline\r\n")
    assert message.encode(path) == b"A: b\r\n\r\nline\r\n.\r\n"
    assert message.data_info(path).size == len(b"A: b\r\n\r\nline\r\n")


def test_wire_size_matches_emacs_fixture():
    """SIZE= of fixture a: file bytes + LFs = 424, as Emacs sent it."""
    queued = FIXTURES / "emacs-queue" / "queued-mail" / "2026-12-03_22:51:20_1"
    info = message.data_info(queued)
    assert info.size == 424
    delivered = (FIXTURES / "emacs-queue" / "delivered" / "1-a.data.eml").read_bytes()
    assert message.encode(queued)[:-3].replace(b"\r\n..", b"\r\n.") == delivered


def test_eight_bit_detected_across_chunks(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"X: y\n\n" + b"a" * 200000 + b"\n\xc3\xa9\n")
    assert message.data_info(path).eight_bit
    chunks = list(message.wire_chunks(path, chunk=4096))
    assert len(chunks) > 1
    assert b"".join(chunks).endswith(b"\xc3\xa9\r\n.\r\n")


@pytest.mark.parametrize("data", [
    b"From: a@x.y\r\nTo: b@x.y\r\nBcc: c@x.y,\r\n d@x.y\r\n\r\nbody\r\nlast",
    b"To: b@x.y\n\n" + b"x" * (message.CHUNK - 1) + b"\r\n" + b"y" * 10 + b"\r",
    b"To: b@x.y\nSubject: no body",
    b"To: b@x.y\n\n" + bytes(range(256)) * 600,
    b"Resent-To: r@x.y\nTo: t@x.y\nResent-Bcc: h@x.y\n\n.\n..\n",
])
def test_stream_prepare_equals_bytes_prepare(data):
    import io
    a = message.prepare(data, sender="s@x.y", recipients=None, extract=True)
    b = message.prepare(io.BytesIO(data), sender="s@x.y", recipients=None, extract=True)
    assert a.recipients == b.recipients
    assert message.encode(a.data) == message.encode(b.data)
    assert message.data_info(a.data) == message.data_info(b.data)


def _reference_wire(data: bytes) -> tuple[bytes, int]:
    """The rule written plainly, line by line: what the block encoder must equal."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    out, size = [], 0
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        size += len(line) + 2
        out.append((b"." if line.startswith(b".") else b"") + line + b"\r\n")
    return b"".join(out) + b".\r\n", size


from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402


@hsettings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\xc3\xa9", b".."]),
                max_size=60).map(b"".join),
       st.integers(min_value=1, max_value=9))
def test_block_encoder_equals_line_rule(data, chunk):
    import io
    wire, size = _reference_wire(data)
    assert b"".join(message.wire_chunks(io.BytesIO(data), chunk=chunk)) == wire
    info = message.data_info(data)
    assert info.size == size and info.eight_bit == (not data.isascii())
