"""The shell front end as users run it: real processes, real server, real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import auth
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[1]
USER = "alice@example.org"
SECRET = 's3cr"et pass'


@pytest.fixture
def home(tmp_path: Path, tls_ca) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


def env_for(home: Path, tls_ca, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SMTPMAIL_BRIDGE_") and k not in ("SMTPSERVER", "EMAIL")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               SSL_CERT_FILE=str(tls_ca.ca_pem), PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def write_config(home: Path, server, **settings: object) -> None:
    cfg = home / ".config" / "smtpmail-bridge"
    cfg.mkdir(parents=True, exist_ok=True)
    lines = ['smtp-server = "127.0.0.1"', f"smtp-service = {server.port}",
             'mail-address = "alice@example.org"', "retry-delay = 0"]
    for k, v in settings.items():
        lines.append(f"{k} = {json.dumps(v)}")
    (cfg / "config.toml").write_text("\n".join(lines) + "\n")


def write_authinfo(home: Path, password: str = SECRET) -> None:
    path = home / ".authinfo"
    path.write_text(f"machine 127.0.0.1 login {USER} password '{password}'\n")
    path.chmod(0o600)


def run(args: list[str], home: Path, tls_ca, data: bytes = b"", exe: list[str] | None = None,
        **env: str) -> subprocess.CompletedProcess:
    cmd = (exe or [sys.executable, "-m", "bridge"]) + args
    return subprocess.run(cmd, input=data, capture_output=True, timeout=60,
                          env=env_for(home, tls_ca, **env), cwd=str(home))


def no_secret(result: subprocess.CompletedProcess, secret: str = SECRET) -> None:
    forms = auth.secret_forms(auth.Credentials(user=USER, secret=secret))
    for form in forms:
        assert form.encode() not in result.stdout
        assert form.encode() not in result.stderr


README_MESSAGE = b"To: x@example.org\nSubject: t\n\nhi\n"


def test_readme_first_send_starttls_and_auth(smtp_server, home, tls_ca):
    srv = smtp_server(tls="starttls", auth=["PLAIN", "LOGIN"], users={USER: SECRET},
                      auth_require_tls=True)
    write_config(home, srv)
    write_authinfo(home)
    r = run(["send", "-t"], home, tls_ca, README_MESSAGE)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    [m] = srv.messages
    assert m.tls and m.auth.user == USER
    assert (m.mail_from, m.rcpt_tos) == ("alice@example.org", ["x@example.org"])
    assert m.data == README_MESSAGE.replace(b"\n", b"\r\n")


def test_debug_transcript_is_redacted(smtp_server, home, tls_ca):
    srv = smtp_server(tls="starttls", auth=["LOGIN"], users={USER: SECRET})
    write_config(home, srv)
    write_authinfo(home)
    r = run(["--debug", "send", "-t"], home, tls_ca, README_MESSAGE)
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert "C: AUTH LOGIN" in err and "<redacted>" in err and "S: 235" in err
    assert "C: MAIL FROM:<alice@example.org>" in err
    no_secret(r)


def test_bcc_stripped_but_delivered_and_flags(smtp_server, home, tls_ca):
    srv = smtp_server()
    write_config(home, srv)
    data = b"From: A <a@example.org>\nTo: t@x.y\nBcc: hidden@x.y\nSubject: s\n\nbody\n"
    r = run(["-oi", "send", "-f", "env@x.y", "-t"], home, tls_ca, data)
    assert r.returncode == 0, r.stderr
    [m] = srv.messages
    assert m.mail_from == "env@x.y"
    assert sorted(m.rcpt_tos) == ["hidden@x.y", "t@x.y"]
    assert b"Bcc" not in m.data and b"hidden" not in m.data


def test_positional_recipients_without_verb(smtp_server, home, tls_ca):
    srv = smtp_server()
    write_config(home, srv)
    data = b"From: a@example.org\nTo: header@x.y\n\nbody\n"
    r = run(["-oi", "-fme@x.y", "one@x.y", "two@x.y"], home, tls_ca, data)
    assert r.returncode == 0, r.stderr
    assert srv.messages[0].rcpt_tos == ["one@x.y", "two@x.y"]
    assert srv.messages[0].mail_from == "me@x.y"


def test_lone_dot_does_not_end_input(smtp_server, home, tls_ca):
    srv = smtp_server()
    write_config(home, srv)
    data = b"To: a@x.y\n\nbefore\n.\nafter\n"
    r = run(["send", "-t", "-i"], home, tls_ca, data)
    assert r.returncode == 0
    assert srv.messages[0].data.endswith(b"before\r\n.\r\nafter\r\n")


def test_sendmail_common_flags_accepted(smtp_server, home, tls_ca):
    srv = smtp_server()
    write_config(home, srv)
    r = run(["-oem", "-odb", "-odi", "-oep", "-F", "Full Name", "-t"], home, tls_ca,
            README_MESSAGE)
    assert r.returncode == 0, r.stderr
    assert len(srv.messages) == 1


def installed_script(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        candidate = Path(sys.executable).parent / name
        if candidate.exists():
            return str(candidate)
    return require(name)


def test_sendmail_script_and_link(smtp_server, home, tls_ca, tmp_path):
    srv = smtp_server()
    write_config(home, srv)
    script = installed_script("smtpmail-bridge-sendmail")
    r = run(["-oi", "-f", "e@x.y", "-t"], home, tls_ca, README_MESSAGE, exe=[script])
    assert r.returncode == 0, r.stderr
    link = tmp_path / "sendmail"
    link.symlink_to(installed_script("smtpmail-bridge"))
    r = run(["-oi", "-t"], home, tls_ca, README_MESSAGE, exe=[str(link)])
    assert r.returncode == 0, r.stderr
    assert len(srv.messages) == 2


def test_exit_75_transient(smtp_server, home, tls_ca):
    srv = smtp_server()
    srv.fail("MAIL", 451, "4.3.0 Try again later", times=5)
    write_config(home, srv, retries=2)
    r = run(["send", "-t"], home, tls_ca, README_MESSAGE)
    assert r.returncode == 75
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and "451 4.3.0 Try again later" in lines[0]


def test_exit_69_permanent(smtp_server, home, tls_ca):
    srv = smtp_server()
    srv.fail("RCPT", 550, "5.1.1 <x@example.org>: no such user")
    write_config(home, srv)
    r = run(["send", "-t"], home, tls_ca, README_MESSAGE)
    assert r.returncode == 69
    assert b"550 5.1.1 <x@example.org>: no such user" in r.stderr


def test_exit_65_no_recipients_and_injection(smtp_server, home, tls_ca):
    srv = smtp_server()
    write_config(home, srv)
    r = run(["send", "-t"], home, tls_ca, b"Subject: none\n\nhi\n")
    assert r.returncode == 65 and b"no recipients" in r.stderr
    r = run(["send", "-f", "a@x.y\rRSET", "b@x.y"], home, tls_ca, b"Subject: x\n\nhi\n")
    assert r.returncode == 65 and b"CR, LF or NUL" in r.stderr
    assert srv.connections == 0


def test_exit_77_auth_rejected_never_shows_secret(smtp_server, home, tls_ca):
    srv = smtp_server(auth=["LOGIN"], users={USER: "the real one"})
    write_config(home, srv)
    write_authinfo(home)
    r = run(["--debug", "send", "-t"], home, tls_ca, README_MESSAGE)
    assert r.returncode == 77
    assert b"535" in r.stderr
    no_secret(r)


def test_exit_77_server_demands_auth_no_credentials(smtp_server, home, tls_ca):
    srv = smtp_server(auth=["PLAIN"], users={USER: SECRET}, auth_required=True)
    write_config(home, srv)
    r = run(["send", "-t"], home, tls_ca, README_MESSAGE)
    assert r.returncode == 77
    assert b"requires authentication" in r.stderr


def test_exit_78_config(home, tls_ca):
    cfg = home / ".config" / "smtpmail-bridge"
    cfg.mkdir(parents=True)
    (cfg / "config.toml").write_text("smtp-servr = 'x'\n")
    r = run(["send", "-t"], home, tls_ca, README_MESSAGE)
    assert r.returncode == 78
    assert b"smtp-servr" in r.stderr and b"smtp-server" in r.stderr


def test_exit_78_no_server(home, tls_ca):
    r = run(["send", "-t"], home, tls_ca, b"From: a@x.y\nTo: b@x.y\n\nhi\n")
    assert r.returncode == 78 and b"smtp-server" in r.stderr


def test_exit_64_usage(home, tls_ca):
    r = run(["send", "--no-such-flag"], home, tls_ca, README_MESSAGE)
    assert r.returncode == 64 and b"--no-such-flag" in r.stderr


def test_flags_override_config(smtp_server, home, tls_ca):
    srv = smtp_server()
    other = smtp_server()
    write_config(home, other)
    r = run(["--smtp-service", str(srv.port), "send", "-t"], home, tls_ca, README_MESSAGE)
    assert r.returncode == 0, r.stderr
    assert len(srv.messages) == 1 and not other.messages


def test_config_verb_shows_origins_not_secrets(home, tls_ca, smtp_server):
    srv = smtp_server()
    write_config(home, srv, **{"password-command": "echo hunter2"})
    r = run(["--smtp-user", "bob", "config"], home, tls_ca)
    out = r.stdout.decode()
    assert r.returncode == 0
    assert "hunter2" not in out and "<set>" in out
    assert "flag --smtp-user" in out and "config.toml" in out


def test_password_command(smtp_server, home, tls_ca):
    srv = smtp_server(auth=["PLAIN"], users={USER: "from-command"})
    write_config(home, srv, **{"smtp-user": USER, "password-command": "printf 'from-command\\nignored\\n'"})
    r = run(["--debug", "send", "-t"], home, tls_ca, README_MESSAGE)
    assert r.returncode == 0, r.stderr
    assert srv.messages[0].auth.user == USER
    no_secret(r, secret="from-command")


def test_check_reports_tls_auth_and_credentials(smtp_server, home, tls_ca):
    srv = smtp_server(tls="starttls", auth=["PLAIN", "LOGIN"], users={USER: SECRET},
                      auth_require_tls=True)
    write_config(home, srv)
    write_authinfo(home)
    r = run(["check"], home, tls_ca)
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert "tls: TLS" in out and "certificate subject:" in out and "certificate expires:" in out
    assert "auth offered: PLAIN LOGIN" in out and "auth mechanism: PLAIN" in out
    assert f"credentials: found for {USER}" in out
    no_secret(r)
    assert not srv.messages and "MAIL" not in [c.split()[0] for _, c in srv.commands]


def test_check_hints_implicit_tls_port(smtp_server, home, tls_ca):
    srv = smtp_server(tls="implicit")
    write_config(home, srv, **{"connect-timeout": 2, "command-timeout": 2})
    r = run(["check"], home, tls_ca)
    out = r.stdout.decode()
    assert r.returncode != 0
    assert "stream-type = \"ssl\"" in out


def test_check_hints_auth_only_after_starttls(smtp_server, home, tls_ca):
    srv = smtp_server(tls="starttls", auth=["PLAIN"], users={USER: SECRET}, auth_require_tls=True)
    write_config(home, srv, **{"stream-type": "plain"})
    r = run(["check"], home, tls_ca)
    out = r.stdout.decode()
    assert "auth offered: none" in out
    assert "only after STARTTLS" in out


def test_version_and_help(home, tls_ca):
    r = run(["--version"], home, tls_ca)
    assert r.returncode == 0 and r.stdout.startswith(b"smtpmail-bridge ")


def test_check_hints_ehlo_name_rejected(smtp_server, home, tls_ca):
    srv = smtp_server(reject_helo_name=".")
    write_config(home, srv)
    r = run(["check"], home, tls_ca)
    out = r.stdout.decode()
    assert r.returncode == 69
    assert "501" in out and "set local-domain" in out


def test_queue_on_failure_keeps_the_message(smtp_server, home, tls_ca):
    from bridge.queue import Queue
    srv = smtp_server(pipelining=False)     # a pipelined RCPT would use up the RCPT fault
    srv.fail("MAIL", 451, "4.3.0 later", times=2)
    srv.fail("RCPT", 550, "5.1.1 no such user", match="x@example.org")
    qdir = home / "q"
    write_config(home, srv, retries=1, **{"queue-dir": str(qdir)})
    for _ in range(2):
        r = run(["send", "--queue-on-failure", "-t"], home, tls_ca, README_MESSAGE)
        assert r.returncode == 0 and b"queued (deferred)" in r.stderr and b"451" in r.stderr
    r = run(["send", "--queue-on-failure", "-t"], home, tls_ca, README_MESSAGE)
    assert r.returncode == 69 and b"queued (rejected)" in r.stderr
    entries = Queue(qdir).scan().entries
    assert [e.state for e in entries] == ["deferred", "deferred", "rejected"]
    assert all(e.data_path.read_bytes() == README_MESSAGE for e in entries)
    assert not srv.messages
