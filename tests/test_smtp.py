"""The SMTP engine against a real loopback server: smtpmail's dialogue."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bridge import auth, smtp
from bridge.config import Settings
from bridge.errors import (AmbiguousDeliveryError, AuthError, ConfigError,
                           MessageError, PermanentError, TransientError)
from bridge.message import Envelope, data_info, prepare

USER = "alice@example.org"
SECRET = 's3cr"et pass'
MESSAGE = b"From: Alice <alice@example.org>\nTo: bob@example.net\nSubject: t\n\nBody.\n.leading dot\n"


def envelope(data: bytes = MESSAGE, rcpts=("bob@example.net",)) -> Envelope:
    return Envelope("alice@example.org", list(rcpts), data)


@pytest.fixture
def authinfo(tmp_path: Path):
    """Write ~/.authinfo-style lines; returns the auth_sources tuple."""
    def write(*lines: str) -> tuple[str, ...]:
        path = tmp_path / "authinfo"
        path.write_text("".join(line + "\n" for line in lines))
        return (str(path),)
    return write


class Tap:
    """Collects the transcript, to check it and to check it leaks nothing."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, direction: str, line: str) -> None:
        self.lines.append(f"{direction}: {line}")

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def assert_no_secret(*texts: str, user: str = USER, secret: str = SECRET) -> None:
    forms = auth.secret_forms(auth.Credentials(user=user, secret=secret))
    for text in texts:
        for form in forms:
            assert form not in text


def settings(server, host: str = "127.0.0.1", **kw) -> Settings:
    base = dict(smtp_server=host, smtp_service=server.port, retry_delay=0.0,
                auth_sources=(), connect_timeout=5.0, command_timeout=5.0, data_timeout=5.0)
    base.update(kw)
    return Settings(**base)


def deliver(s: Settings, env: Envelope | None = None, tap: Tap | None = None) -> str:
    """Send, and whatever happens, check the transcript and error leak no secret."""
    tap = tap if tap is not None else Tap()
    try:
        return smtp.send(s, env or envelope(), credentials=auth.FileCredentials(s), transcript=tap)
    except Exception as e:
        assert_no_secret(tap.text, str(e))
        raise
    finally:
        assert_no_secret(tap.text)


def commands(server) -> list[str]:
    return [c.split(" ")[0].upper() for _, c in server.commands]


# --- stream types -------------------------------------------------------------

def test_nil_uses_starttls_when_offered(smtp_server, ssl_cert_env):
    srv = smtp_server(tls="starttls")
    tap = Tap()
    deliver(settings(srv), tap=tap)
    [m] = srv.messages
    assert m.tls and m.data == MESSAGE.replace(b"\n", b"\r\n")
    assert commands(srv)[:3] == ["EHLO", "STARTTLS", "EHLO"]
    assert any(line.startswith("*: TLS") for line in tap.lines)


def test_nil_without_starttls_goes_plain(smtp_server):
    srv = smtp_server(tls="none")
    deliver(settings(srv))
    assert not srv.messages[0].tls
    assert "STARTTLS" not in commands(srv)


def test_starttls_required_refused_before_auth_or_mail(smtp_server, authinfo):
    srv = smtp_server(tls="none", auth=["PLAIN"], users={USER: SECRET})
    s = settings(srv, stream_type="starttls",
                 auth_sources=authinfo(f"machine 127.0.0.1 login {USER} password '{SECRET}'"))
    with pytest.raises(TransientError, match="does not offer STARTTLS"):
        deliver(s)
    assert "AUTH" not in commands(srv) and "MAIL" not in commands(srv)
    assert not srv.messages


def test_ssl_is_implicit_tls(smtp_server, ssl_cert_env):
    srv = smtp_server(tls="implicit")
    deliver(settings(srv, stream_type="ssl"))
    assert srv.messages[0].tls
    assert commands(srv)[0] == "EHLO"


def test_plain_never_starttls(smtp_server, ssl_cert_env):
    srv = smtp_server(tls="starttls")
    deliver(settings(srv, stream_type="plain"))
    assert not srv.messages[0].tls
    assert "STARTTLS" not in commands(srv)


@pytest.mark.parametrize("cert", ["untrusted", "wrong_host"])
@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_bad_certificate_refused(smtp_server, ssl_cert_env, cert, mode):
    srv = smtp_server(tls="starttls" if mode == "starttls" else "implicit", cert=cert)
    with pytest.raises(TransientError, match="certificate"):
        deliver(settings(srv, stream_type=mode))
    assert not srv.messages
    assert "MAIL" not in commands(srv)


def test_nil_with_bad_certificate_does_not_fall_back_to_plain(smtp_server, ssl_cert_env):
    srv = smtp_server(tls="starttls", cert="untrusted")
    with pytest.raises(TransientError, match="certificate"):
        deliver(settings(srv))
    assert "MAIL" not in commands(srv)


def test_localhost_name_checked_against_certificate(smtp_server, ssl_cert_env):
    srv = smtp_server(tls="starttls")
    deliver(settings(srv, host="localhost"))
    assert srv.messages[0].tls


# --- AUTH ------------------------------------------------------------------------

@pytest.mark.parametrize("offered,expected", [
    (["PLAIN"], "PLAIN"),
    (["LOGIN"], "LOGIN"),
    (["CRAM-MD5", "LOGIN", "PLAIN"], "CRAM-MD5"),   # smtpmail's order
    (["LOGIN", "PLAIN"], "PLAIN"),
])
def test_each_mechanism(smtp_server, ssl_cert_env, authinfo, offered, expected):
    srv = smtp_server(tls="starttls", auth=offered, users={USER: SECRET}, auth_require_tls=True)
    s = settings(srv, auth_sources=authinfo(
        f"machine 127.0.0.1 port {srv.port} login {USER} password '{SECRET}'"))
    tap = Tap()
    deliver(s, tap=tap)
    [m] = srv.messages
    assert (m.auth.mechanism, m.auth.user) == (expected, USER)
    assert_no_secret(tap.text)
    assert smtp.REDACTED in tap.text


def test_xoauth2_forced_by_smtp_auth_any_case(smtp_server, authinfo):
    token = "ya29.token-value"
    srv = smtp_server(auth=["PLAIN", "XOAUTH2"], users={USER: token})
    s = settings(srv, auth_sources=authinfo(
        f"machine 127.0.0.1 login {USER} password {token} smtp-auth XOAUTH2"))
    tap = Tap()
    deliver(s, tap=tap)
    assert srv.messages[0].auth.mechanism == "XOAUTH2"
    assert_no_secret(tap.text, secret=token)


def test_xoauth2_bad_token_is_auth_error(smtp_server, authinfo):
    srv = smtp_server(auth=["XOAUTH2"], users={USER: "good"})
    s = settings(srv, auth_supported=("xoauth2",), auth_sources=authinfo(
        f"machine 127.0.0.1 login {USER} password wrong-token"))
    tap = Tap()
    with pytest.raises(AuthError, match="535") as err:
        deliver(s, tap=tap)
    assert_no_secret(tap.text, str(err.value), secret="wrong-token")


def test_smtp_auth_overrides_order(smtp_server, authinfo):
    srv = smtp_server(auth=["LOGIN", "PLAIN"], users={USER: SECRET})
    s = settings(srv, auth_sources=authinfo(
        f"machine 127.0.0.1 login {USER} password '{SECRET}' smtp-auth LOGIN"))
    deliver(s)
    assert srv.messages[0].auth.mechanism == "LOGIN"


def test_smtp_auth_not_offered_is_clear(smtp_server, authinfo):
    srv = smtp_server(auth=["PLAIN"], users={USER: SECRET})
    s = settings(srv, auth_sources=authinfo(
        f"machine 127.0.0.1 login {USER} password '{SECRET}' smtp-auth cram-md5"))
    with pytest.raises(AuthError, match="does not offer AUTH CRAM-MD5"):
        deliver(s)
    assert "MAIL" not in commands(srv)


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_wrong_password_names_reply_never_secret(smtp_server, authinfo, mech):
    srv = smtp_server(auth=[mech], users={USER: "other"})
    s = settings(srv, auth_sources=authinfo(f"machine 127.0.0.1 login {USER} password '{SECRET}'"))
    tap = Tap()
    with pytest.raises(AuthError) as err:
        deliver(s, tap=tap)
    assert "535" in str(err.value) and "Authentication credentials invalid" in str(err.value)
    assert err.value.exit_code == 77
    assert_no_secret(tap.text, str(err.value))
    assert not srv.messages


def test_servers_requiring_authorization_without_credentials(smtp_server):
    srv = smtp_server(auth=["PLAIN"], users={USER: SECRET})
    s = settings(srv, servers_requiring_authorization=r"127\.0\.0\.")
    with pytest.raises(AuthError, match="requires authentication"):
        deliver(s)
    assert "MAIL" not in commands(srv)


def test_servers_requiring_authorization_with_credentials(smtp_server, authinfo):
    srv = smtp_server(auth=["PLAIN"], users={USER: SECRET})
    s = settings(srv, servers_requiring_authorization="^127",
                 auth_sources=authinfo(f"machine 127.0.0.1 login {USER} password '{SECRET}'"))
    deliver(s)
    assert srv.messages[0].auth.user == USER


def test_530_to_mail_retries_with_credentials_required(smtp_server):
    """smtpmail's 530 path: a new session in which credentials are demanded."""
    srv = smtp_server(auth=["PLAIN"], users={USER: SECRET}, auth_required=True)
    asked = []

    def provider(host, port, user, required):
        asked.append(required)
        return auth.Credentials(user=USER, secret=SECRET) if required else None

    smtp.send(settings(srv), envelope(), credentials=provider)
    assert asked == [False, True]
    assert srv.connections == 2
    assert srv.messages[0].auth.user == USER


def test_530_without_credentials_is_auth_error(smtp_server):
    srv = smtp_server(auth=["PLAIN"], users={USER: SECRET}, auth_required=True)
    with pytest.raises(AuthError, match="requires authentication") as err:
        deliver(settings(srv))
    assert err.value.exit_code == 77


def test_no_credentials_no_auth(smtp_server):
    srv = smtp_server(auth=["PLAIN"], users={USER: SECRET})
    deliver(settings(srv))
    assert srv.messages[0].auth is None


# --- retries and failures -----------------------------------------------------------

def test_4xx_to_mail_retried_then_success(smtp_server):
    srv = smtp_server()
    srv.fail("MAIL", 451, "4.3.0 Try again later", times=2)
    tap = Tap()
    deliver(settings(srv, retries=10), tap=tap)
    assert srv.connections == 3 and len(srv.messages) == 1
    assert "Got transient error code 451 when sending; retrying attempt 1..." in tap.text


def test_4xx_retries_exhausted(smtp_server):
    srv = smtp_server()
    srv.fail("MAIL", 421, "4.3.0 Try again later", times=10)
    with pytest.raises(TransientError, match="421 4.3.0 Try again later") as err:
        deliver(settings(srv, retries=3))
    assert srv.connections == 3
    assert err.value.code == 421 and err.value.exit_code == 75


def test_4xx_to_rcpt_is_not_retried(smtp_server):
    srv = smtp_server()
    srv.fail("RCPT", 450, "4.2.0 mailbox busy")
    with pytest.raises(TransientError, match="450"):
        deliver(settings(srv))
    assert srv.connections == 1 and not srv.messages


def test_any_refused_recipient_fails_the_send(smtp_server):
    srv = smtp_server()
    srv.fail("RCPT", 550, "5.1.1 <bad@example.com>: no such user", match="bad@example.com")
    with pytest.raises(PermanentError, match="5.1.1 <bad@example.com>: no such user") as err:
        deliver(settings(srv), envelope(rcpts=["good@example.com", "bad@example.com"]))
    assert err.value.exit_code == 69
    assert not srv.messages and not srv.received_but_unacknowledged


def test_refused_recipient_lockstep_sends_no_data(smtp_server):
    srv = smtp_server(pipelining=False)
    srv.fail("RCPT", 550, "5.1.1 nope", match="bad@example.com")
    with pytest.raises(PermanentError):
        deliver(settings(srv), envelope(rcpts=["bad@example.com", "good@example.com"]))
    assert "DATA" not in commands(srv)


def test_end_of_data_rejection(smtp_server):
    srv = smtp_server()
    srv.fail("DATA_END", 554, "5.6.0 Message rejected")
    with pytest.raises(PermanentError, match="554 5.6.0 Message rejected"):
        deliver(settings(srv))


def test_disconnect_reports_real_error_not_quit(smtp_server):
    srv = smtp_server()
    srv.disconnect("MAIL")
    with pytest.raises(TransientError, match="lost") as err:
        deliver(settings(srv, retries=1))
    assert "QUIT" not in str(err.value)


def test_stalled_server_times_out(smtp_server):
    srv = smtp_server()
    srv.stall("MAIL")
    with pytest.raises(TransientError, match="timed out"):
        deliver(settings(srv, command_timeout=0.5))


def test_no_reply_after_final_dot_is_ambiguous(smtp_server):
    srv = smtp_server()
    srv.stall("DATA_END")
    with pytest.raises(AmbiguousDeliveryError, match="may or may not"):
        deliver(settings(srv, data_timeout=0.5))
    assert len(srv.received_but_unacknowledged) == 1


def test_greeting_refused(smtp_server):
    srv = smtp_server(greeting_code=554, greeting="5.7.1 go away")
    with pytest.raises(PermanentError, match="554 5.7.1 go away"):
        deliver(settings(srv))


def test_connection_refused_is_transient():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    s = Settings(smtp_server="127.0.0.1", smtp_service=port, auth_sources=())
    with pytest.raises(TransientError, match="cannot connect"):
        smtp.send(s, envelope())


def test_no_server_configured():
    with pytest.raises(ConfigError, match="smtp-server"):
        smtp.send(Settings(), envelope())


# --- dialogue details ----------------------------------------------------------------

def test_helo_fallback(smtp_server):
    srv = smtp_server(helo_only=True)
    deliver(settings(srv, local_domain="example.test"))
    name = f"{socket.gethostname()}.example.test"
    assert [c for _, c in srv.commands][:2] == [f"EHLO {name}", f"HELO {name}"]
    # after HELO no extensions are known: no SIZE=
    assert srv.messages[0].mail_options == []


def test_local_domain_in_ehlo(smtp_server):
    srv = smtp_server()
    deliver(settings(srv, local_domain="example.test"))
    assert srv.messages[0].ehlo_name == f"{socket.gethostname()}.example.test"


def test_sendto_domain_only_for_bare_names(smtp_server):
    srv = smtp_server()
    deliver(settings(srv, sendto_domain="example.org"),
            envelope(rcpts=["bob", "carol@example.com"]))
    assert srv.messages[0].rcpt_tos == ["bob@example.org", "carol@example.com"]


def test_size_and_8bitmime_and_long_lines(smtp_server):
    srv = smtp_server()
    body = "Grüße ".encode() + b"x" * 2000 + b"\n"
    data = b"To: bob@example.net\nSubject: s\n\n" + body
    deliver(settings(srv), envelope(data))
    [m] = srv.messages
    assert f"SIZE={data_info(data).size}" in m.mail_options
    assert "BODY=8BITMIME" in m.mail_options
    assert m.data == data.replace(b"\n", b"\r\n")


def test_no_8bitmime_when_not_offered(smtp_server):
    srv = smtp_server(eightbitmime=False)
    deliver(settings(srv), envelope(b"To: b@x.y\n\n\xc3\xa9\n"))
    assert "BODY=8BITMIME" not in srv.messages[0].mail_options
    assert srv.messages[0].data == b"To: b@x.y\r\n\r\n\xc3\xa9\r\n"


def test_ascii_body_has_no_body_parameter(smtp_server):
    srv = smtp_server()
    deliver(settings(srv))
    assert not any(o.startswith("BODY=") for o in srv.messages[0].mail_options)


def test_smtputf8_when_needed(smtp_server):
    srv = smtp_server()
    deliver(settings(srv), envelope(rcpts=["jürgen@example.de"]))
    assert "SMTPUTF8" in srv.messages[0].mail_options
    assert srv.messages[0].rcpt_tos == ["jürgen@example.de"]


def test_smtputf8_needed_but_not_offered(smtp_server):
    srv = smtp_server(smtputf8=False)
    with pytest.raises(PermanentError, match="SMTPUTF8"):
        deliver(settings(srv), envelope(rcpts=["jürgen@example.de"]))
    assert "MAIL" not in commands(srv)


def test_dot_stuffing_round_trip(smtp_server):
    srv = smtp_server()
    data = b"To: b@x.y\n\n.\n..\n.x\n. \nend\n"
    deliver(settings(srv), envelope(data))
    assert srv.messages[0].data == data.replace(b"\n", b"\r\n")
    wire = srv.sessions[srv.messages[0].session_id].client_bytes()
    assert b"\r\n..\r\n...\r\n..x\r\n.. \r\nend\r\n.\r\n" in wire


def test_cr_lf_nul_in_address_refused_before_connecting(smtp_server):
    srv = smtp_server()
    for bad in ["a@x.y\r\nRCPT TO:<evil@x.y>", "a\n@x.y", "a\x00@x.y"]:
        with pytest.raises(MessageError):
            deliver(settings(srv), envelope(rcpts=[bad]))
        with pytest.raises(MessageError):
            deliver(settings(srv), Envelope(bad, ["b@x.y"], MESSAGE))
    with pytest.raises(MessageError, match="sendto-domain"):
        deliver(settings(srv, sendto_domain="x.y>\r\nRSET"), envelope(rcpts=["bare"]))
    assert srv.connections == 0


def test_verb_when_debug_verb(smtp_server):
    srv = smtp_server(verb=True)
    deliver(settings(srv, debug_verb=True))
    assert "VERB" in commands(srv)
    srv2 = smtp_server(verb=True)
    deliver(settings(srv2))
    assert "VERB" not in commands(srv2)


def test_pipelining_batches_mail_rcpt_data(smtp_server):
    srv = smtp_server(pipelining=True)
    with smtp.Sender(settings(srv), auth.FileCredentials(settings(srv))) as sender:
        sender.deliver(envelope(rcpts=["a@x.y", "b@x.y", "c@x.y"]))
        sid = srv.messages[0].session_id
        before = srv.round_trips(sid)
        sender.deliver(envelope(rcpts=["a@x.y", "b@x.y", "c@x.y"]))
        srv.wait_for_messages(2)
        per_message = srv.round_trips(sid) - before
    assert len(srv.messages) == 2 and srv.connections == 1
    assert per_message <= 2


def test_pipelined_partial_rcpt_failure_delivers_nothing(smtp_server):
    srv = smtp_server(pipelining=True)
    srv.fail("RCPT", 550, "5.1.1 nope", match="bad@x.y")
    with pytest.raises(PermanentError):
        deliver(settings(srv), envelope(rcpts=["good@x.y", "bad@x.y"]))
    assert not srv.messages


def test_reuse_after_failed_message_resets(smtp_server):
    srv = smtp_server(pipelining=False)
    srv.fail("RCPT", 550, "5.1.1 nope", match="bad@x.y")
    with smtp.Sender(settings(srv)) as sender:
        with pytest.raises(PermanentError):
            sender.deliver(envelope(rcpts=["bad@x.y"]))
        sender.deliver(envelope(rcpts=["good@x.y"]))
    assert srv.connections == 1
    assert "RSET" in commands(srv)
    assert [m.rcpt_tos for m in srv.messages] == [["good@x.y"]]


def test_transcript_has_both_directions(smtp_server):
    srv = smtp_server()
    tap = Tap()
    deliver(settings(srv), tap=tap)
    assert any(line.startswith("C: MAIL FROM:<alice@example.org>") for line in tap.lines)
    assert any(line.startswith("S: 250") for line in tap.lines)
    assert tap.lines[-2] == "C: QUIT"


def test_prepare_then_send_fixture_message(smtp_server):
    """A message composed as Emacs fixture a: same envelope and bytes as Emacs sent."""
    fixtures = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "emacs-queue"
    data = (fixtures / "queued-mail" / "2026-12-03_22:51:20_1").read_bytes()
    srv = smtp_server()
    env = prepare(data, sender="flusher@example.org", recipients=None, extract=True)
    deliver(settings(srv), env)
    expected = (fixtures / "delivered" / "1-a.data.eml").read_bytes()
    assert srv.messages[0].data == expected
    assert srv.messages[0].mail_options == ["SIZE=424"]


def test_client_certificate_from_authinfo(smtp_server, ssl_cert_env, authinfo, tls_ca):
    srv = smtp_server(tls="starttls", request_client_cert=True)
    s = settings(srv, auth_sources=authinfo(
        f'machine 127.0.0.1 port {srv.port} key "{tls_ca.client_key_pem}" '
        f'cert "{tls_ca.client_cert_pem}"'))
    deliver(s)
    [m] = srv.messages
    assert m.tls
    assert srv.sessions[m.session_id].client_cert_subject


def test_530_path_transcript_redacted(smtp_server):
    srv = smtp_server(auth=["LOGIN"], users={USER: SECRET}, auth_required=True)
    tap = Tap()

    def provider(host, port, user, required):
        return auth.Credentials(user=USER, secret=SECRET) if required else None

    smtp.send(settings(srv), envelope(), credentials=provider, transcript=tap)
    assert "C: AUTH LOGIN" in tap.text and tap.text.count(smtp.REDACTED) == 2
    assert_no_secret(tap.text)


@pytest.mark.parametrize("tls", ["none", "starttls"])
def test_cancel_wakes_a_blocked_read(smtp_server, ssl_cert_env, tls):
    import threading
    from bridge.errors import Cancelled
    srv = smtp_server(tls=tls)
    hold = srv.hold("MAIL")
    cancel = smtp.Cancel()
    outcome = {}

    def run():
        try:
            smtp.send(settings(srv, command_timeout=60), envelope(), cancel=cancel)
        except Exception as e:            # noqa: BLE001 - the test inspects it
            outcome["error"] = e

    t = threading.Thread(target=run)
    t.start()
    assert hold.wait_reached(20)
    cancel.set()
    t.join(20)
    assert not t.is_alive()               # woke without waiting for the 60 s timeout
    assert isinstance(outcome["error"], Cancelled)
    hold.release()
    assert not srv.messages


def test_cancel_during_retry_wait(smtp_server):
    import threading
    from bridge.errors import Cancelled
    srv = smtp_server()
    srv.fail("MAIL", 451, "4.3.0 later", times=10)
    cancel = smtp.Cancel()
    seen = threading.Event()

    def tap(direction, line):
        if "retrying attempt 1" in line:
            seen.set()
            cancel.set()

    with pytest.raises(Cancelled):
        smtp.send(settings(srv, retries=10, retry_delay=60), envelope(), transcript=tap,
                  cancel=cancel)
    assert seen.is_set() and srv.connections == 1


def test_reply_with_code_starting_with_0_is_skipped_as_smtpmail_does():
    """Experiment e16: `050 ignored line` then `250 ok` counts as 250."""
    import threading
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    received = []

    def serve():
        conn, _ = listener.accept()
        f = conn.makefile("rb")
        conn.sendall(b"220 scripted ESMTP\r\n")
        replies = {b"EHLO": b"250 OK\r\n", b"MAIL": b"050 ignored line\r\n250 ok\r\n",
                   b"RCPT": b"250 OK\r\n", b"DATA": b"354 go\r\n", b"QUIT": b"221 bye\r\n"}
        while True:
            line = f.readline()
            if not line:
                break
            received.append(line)
            verb = line.split(b" ")[0].strip().upper()
            if verb == b"DATA":
                conn.sendall(replies[verb])
                while f.readline() != b".\r\n":
                    pass
                conn.sendall(b"250 queued\r\n")
                continue
            conn.sendall(replies.get(verb, b"500 what\r\n"))
            if verb == b"QUIT":
                break
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    s = Settings(smtp_server="127.0.0.1", smtp_service=listener.getsockname()[1],
                 auth_sources=(), command_timeout=5.0)
    tap = Tap()
    assert smtp.send(s, envelope(), transcript=tap) == "250 queued"
    t.join(10)
    listener.close()
    assert "S: 050 ignored line" in tap.text
    assert [line.split()[0] for line in received] == [b"EHLO", b"MAIL", b"RCPT", b"DATA", b"QUIT"]


def test_55x_to_rcpt_retries_with_credentials_required(smtp_server):
    """smtpmail: a 550-554 to RCPT while AUTH is offered and we had not logged in
    starts a new session in which credentials are demanded (relay denied)."""
    srv = smtp_server(auth=["PLAIN"], users={USER: SECRET}, pipelining=False)
    srv.fail("RCPT", 554, "5.7.1 relay access denied")
    asked = []

    def provider(host, port, user, required):
        asked.append(required)
        return auth.Credentials(user=USER, secret=SECRET) if required else None

    smtp.send(settings(srv), envelope(), credentials=provider)
    assert asked == [False, True] and srv.connections == 2
    assert srv.messages[0].auth.user == USER


def test_55x_to_rcpt_after_login_is_final(smtp_server, authinfo):
    srv = smtp_server(auth=["PLAIN"], users={USER: SECRET})
    srv.fail("RCPT", 550, "5.1.1 no such user")
    s = settings(srv, auth_sources=authinfo(f"machine 127.0.0.1 login {USER} password '{SECRET}'"))
    with pytest.raises(PermanentError, match="5.1.1 no such user"):
        deliver(s)
    assert srv.connections == 1
