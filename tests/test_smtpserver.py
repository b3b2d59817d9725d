"""The loopback SMTP test server, exercised with smtplib and raw sockets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import smtplib
import socket
import ssl
import threading

import pytest

from tests.conftest import require
from tests.smtpserver import (
    AUTH_INVALID, SMTPTestServer, mask_command, parse_xoauth2, reply_lines)

USER = "alice@example.org"
PASSWORD = 's3cr"et pass'  # the fixtures' password (fixtures/transcripts)
MSG = (b"From: a@example.org\r\nTo: b@example.net\r\nSubject: t\r\n\r\n"
       b"caf\xc3\xa9 \xe4 raw 8-bit\r\n.\r\n..\r\n.x\r\nend.\r\n")


class Raw:
    """A line-level SMTP client on a plain socket (no smtplib magic)."""

    def __init__(self, server: SMTPTestServer, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> list[bytes]:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("closed")
            lines.append(line)
            if line[3:4] != b"-":
                return lines

    def cmd(self, line: bytes) -> list[bytes]:
        self.send(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def smtp(server: SMTPTestServer, **kw) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, timeout=5, **kw)


# --------------------------------------------------------------------------
# Plain delivery and what is recorded


def test_plain_delivery_records_envelope_and_exact_bytes(smtp_server):
    srv = smtp_server()
    with smtp(srv) as c:
        c.ehlo("client.example")
        c.sendmail("a@example.org", ["b@example.net", "c@example.net"], MSG,
                   mail_options=["BODY=8BITMIME"])
    (m,) = srv.wait_for_messages(1)
    assert m.data == MSG
    assert m.mail_from == "a@example.org"
    assert m.mail_options == ["SIZE=%d" % len(MSG), "BODY=8BITMIME"]
    assert m.rcpt_tos == ["b@example.net", "c@example.net"]
    assert (m.auth, m.tls, m.ehlo_name, m.session_id) == (None, False, "client.example", 1)
    assert srv.connections == 1
    assert [c for _, c in srv.commands] == [
        "ehlo client.example", f"mail FROM:<a@example.org> size={len(MSG)} BODY=8BITMIME",
        "rcpt TO:<b@example.net>", "rcpt TO:<c@example.net>", "data", "QUIT"]


def test_dot_unstuffing_on_the_wire(smtp_server):
    srv = smtp_server()
    r = Raw(srv)
    assert r.reply()[0].startswith(b"220 ")
    r.cmd(b"EHLO x")
    r.cmd(b"MAIL FROM:<a@b>")
    r.cmd(b"RCPT TO:<c@d>")
    assert r.cmd(b"DATA")[0].startswith(b"354")
    assert r.cmd(b"..\r\n...\r\n..x\r\nx.\r\n\xff\xfe\r\nbare\rcr\r\n.") == [
        b"250 Message accepted for delivery\r\n"]
    r.close()
    assert srv.messages[0].data == b".\r\n..\r\n.x\r\nx.\r\n\xff\xfe\r\nbare\rcr\r\n"


def test_default_greeting_and_ehlo_match_the_fixture_server(smtp_server):
    srv = smtp_server(pipelining=False, smtputf8=False, auth=["LOGIN", "PLAIN"])
    r = Raw(srv)
    assert r.reply() == [b"220 capture.test capture-aiosmtpd\r\n"]
    # fixtures/transcripts/01-auth-plain.server-view.txt, byte for byte
    assert r.cmd(b"EHLO vm") == [b"250-capture.test\r\n", b"250-SIZE 33554432\r\n",
                                 b"250-8BITMIME\r\n", b"250-AUTH LOGIN PLAIN\r\n",
                                 b"250 HELP\r\n"]
    r.close()


def test_extension_toggles_and_multiline_greeting(smtp_server):
    srv = smtp_server(pipelining=False, smtputf8=False, eightbitmime=False, size=None,
                      verb=True, extra_ehlo_lines=["ONEX", "XUSR"],
                      greeting=["first line", "second line"], hostname="mx.test")
    with smtp(srv) as c:
        assert c.ehlo_resp is None
        code, resp = c.ehlo("h")
        assert code == 250
        assert resp.split(b"\n") == [b"mx.test", b"VERB", b"ONEX", b"XUSR", b"HELP"]
        assert c.docmd("VERB")[0] == 250
        assert c.docmd("ONEX")[0] == 250
    r = Raw(srv)
    assert r.reply() == [b"220-first line\r\n", b"220 second line\r\n"]
    r.close()


def test_default_ehlo_advertises_pipelining_smtputf8(smtp_server):
    srv = smtp_server()
    with smtp(srv) as c:
        c.ehlo("h")
        assert {"pipelining", "smtputf8", "8bitmime", "size"} <= set(c.esmtp_features)
        assert "auth" not in c.esmtp_features and "starttls" not in c.esmtp_features


def test_greeting_code_rejects(smtp_server):
    srv = smtp_server(greeting_code=554, greeting="5.7.1 go away")
    with pytest.raises(smtplib.SMTPConnectError) as e:
        smtp(srv)
    assert e.value.smtp_code == 554


def test_delay_still_gives_correct_replies(smtp_server):
    srv = smtp_server(delay=0.01)
    with smtp(srv) as c:
        c.sendmail("a@b", ["c@d"], b"x\r\n")
    assert srv.messages[0].data == b"x\r\n"


# --------------------------------------------------------------------------
# HELO handling


def test_helo_only_makes_smtplib_fall_back(smtp_server):
    srv = smtp_server(helo_only=True)
    with smtp(srv, local_hostname="h") as c:
        c.sendmail("a@b", ["c@d"], b"x\r\n")  # EHLO refused -> HELO
        assert c.ehlo_resp == b"5.5.2 Error: command not recognized"
    assert [c for _, c in srv.commands][:3] == ["ehlo h", "helo h", "mail FROM:<a@b>"]
    assert srv.messages[0].ehlo_name == "h"


def test_reject_helo_name(smtp_server):
    srv = smtp_server(reject_helo_name=r"^bad")
    with smtp(srv) as c:
        assert c.ehlo("badname")[0] == 501
        assert c.helo("badname")[0] == 501
        assert c.ehlo("goodname")[0] == 250


# --------------------------------------------------------------------------
# TLS


def test_starttls_with_ssl_cert_file(smtp_server, ssl_cert_env, tls_ca):
    assert ssl_cert_env["SSL_CERT_FILE"] == str(tls_ca.ca_pem)
    srv = smtp_server(tls="starttls", auth=["PLAIN"], users={USER: PASSWORD},
                      auth_require_tls=True)
    with smtp(srv) as c:
        c.ehlo("h")
        assert "starttls" in c.esmtp_features and "auth" not in c.esmtp_features
        assert c.docmd("AUTH PLAIN")[0] == 538
        c.starttls(context=ssl.create_default_context())  # trusts via SSL_CERT_FILE
        c.ehlo("h")
        assert "starttls" not in c.esmtp_features and c.esmtp_features["auth"] == " PLAIN"
        c.login(USER, PASSWORD)
        c.sendmail("a@b", ["c@d"], b"x\r\n")
    m = srv.messages[0]
    assert m.tls and m.auth.user == USER and m.auth.mechanism == "PLAIN"
    assert srv.session(1).tls
    assert [c for _, c in srv.commands][:4] == ["ehlo h", "AUTH PLAIN", "STARTTLS", "ehlo h"]


def test_implicit_tls(smtp_server, ssl_cert_env):
    srv = smtp_server(tls="implicit", auth=["LOGIN"], users={USER: PASSWORD},
                      auth_require_tls=True)
    with smtplib.SMTP_SSL(srv.host, srv.port, timeout=5,
                          context=ssl.create_default_context()) as c:
        c.ehlo("h")
        assert "starttls" not in c.esmtp_features and "auth" in c.esmtp_features
        c.login(USER, PASSWORD)
        c.sendmail("a@b", ["c@d"], MSG)
    m = srv.messages[0]
    assert m.tls and m.data == MSG and m.auth.mechanism == "LOGIN"
    seen = b"ehlo h\r\n" in srv.session(1).client_bytes()  # decrypted transcript
    assert seen  # (not shown on failure: the transcript holds credentials)


@pytest.mark.parametrize("cert", ["untrusted", "wrong_host", "expired"])
def test_bad_certificates_are_rejected_by_a_verifying_client(smtp_server, tls_ca, cert):
    srv = smtp_server(tls="implicit", cert=cert)
    with pytest.raises(ssl.SSLCertVerificationError):
        smtplib.SMTP_SSL(srv.host, srv.port, timeout=5, context=tls_ca.client_context())
    srv.wait_until(lambda s: s.connections == 1)
    assert srv.messages == []


def test_untrusted_starttls_cert(smtp_server, tls_ca):
    srv = smtp_server(tls="starttls", cert="untrusted")
    with smtp(srv) as c:
        with pytest.raises(ssl.SSLCertVerificationError):
            c.starttls(context=tls_ca.client_context())
    srv.wait_until(lambda s: s.session(1).tls_error is not None)
    assert "UNKNOWN_CA" in srv.session(1).tls_error
    assert not srv.session(1).tls


def test_client_certificate_subject_is_recorded(smtp_server, tls_ca):
    srv = smtp_server(tls="starttls", request_client_cert=True)
    ctx = tls_ca.client_context()
    ctx.load_cert_chain(str(tls_ca.client_cert_pem), str(tls_ca.client_key_pem))
    with smtp(srv) as c:
        c.starttls(context=ctx)
        c.noop()
    subject = srv.session(1).client_cert_subject
    assert (("commonName", "client@example.org"),) in subject


# --------------------------------------------------------------------------
# AUTH


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "CRAM-MD5"])
@pytest.mark.parametrize("initial_response_ok", [True, False])
def test_auth_mechanisms_with_smtplib(smtp_server, mech, initial_response_ok):
    srv = smtp_server(auth=[mech], users={USER: PASSWORD})
    with smtp(srv) as c:
        c.ehlo("h")
        c.login(USER, PASSWORD, initial_response_ok=initial_response_ok)
        c.sendmail("a@b", ["c@d"], b"x\r\n")
    assert srv.messages[0].auth.mechanism == mech
    assert srv.session(1).auth_attempts == [(mech, USER, True)]
    joined = " ".join(c for _, c in srv.commands)
    assert "AUTH" in joined and "<auth>" in joined
    secrets = [base64.b64encode(s.encode()).decode() for s in (USER, PASSWORD)]
    assert not any(s in joined for s in secrets)


def test_wrong_password(smtp_server):
    srv = smtp_server(auth=["LOGIN"], users={USER: PASSWORD})
    with smtp(srv) as c:
        c.ehlo("h")
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            c.login(USER, "nope", initial_response_ok=False)
    assert (e.value.smtp_code, e.value.smtp_error) == (
        535, b"5.7.8 Authentication credentials invalid")
    assert srv.session(1).auth is None
    assert srv.session(1).auth_attempts == [("LOGIN", USER, False)]


def test_fixture_wire_forms_of_smtpmail_are_accepted(smtp_server):
    """The exact AUTH lines real Emacs sent (fixtures/transcripts/01,03,05)."""
    srv = smtp_server(auth=["CRAM-MD5", "LOGIN", "PLAIN"], users={USER: PASSWORD})
    r = Raw(srv)
    r.reply()
    r.cmd(b"EHLO vm")
    assert r.cmd(b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHMzY3IiZXQgcGFzcw==") == [
        b"235 2.7.0 Authentication successful\r\n"]
    r.close()
    r = Raw(srv)
    r.reply()
    r.cmd(b"EHLO vm")
    assert r.cmd(b"AUTH LOGIN") == [b"334 VXNlciBOYW1lAA==\r\n"]
    assert r.cmd(b"YWxpY2VAZXhhbXBsZS5vcmc=") == [b"334 UGFzc3dvcmQA\r\n"]
    assert r.cmd(b"czNjciJldCBwYXNz") == [b"235 2.7.0 Authentication successful\r\n"]
    r.close()
    r = Raw(srv)
    r.reply()
    r.cmd(b"EHLO vm")
    assert r.cmd(b"AUTH CRAM-MD5") == [b"334 PDEyMzQ1LjY3ODkwQGNhcHR1cmUudGVzdD4=\r\n"]
    assert r.cmd(b"YWxpY2VAZXhhbXBsZS5vcmcgMzBlMjNiNjQ0MWYwNGQ2ZjM5NGU4ZmJkNjBmMmM3MjY=") == [
        b"235 2.7.0 Authentication successful\r\n"]
    r.close()
    assert [s.auth.mechanism for s in srv.sessions.values()] == ["PLAIN", "LOGIN", "CRAM-MD5"]
    assert srv.session(1).commands == ["EHLO vm", "AUTH PLAIN <auth>"]
    assert srv.session(2).commands == ["EHLO vm", "AUTH LOGIN", "<auth>", "<auth>"]
    assert srv.session(3).commands == ["EHLO vm", "AUTH CRAM-MD5", "<auth>"]


def test_cram_md5_digest_matches_challenge(smtp_server):
    srv = smtp_server(auth=["CRAM-MD5"], users={"u": "pw"}, cram_challenge="<1.2@x>")
    r = Raw(srv)
    r.reply()
    r.cmd(b"EHLO h")
    (line,) = r.cmd(b"AUTH CRAM-MD5")
    challenge = base64.b64decode(line[4:].strip())
    assert challenge == b"<1.2@x>"
    digest = hmac.new(b"pw", challenge, hashlib.md5).hexdigest()
    assert r.cmd(base64.b64encode(b"u " + digest.encode())) == [
        b"235 2.7.0 Authentication successful\r\n"]
    r.close()


def xoauth2(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def test_xoauth2_success_and_gmail_style_failure(smtp_server):
    srv = smtp_server(auth=["XOAUTH2"], users={USER: "tok-123"})
    with smtp(srv) as c:
        c.ehlo("h")
        assert c.docmd("AUTH", "XOAUTH2 " + xoauth2(USER, "tok-123")) == (
            235, b"2.7.0 Authentication successful")
    with smtp(srv) as c:
        c.ehlo("h")
        code, text = c.docmd("AUTH", "XOAUTH2 " + xoauth2(USER, "stale"))
        assert code == 334
        assert json.loads(base64.b64decode(text))["status"] == "400"
        assert c.docmd("") == (535, b"5.7.8 Authentication credentials invalid")
    assert srv.session(1).auth.mechanism == "XOAUTH2"
    assert srv.session(2).auth is None
    assert srv.session(2).commands[1:3] == ["AUTH XOAUTH2 <auth>", "<auth>"]


def test_auth_required(smtp_server):
    srv = smtp_server(auth=["PLAIN"], users={USER: PASSWORD}, auth_required=True)
    with smtp(srv) as c:
        c.ehlo("h")
        assert c.mail("a@b") == (530, b"5.7.0 Authentication required")
        c.login(USER, PASSWORD)
        assert c.mail("a@b")[0] == 250


# --------------------------------------------------------------------------
# Fault injection


def test_fail_mail_once_then_ok(smtp_server):
    srv = smtp_server()
    srv.fail("MAIL", 451, "4.3.0 Try again later")
    with smtp(srv) as c:
        c.ehlo("h")
        assert c.mail("a@b") == (451, b"4.3.0 Try again later")
        assert c.mail("a@b") == (250, b"OK")


def test_fail_rcpt_matching_one_address_and_multiline(smtp_server):
    srv = smtp_server()
    srv.fail("RCPT", 550, "5.1.1 <x@y>: no such user", match="x@y")
    srv.fail("RCPT", 550, "5.1.1 first line\n5.1.1 second line", match="z@y")
    with smtp(srv) as c:
        c.ehlo("h")
        c.mail("a@b")
        assert c.rcpt("ok@y")[0] == 250
        assert c.rcpt("x@y") == (550, b"5.1.1 <x@y>: no such user")
        assert c.rcpt("x@y")[0] == 250  # times=1 used up
        assert c.rcpt("z@y") == (550, b"5.1.1 first line\n5.1.1 second line")
    assert reply_lines(550, "a\nb") == ["550-a", "550 b"]


def test_fail_data_end_is_recorded_as_rejected(smtp_server):
    srv = smtp_server()
    srv.fail("DATA_END", 554, "5.6.0 Message rejected")
    with smtp(srv) as c:
        with pytest.raises(smtplib.SMTPDataError) as e:
            c.sendmail("a@b", ["c@d"], b"x\r\n")
        assert e.value.smtp_code == 554
        c.sendmail("a@b", ["c@d"], b"second\r\n")
    assert [m.data for m in srv.rejected_messages] == [b"x\r\n"]
    assert [m.data for m in srv.messages] == [b"second\r\n"]


@pytest.mark.parametrize("command", ["GREETING", "EHLO", "STARTTLS", "QUIT"])
def test_fail_other_commands(smtp_server, command):
    srv = smtp_server(tls="starttls")
    srv.fail(command, 421, "4.3.2 closing")
    if command == "GREETING":
        with pytest.raises(smtplib.SMTPConnectError):
            smtp(srv)
        return
    c = smtp(srv)
    if command == "EHLO":
        assert c.ehlo("h") == (421, b"4.3.2 closing")
    elif command == "STARTTLS":
        c.ehlo("h")
        assert c.docmd("STARTTLS") == (421, b"4.3.2 closing")
    else:
        assert c.docmd("QUIT") == (421, b"4.3.2 closing")
        assert c.docmd("QUIT")[0] == 221
    c.close()


def test_disconnect_after_data_records_unacknowledged(smtp_server):
    srv = smtp_server()
    srv.disconnect("DATA_END")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        with smtp(srv) as c:
            c.sendmail("a@b", ["c@d"], MSG)
    assert [m.data for m in srv.received_but_unacknowledged] == [MSG]
    assert srv.messages == []
    srv.wait_until(lambda s: s.session(1).closed)


def test_disconnect_on_mail(smtp_server):
    srv = smtp_server()
    srv.disconnect("MAIL")
    c = smtp(srv)
    c.ehlo("h")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        c.mail("a@b")
    c.close()
    assert srv.commands[-1] == (1, "mail FROM:<a@b>")


def test_stall_makes_client_time_out_and_stop_still_works():
    srv = SMTPTestServer().start()
    srv.stall("MAIL")
    r = Raw(srv, timeout=0.2)
    r.reply()
    r.cmd(b"EHLO h")
    r.send(b"MAIL FROM:<a@b>\r\n")
    with pytest.raises(socket.timeout):
        r.file.readline()
    srv.stop()
    assert not any(t.name == "SMTPTestServer" and t.is_alive() for t in threading.enumerate())
    r.close()


def test_hold_data_end_until_released(smtp_server):
    srv = smtp_server()
    held = srv.hold("DATA_END")
    result: list[object] = []

    def client() -> None:
        with smtp(srv) as c:
            result.append(c.sendmail("a@b", ["c@d"], b"held\r\n"))

    t = threading.Thread(target=client)
    t.start()
    assert held.wait_reached(5)
    assert t.is_alive() and srv.messages == [] and not held.released
    held.release()
    t.join(5)
    assert result == [{}]
    assert srv.messages[0].data == b"held\r\n"


def test_stall_data_end_records_unacknowledged(smtp_server):
    srv = smtp_server()
    srv.stall("DATA_END")
    r = Raw(srv)
    r.reply()
    r.cmd(b"EHLO h")
    r.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
    r.reply(), r.reply(), r.reply()
    r.send(b"stalled\r\n.\r\n")
    srv.wait_until(lambda s: len(s.received_but_unacknowledged) == 1)
    r.close()
    srv.wait_until(lambda s: s.session(1).closed)
    assert srv.messages == [] and srv.received_but_unacknowledged[0].data == b"stalled\r\n"


def test_disconnect_greeting_and_fail_auth(smtp_server):
    srv = smtp_server(auth=["PLAIN"], users={USER: PASSWORD})
    srv.disconnect("GREETING")
    srv.fail("AUTH", 454, "4.7.0 Temporary authentication failure")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtp(srv)
    with smtp(srv) as c:
        c.ehlo("h")
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            c.login(USER, PASSWORD)
        assert e.value.smtp_code == 454
        c.login(USER, PASSWORD)
    assert srv.connections == 2 and srv.session(2).auth.user == USER


def test_hold_rcpt_in_a_pipelined_batch(smtp_server):
    srv = smtp_server()
    held = srv.hold("RCPT", match="slow@y")
    r = Raw(srv)
    r.reply()
    r.cmd(b"EHLO h")
    r.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<fast@y>\r\nRCPT TO:<slow@y>\r\nDATA\r\n")
    assert r.reply()[0][:3] == b"250" and r.reply()[0][:3] == b"250"
    assert held.wait_reached(5)
    assert [c for _, c in srv.commands][-1] == "RCPT TO:<slow@y>"  # DATA not yet read
    held.release()
    assert r.reply()[0][:3] == b"250" and r.reply()[0][:3] == b"354"
    assert r.cmd(b"x\r\n.")[0][:3] == b"250"
    r.close()
    assert srv.messages[0].rcpt_tos == ["fast@y", "slow@y"]
    assert srv.round_trips(1) == 3


def test_hold_greeting(smtp_server):
    srv = smtp_server()
    held = srv.hold("GREETING")
    r = Raw(srv)
    assert held.wait_reached(5)
    held.release()
    assert r.reply()[0].startswith(b"220 ")
    r.close()


# --------------------------------------------------------------------------
# Round trips (PIPELINING)


def _session(r: Raw, pipelined: bool) -> None:
    r.reply()
    r.cmd(b"EHLO h")
    if pipelined:
        r.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
        assert [r.reply()[0][:3] for _ in range(3)] == [b"250", b"250", b"354"]
    else:
        for line in (b"MAIL FROM:<a@b>", b"RCPT TO:<c@d>", b"DATA"):
            r.cmd(line)
    r.cmd(b"body\r\n.")
    r.cmd(b"QUIT")
    r.close()


def test_round_trips_count_reads(smtp_server):
    srv = smtp_server()
    _session(Raw(srv), pipelined=False)
    _session(Raw(srv), pipelined=True)
    assert srv.round_trips(1) == 6
    assert srv.round_trips(2) == 4
    assert len(srv.wait_for_messages(2)) == 2


# --------------------------------------------------------------------------
# Robustness and helpers


def test_many_servers_have_distinct_ports_and_stop_cleanly():
    before = {t for t in threading.enumerate() if t.name == "SMTPTestServer"}
    servers = [SMTPTestServer(tls="starttls" if i % 2 else "none").start() for i in range(6)]
    assert len({s.port for s in servers}) == 6
    for s in servers:
        with smtp(s) as c:
            c.noop()
    for s in servers:
        s.stop()
        s.stop()  # idempotent
    after = {t for t in threading.enumerate() if t.name == "SMTPTestServer" and t.is_alive()}
    assert after <= before


def test_wait_for_messages_times_out(smtp_server):
    srv = smtp_server()
    with pytest.raises(TimeoutError):
        srv.wait_for_messages(1, timeout=0.01)


def test_pure_helpers():
    assert mask_command("AUTH PLAIN AGFsaWNl") == "AUTH PLAIN <auth>"
    assert mask_command("AUTH LOGIN") == "AUTH LOGIN"
    assert parse_xoauth2(b"user=u\x01auth=Bearer t\x01\x01") == ("u", "t")
    assert parse_xoauth2(b"user=u\x01auth=Bearer t") is None
    assert AUTH_INVALID.startswith("535 ")


def test_require_skips_normally_and_fails_on_ci(monkeypatch):
    missing = "no-such-command-smtpmail-bridge"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require(missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        require(missing)
    assert os.path.basename(require("sh")) == "sh"


# --------------------------------------------------------------------------
# Real Emacs smtpmail against the server (certificates work with GnuTLS)

SEND_EL = r"""
(require 'smtpmail)
(setq user-mail-address "alice@example.org"
      send-mail-function #'smtpmail-send-it
      smtpmail-queue-mail nil
      smtpmail-smtp-server (getenv "SMTP_HOST")
      smtpmail-smtp-service (string-to-number (getenv "SMTP_PORT"))
      smtpmail-stream-type (intern (getenv "SMTP_STREAM_TYPE"))
      auth-sources (list (getenv "AUTHINFO"))
      gnutls-trustfiles (list (getenv "TRUSTFILE")))
(with-temp-buffer
  (insert "From: alice@example.org\nTo: bob@example.net\nSubject: hi\n"
          mail-header-separator "\nBody.\n.dot\n")
  (mail-mode)
  (condition-case err
      (mail-send)
    (error (message "SEND ERROR: %s" (error-message-string err)) (kill-emacs 3))))
"""


def run_emacs(emacs_bin, tmp_path, tls_ca, srv, host, stream_type):
    import subprocess
    home = tmp_path / "home"
    (home / ".emacs.d").mkdir(parents=True)
    (tmp_path / "authinfo").write_text(
        f"machine {host} port {srv.port} login {USER} password pw\n")
    (tmp_path / "send.el").write_text(SEND_EL)
    env = dict(os.environ, HOME=str(home), SMTP_HOST=host, SMTP_PORT=str(srv.port),
               SMTP_STREAM_TYPE=stream_type, AUTHINFO=str(tmp_path / "authinfo"),
               TRUSTFILE=str(tls_ca.ca_pem))
    return subprocess.run([emacs_bin, "-Q", "--batch", "-l", str(tmp_path / "send.el")],
                          env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("tls,stream_type,host", [
    ("starttls", "starttls", "127.0.0.1"), ("implicit", "ssl", "localhost")])
def test_real_emacs_delivers_over_tls_with_cram_md5(
        emacs_bin, tmp_path, tls_ca, smtp_server, tls, stream_type, host):
    srv = smtp_server(tls=tls, auth=["CRAM-MD5", "PLAIN"], users={USER: "pw"},
                      auth_require_tls=True)
    proc = run_emacs(emacs_bin, tmp_path, tls_ca, srv, host, stream_type)
    assert proc.returncode == 0, proc.stderr
    (m,) = srv.messages
    assert m.tls and m.auth.mechanism == "CRAM-MD5" and m.ehlo_name
    assert m.data.endswith(b"Subject: hi\r\n\r\nBody.\r\n.dot\r\n")
    assert m.mail_options == [f"SIZE={len(m.data)}"]


def test_real_emacs_refuses_untrusted_certificate(emacs_bin, tmp_path, tls_ca, smtp_server):
    srv = smtp_server(tls="starttls", cert="untrusted")
    proc = run_emacs(emacs_bin, tmp_path, tls_ca, srv, "127.0.0.1", "starttls")
    assert proc.returncode == 3
    assert "Sending failed: Unable to contact server" in proc.stderr  # NSM said no
    assert srv.messages == [], srv.commands
    # GnuTLS finishes the handshake (and EHLO); NSM then drops the connection.
    assert [c.split()[0] for _, c in srv.commands][:2] == ["EHLO", "STARTTLS"]
    assert not any(c.startswith(("MAIL", "AUTH")) for _, c in srv.commands)
