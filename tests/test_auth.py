"""bridge.auth: netrc parsing/matching, gpg, password-command, SASL payloads.

SASL payloads and mechanism choices are checked against what real Emacs
28.2 sent in /work/shared/fixtures/transcripts.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import auth
from bridge.auth import Credentials, FileCredentials, parse_netrc
from bridge.config import Settings
from bridge.errors import AuthError

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "transcripts"
USER = "alice@example.org"
SECRET = 's3cr"et pass'
CI = os.environ.get("CI") == "true"


def client_lines(case: str) -> list[str]:
    """What Emacs sent in a fixture case, one command per item, CRLF removed."""
    text = (FIXTURES / f"{case}.server-view.txt").read_text()
    return [line[3:].removesuffix("\\r\\n") for line in text.splitlines()
            if line.startswith("C: ")]


def server_lines(case: str) -> list[str]:
    text = (FIXTURES / f"{case}.server-view.txt").read_text()
    return [line[3:].removesuffix("\\r\\n") for line in text.splitlines()
            if line.startswith("S: ")]


def offered_mechanisms(case: str) -> list[str]:
    for line in server_lines(case):
        if line[4:].startswith("AUTH "):
            return line[9:].split()
    raise AssertionError(f"{case}: no AUTH capability")


def settings(**kw: object) -> Settings:
    return Settings(**kw)  # type: ignore[arg-type]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    return h


# ---------------------------------------------------------------------------
# parse_netrc


AUTHINFO_CASES = sorted(p.stem for p in FIXTURES.glob("*.authinfo"))


def test_fixture_cases_present() -> None:
    assert len(AUTHINFO_CASES) >= 7


@pytest.mark.parametrize("case", AUTHINFO_CASES)
def test_parses_emacs_fixture_authinfo(case: str) -> None:
    entries = parse_netrc((FIXTURES / f"{case}.authinfo").read_text())
    assert len(entries) == 1
    e = entries[0]
    assert e["machine"] == "127.0.0.1"
    assert e["login"] == USER
    assert e["password"] == SECRET
    assert e["port"].isdigit()
    assert e.line == 1
    if "smtp-auth" in case:
        assert e["smtp-auth"] == "login"


def test_quotes_of_both_kinds_without_escapes() -> None:
    [e] = parse_netrc("""machine h login "it's me" password 'say "hi"' key "a\\b" """)
    assert e["login"] == "it's me"
    assert e["password"] == 'say "hi"'
    assert e["key"] == "a\\b"


def test_empty_quoted_value_and_adjacent_tokens() -> None:
    [e] = parse_netrc("machine h password '' port 'smtp'x 1")
    assert e["password"] == ""
    assert e["port"] == "smtp"
    assert e["x"] == "1"


def test_unterminated_quote_is_a_bare_token() -> None:
    [e] = parse_netrc("machine h password 'abc login bob")
    assert e["password"] == "'abc"
    assert e["login"] == "bob"


def test_comments_only_where_a_token_starts() -> None:
    text = ("# a comment machine nothere\n"
            "machine h password pa#ss # trailing machine x\n"
            "   # indented comment\n"
            "login '#notcomment'\n")
    [e] = parse_netrc(text)
    assert e == {"machine": "h", "password": "pa#ss", "login": "#notcomment"}


def test_several_entries_per_line_and_entries_spanning_lines() -> None:
    text = ("machine a login x password 1 machine b login y password 2\n"
            "machine c\n  login z\n\n  password 3\n"
            "machine d\tport\n587\n")
    entries = parse_netrc(text)
    assert [(e["machine"], e.get("login"), e.get("password"), e.line) for e in entries] == [
        ("a", "x", "1", 1), ("b", "y", "2", 1), ("c", "z", "3", 2), ("d", None, None, 6)]
    assert entries[3]["port"] == "587"


def test_aliases_map_to_canonical_keys_first_wins() -> None:
    [e] = parse_netrc("host h account acc user u secret s protocol submission password p")
    assert e == {"machine": "h", "login": "acc", "password": "s", "port": "submission"}


def test_other_keys_kept() -> None:
    [e] = parse_netrc('machine m port 25 key "~/.k" cert "~/.c" smtp-auth LOGIN')
    assert e["key"] == "~/.k" and e["cert"] == "~/.c" and e["smtp-auth"] == "LOGIN"


def test_default_entry() -> None:
    entries = parse_netrc("machine a password 1\ndefault login anon password guest\n")
    assert [e.default for e in entries] == [False, True]
    assert entries[1] == {"login": "anon", "password": "guest"}
    assert entries[1].line == 2
    assert auth.match(entries, "elsewhere", 25, None) is entries[1]
    assert auth.match(entries, "a", 25, None) is entries[0]


def test_macdef_body_skipped() -> None:
    text = ("machine ftp.example login a password b\n"
            "macdef init\n"
            "machine evil password bad\n"
            "cd /pub\n"
            "\n"
            "machine m password c\n")
    entries = parse_netrc(text)
    assert [e.get("machine") for e in entries] == ["ftp.example", "m"]
    assert entries[1].line == 6


def test_machine_as_value_is_an_error_with_line() -> None:
    with pytest.raises(AuthError, match="line 2: unexpected 'machine'"):
        parse_netrc("machine a\nlogin machine b")


def test_quoted_machine_is_a_value() -> None:
    [e] = parse_netrc("machine h password 'machine'")
    assert e["password"] == "machine"


def test_trailing_key_without_value_ignored() -> None:
    assert parse_netrc("machine a login") == [{"machine": "a"}]


def test_crlf_file() -> None:
    [e] = parse_netrc("machine a\r\nlogin b\r\npassword c\r\n")
    assert e == {"machine": "a", "login": "b", "password": "c"}


def test_entry_repr_hides_password() -> None:
    [e] = parse_netrc("machine a password hunter2")
    assert "hunter2" not in repr(e)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30))
def test_any_value_without_both_quotes_round_trips(value: str) -> None:
    quote = "'" if "'" not in value else '"'
    if quote in value:
        return
    [e] = parse_netrc(f"machine h password {quote}{value}{quote} login u")
    assert e["password"] == value
    assert e["login"] == "u"


# ---------------------------------------------------------------------------
# match


def test_host_is_exact_string_equality() -> None:
    entries = parse_netrc("machine 127.0.0.1 password p")
    assert auth.match(entries, "127.0.0.1", 25, None) is entries[0]
    assert auth.match(entries, "localhost", 25, None) is None
    assert auth.match(entries, "127.0.0.1.", 25, None) is None


def test_first_match_wins() -> None:
    entries = parse_netrc("machine h password first\nmachine h password second")
    assert auth.match(entries, "h", 25, None)["password"] == "first"


def test_missing_keys_match_anything() -> None:
    entries = parse_netrc("password p")  # no machine, port or login
    assert auth.match(entries, "any.host", 2525, "anyone") is entries[0]


@pytest.mark.parametrize("entry_port,service,expected", [
    ("25", 25, True), ("25", "25", True), ("smtp", 25, True), ("smtp", "25", True),
    ("25", "smtp", True), ("SMTP", "smtp", True), ("587", "submission", True),
    ("submission", 587, True), ("smtps", 465, True), ("465", "smtps", True),
    ("smtp", 587, False), ("smtp", "submission", False), ("587", 25, False),
    ("52570", 52570, True), ("52570", 52571, False),
    ("weird-name", "weird-name", True), ("weird-name", "other-name", False),
])
def test_port_matching(entry_port: str, service: int | str, expected: bool) -> None:
    entries = parse_netrc(f"machine h port {entry_port} password p")
    assert (auth.match(entries, "h", service, None) is not None) is expected


def test_port_names_resolve_without_etc_services(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_services(name: str, proto: str = "tcp") -> int:
        raise OSError("service/proto not found")
    monkeypatch.setattr(socket, "getservbyname", no_services)
    assert auth.service_port("submission") == 587
    assert auth.service_port("smtp") == 25
    assert auth.service_port("smtps") == 465
    assert auth.service_port("pop3") is None
    assert auth.port_matches("pop3", "pop3")


def test_port_names_from_system_services() -> None:
    try:
        pop3 = socket.getservbyname("pop3", "tcp")
    except OSError:
        pytest.skip("no services database here")
    assert auth.port_matches("pop3", pop3)
    assert auth.port_matches(str(pop3), "pop3")


def test_port_smtp_entry_skipped_for_later_entry_without_port() -> None:
    # The observed Emacs case: service 52580, first entry "port smtp".
    entries = parse_netrc("machine h port smtp password a\nmachine h password b")
    assert auth.match(entries, "h", 52580, None)["password"] == "b"


def test_user_filter() -> None:
    entries = parse_netrc("machine h login bob password 1\n"
                          "machine h password 2\n"
                          "machine h login alice password 3\n")
    assert auth.match(entries, "h", 25, "alice")["password"] == "2"
    assert auth.match(entries, "h", 25, "bob")["password"] == "1"
    assert auth.match(entries, "h", 25, None)["password"] == "1"
    only_named = [entries[0], entries[2]]
    assert auth.match(only_named, "h", 25, "alice")["password"] == "3"
    assert auth.match(only_named, "h", 25, "carol") is None


# ---------------------------------------------------------------------------
# lookup from files


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_lookup_reads_authinfo_with_source_line(home: Path) -> None:
    write(home / ".authinfo", "# mine\nmachine other password x\n"
          "machine smtp.example.org port submission login alice "
          "password 'p w' smtp-auth CRAM-MD5\n")
    creds = auth.lookup("smtp.example.org", 587, None, settings())
    assert creds == Credentials("alice", "p w", "cram-md5", None, None,
                                "~/.authinfo line 3")
    assert "p w" not in repr(creds)


def test_sources_in_order_and_home_expanded_at_call_time(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(home / ".netrc", "machine h login n password from-netrc\n")
    assert auth.lookup("h", 25, None, settings()).secret == "from-netrc"
    write(home / ".authinfo", "machine h login a password from-authinfo\n")
    assert auth.lookup("h", 25, None, settings()).secret == "from-authinfo"
    other = tmp_path / "other"
    other.mkdir()
    write(other / ".netrc", "machine h login o password other-home\n")
    monkeypatch.setenv("HOME", str(other))
    assert auth.lookup("h", 25, None, settings()).secret == "other-home"


def test_later_source_used_when_earlier_has_no_match(home: Path) -> None:
    write(home / ".authinfo", "machine elsewhere login a password 1\n")
    write(home / ".netrc", "machine h login n password 2\n")
    creds = auth.lookup("h", 25, None, settings())
    assert (creds.secret, creds.source) == ("2", "~/.netrc line 1")


def test_configured_sources(home: Path, tmp_path: Path) -> None:
    f = write(tmp_path / "creds.txt", "machine h login u password p\n")
    s = settings(auth_sources=(str(f),))
    write(home / ".authinfo", "machine h login other password other\n")
    creds = auth.lookup("h", 25, None, s)
    assert creds.secret == "p" and creds.source == f"{f} line 1"


def test_nothing_found_gives_hint(home: Path) -> None:
    res = auth.lookup_result("h", 25, "bob", settings())
    assert res.credentials is None
    assert res.hint == ("no entry for host h port 25 user bob in "
                        "~/.authinfo.gpg, ~/.authinfo, ~/.netrc")


def test_login_without_password_is_reported_not_skipped(home: Path) -> None:
    write(home / ".authinfo", "machine h login alice\nmachine h login alice password late\n")
    res = auth.lookup_result("h", 25, None, settings())
    assert res.credentials is None
    assert res.hint is not None
    assert "~/.authinfo line 1" in res.hint and "alice" in res.hint
    assert "no password" in res.hint


def test_password_without_login_uses_smtp_user(home: Path) -> None:
    write(home / ".authinfo", "machine h password p\n")
    assert auth.lookup("h", 25, "carol", settings()).user == "carol"
    res = auth.lookup_result("h", 25, None, settings())
    assert res.credentials is None and "no login" in res.hint


def test_key_and_cert_expanded_in_credentials(home: Path) -> None:
    write(home / ".authinfo", 'machine h login u password p key "~/k.pem" cert ~/c.pem\n')
    creds = auth.lookup("h", 25, None, settings())
    assert creds.key == str(home / "k.pem") and creds.cert == str(home / "c.pem")


def test_unreadable_file_is_auth_error(home: Path) -> None:
    # A directory where the file should be is unreadable even for root
    # (CI runs as root, where mode 000 would not stop the read).
    (home / ".authinfo").mkdir()
    with pytest.raises(AuthError, match=r"cannot read ~/\.authinfo"):
        auth.lookup("h", 25, None, settings())


def test_syntax_error_names_file(home: Path) -> None:
    write(home / ".netrc", "machine h\n\nlogin machine\n")
    with pytest.raises(AuthError, match=r"^~/\.netrc: line 3: "):
        auth.lookup("h", 25, None, settings())


# ---------------------------------------------------------------------------
# password-command


def test_password_command_first_line_is_secret(home: Path) -> None:
    s = settings(smtp_user="alice", password_command="printf 'tok en\\r\\nsecond\\n'")
    creds = auth.lookup("h", 587, "alice", s)
    assert creds == Credentials("alice", "tok en", source="password-command")


def test_password_command_user_from_entry_without_password(home: Path) -> None:
    write(home / ".authinfo", "machine h login bob smtp-auth XOAUTH2\n")
    s = settings(password_command="echo token123")
    creds = auth.lookup("h", 25, None, s)
    assert (creds.user, creds.secret, creds.mechanism) == ("bob", "token123", "xoauth2")
    assert creds.source == "password-command (login from ~/.authinfo line 1)"


def test_entry_password_wins_over_password_command(home: Path) -> None:
    write(home / ".authinfo", "machine h login bob password filepw\n")
    marker = home / "ran"
    s = settings(password_command=f"touch {marker}; echo cmd")
    assert auth.lookup("h", 25, None, s).secret == "filepw"
    assert not marker.exists()


def test_password_command_not_run_without_user(home: Path) -> None:
    marker = home / "ran"
    s = settings(password_command=f"touch {marker}; echo cmd")
    res = auth.lookup_result("h", 25, None, s)
    assert res.credentials is None and "smtp-user" in res.hint
    assert not marker.exists()


def test_failing_password_command_reports_status_not_output(home: Path) -> None:
    s = settings(smtp_user="u", password_command="echo leaked-secret; exit 3")
    with pytest.raises(AuthError) as info:
        auth.lookup("h", 25, "u", s)
    assert "exit status 3" in str(info.value)
    assert "leaked-secret" not in str(info.value)


def test_password_command_with_empty_output(home: Path) -> None:
    s = settings(smtp_user="u", password_command="echo; echo second")
    with pytest.raises(AuthError, match="printed nothing"):
        auth.lookup("h", 25, "u", s)


def test_password_command_does_not_read_our_stdin(home: Path) -> None:
    # stdin is /dev/null, so `cat` ends at once with no output.
    s = settings(smtp_user="u", password_command="cat; echo after-cat")
    assert auth.lookup("h", 25, "u", s).secret == "after-cat"


# ---------------------------------------------------------------------------
# gpg


def need_gpg() -> None:
    if shutil.which("gpg") is None:
        if CI:
            pytest.fail("gpg is required when CI=true")
        pytest.skip("gpg not installed")


@pytest.fixture(scope="module")
def gnupg_home(tmp_path_factory: pytest.TempPathFactory):
    need_gpg()
    gh = tmp_path_factory.mktemp("gnupg")
    gh.chmod(0o700)
    env = {**os.environ, "GNUPGHOME": str(gh)}
    subprocess.run(["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
                    "--quick-gen-key", "test@example.invalid", "default", "default",
                    "never"], env=env, check=True, capture_output=True)
    yield gh
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False,
                   capture_output=True)


def encrypt(gh: Path, plaintext: bytes, out: Path | None = None) -> bytes:
    argv = ["gpg", "--batch", "--yes", "--trust-model", "always",
            "--recipient", "test@example.invalid", "--encrypt"]
    if out is not None:
        argv += ["--output", str(out)]
    proc = subprocess.run(argv, input=plaintext, capture_output=True, check=True,
                          env={**os.environ, "GNUPGHOME": str(gh)})
    return proc.stdout


def test_authinfo_gpg_decrypted_and_first(home: Path, gnupg_home: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GNUPGHOME", str(gnupg_home))
    text = f"machine 127.0.0.1 login {USER} password 's3cr\"et pass' port 587\n"
    encrypt(gnupg_home, text.encode(), home / ".authinfo.gpg")
    write(home / ".authinfo", "machine 127.0.0.1 login plain password plain\n")
    before = sorted(p.name for p in home.iterdir())
    creds = auth.lookup("127.0.0.1", "submission", None, settings())
    assert creds == Credentials(USER, SECRET, source="~/.authinfo.gpg line 1")
    assert sorted(p.name for p in home.iterdir()) == before


def test_gpg_password_token(home: Path, gnupg_home: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GNUPGHOME", str(gnupg_home))
    token = base64.b64encode(encrypt(gnupg_home, b"tokensecret")).decode()
    write(home / ".authinfo", f"machine h login u password gpg:{token}\n")
    assert auth.lookup("h", 25, None, settings()).secret == "tokensecret"


def test_gpg_failure_names_file_and_gpg_message(home: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    need_gpg()
    empty = tmp_path / "empty-gnupg"
    empty.mkdir(mode=0o700)
    monkeypatch.setenv("GNUPGHOME", str(empty))
    write(home / ".authinfo.gpg", "this is not OpenPGP data\n")
    try:
        with pytest.raises(AuthError) as info:
            auth.lookup("h", 25, None, settings())
    finally:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], check=False,
                       capture_output=True)
    assert str(info.value) == ("cannot decrypt ~/.authinfo.gpg: "
                               "gpg: no valid OpenPGP data found.")


def test_gpg_missing(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(home / ".authinfo.gpg", "irrelevant\n")
    bare = tmp_path / "bin"
    bare.mkdir()
    monkeypatch.setenv("PATH", str(bare))
    with pytest.raises(AuthError, match=r"cannot decrypt ~/\.authinfo\.gpg: gpg is not installed"):
        auth.lookup("h", 25, None, settings())


# ---------------------------------------------------------------------------
# client certificates


def test_client_certificate(home: Path) -> None:
    (home / "k.pem").write_text("key")
    (home / "c.pem").write_text("cert")
    write(home / ".authinfo", "machine mail.example.org port 25 login u "
          'key "~/k.pem" cert "~/c.pem"\n')
    assert auth.client_certificate("mail.example.org", "smtp", settings()) == (
        str(home / "k.pem"), str(home / "c.pem"))
    assert auth.client_certificate("mail.example.org", 587, settings()) is None
    assert auth.client_certificate("other", 25, settings()) is None


def test_client_certificate_needs_readable_files_in_first_match(home: Path) -> None:
    (home / "k.pem").write_text("key")
    (home / "c.pem").write_text("cert")
    write(home / ".authinfo", 'machine m key ~/k.pem cert ~/missing.pem\n'
          'machine m key ~/k.pem cert ~/c.pem\n')
    assert auth.client_certificate("m", 25, settings()) is None
    write(home / ".authinfo", 'machine m login x password p\n'
          'machine m key ~/k.pem cert ~/c.pem\n')
    assert auth.client_certificate("m", 25, settings()) is None


# ---------------------------------------------------------------------------
# FileCredentials (CredentialProvider)


def test_provider_caches_results(home: Path) -> None:
    counter = home / "count"
    s = settings(smtp_user="u", password_command=f"echo x >> {counter}; echo tok")
    provider = FileCredentials(s)
    assert provider("h", 25, "u", False).secret == "tok"
    assert provider("h", 25, "u", True).secret == "tok"
    assert counter.read_text() == "x\n"
    provider.forget("h", 25)
    assert provider("h", 25, "u", False).secret == "tok"
    assert counter.read_text() == "x\nx\n"


def test_provider_required_raises_with_hint(home: Path) -> None:
    write(home / ".authinfo", "machine h login alice\n")
    provider = FileCredentials(settings())
    assert provider("h", 25, None, False) is None
    with pytest.raises(AuthError, match="h requires authentication: .*alice.*no password"):
        provider("h", 25, None, True)


def test_provider_caches_misses_until_forget(home: Path) -> None:
    provider = FileCredentials(settings())
    assert provider("h", 25, None, False) is None
    write(home / ".authinfo", "machine h login a password p\n")
    assert provider("h", 25, None, False) is None
    provider.forget("h", 25)
    assert provider("h", 25, None, False).secret == "p"


# ---------------------------------------------------------------------------
# SASL


def test_plain_matches_emacs() -> None:
    for case in ("01-auth-plain", "02-auth-plain-debug"):
        assert f"AUTH PLAIN {auth.plain_response(USER, SECRET)}" in client_lines(case)


@pytest.mark.parametrize("case", ["03-auth-login-only-debug", "04-smtp-auth-key-login-debug",
                                  "07-auth-login-wrong-password-debug"])
def test_login_matches_emacs(case: str) -> None:
    lines = client_lines(case)
    i = lines.index("AUTH LOGIN")
    assert lines[i + 1:i + 3] == [auth.login_user(USER), auth.login_secret(SECRET)]


def test_cram_md5_matches_emacs_for_fixture_challenge() -> None:
    case = "05-auth-cram-md5-debug"
    challenge = next(s[4:] for s in server_lines(case) if s.startswith("334 "))
    lines = client_lines(case)
    i = lines.index("AUTH CRAM-MD5")
    assert lines[i + 1] == auth.cram_md5_response(USER, SECRET, challenge)


def test_cram_md5_rfc2195_example() -> None:
    challenge = "PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"
    assert auth.cram_md5_response("tim", "tanstaaftanstaaf", challenge) == (
        "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw")


def test_cram_md5_bad_challenge() -> None:
    with pytest.raises(AuthError, match="not base64"):
        auth.cram_md5_response("u", "p", "not base64!")


def test_xoauth2_matches_emacs() -> None:
    assert (f"AUTH XOAUTH2 {auth.xoauth2_response(USER, SECRET)}"
            in client_lines("06-auth-xoauth2-debug"))


def test_non_ascii_is_utf8() -> None:
    assert base64.b64decode(auth.plain_response("ü", "ß")) == b"\0\xc3\xbc\0\xc3\x9f"


def fixture_authinfo_mechanism(case: str) -> str | None:
    [e] = parse_netrc((FIXTURES / f"{case}.authinfo").read_text())
    return e.get("smtp-auth")


@pytest.mark.parametrize("case,supported", [
    ("01-auth-plain", ("cram-md5", "plain", "login")),
    ("03-auth-login-only-debug", ("cram-md5", "plain", "login")),
    ("04-smtp-auth-key-login-debug", ("cram-md5", "plain", "login")),
    ("05-auth-cram-md5-debug", ("cram-md5", "plain", "login")),
    ("06-auth-xoauth2-debug", ("xoauth2", "cram-md5", "plain", "login")),
])
def test_choose_mechanism_as_emacs_did(case: str, supported: tuple[str, ...]) -> None:
    sent = next(line for line in client_lines(case) if line.startswith("AUTH "))
    expected = sent.split()[1].lower()
    got = auth.choose_mechanism(offered_mechanisms(case), supported,
                                fixture_authinfo_mechanism(case))
    assert got == expected


def test_xoauth2_only_when_listed_or_forced() -> None:
    offered = ["XOAUTH2", "PLAIN"]
    assert auth.choose_mechanism(offered, Settings().auth_supported, None) == "plain"
    assert auth.choose_mechanism(["XOAUTH2"], ("xoauth2",), None) == "xoauth2"
    assert auth.choose_mechanism(offered, Settings().auth_supported, "XOAuth2") == "xoauth2"


def test_forced_any_case() -> None:
    assert auth.choose_mechanism(["login", "plain"], ("plain",), "LOGIN") == "login"


def test_forced_not_offered() -> None:
    with pytest.raises(AuthError) as info:
        auth.choose_mechanism(["LOGIN", "PLAIN"], ("plain",), "cram-md5")
    assert str(info.value) == "server does not offer AUTH CRAM-MD5; it offers: LOGIN PLAIN"


def test_forced_unknown_mechanism() -> None:
    with pytest.raises(AuthError, match="AUTH SCRAM-SHA-1 .*not implemented"):
        auth.choose_mechanism(["SCRAM-SHA-1"], ("plain",), "scram-sha-1")


def test_nothing_in_common_names_both_lists() -> None:
    with pytest.raises(AuthError) as info:
        auth.choose_mechanism(["GSSAPI", "XOAUTH2"], ("cram-md5", "plain", "login"), None)
    assert str(info.value) == ("no AUTH mechanism in common: server offers GSSAPI XOAUTH2; "
                               "auth-supported is cram-md5 plain login")


def test_supported_order_not_server_order() -> None:
    assert auth.choose_mechanism(["LOGIN", "PLAIN", "CRAM-MD5"],
                                 ("login", "plain"), None) == "login"
    assert auth.choose_mechanism(["login", "plain", "cram-md5"],
                                 ("cram-md5", "plain", "login"), None) == "cram-md5"


def test_secret_forms_cover_what_emacs_sent() -> None:
    forms = auth.secret_forms(Credentials(USER, SECRET))
    sent = set(client_lines("01-auth-plain") + client_lines("03-auth-login-only-debug")
               + client_lines("06-auth-xoauth2-debug"))
    leaked = {line.split()[-1] for line in sent if line.startswith("AUTH ")} | {
        "czNjciJldCBwYXNz"}
    leaked.discard("LOGIN")
    assert SECRET in forms
    assert leaked <= forms
    assert auth.login_user(USER) not in forms
