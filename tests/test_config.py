"""The settings loader: smtpmail's defaults, the four sources and their
precedence, and one clear ConfigError per kind of bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import config
from bridge.config import Settings, coerce, describe, from_mapping, load
from bridge.errors import EX_CONFIG, ConfigError


@pytest.fixture(autouse=True)
def config_home(tmp_path, monkeypatch):
    """Never read the real user's config: platformdirs looks at XDG_CONFIG_HOME."""
    home = tmp_path / "xdg"
    home.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("SMTPMAIL_BRIDGE_CONFIG", raising=False)
    return home


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def error(fn, *args, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kw)
    assert info.value.exit_code == EX_CONFIG == 78
    return str(info.value)


# --- defaults ---------------------------------------------------------------

def test_defaults_are_smtpmails():
    settings, sources = load(env={})
    # smtpmail-behaviour.md section 1.1 / 1.2, Emacs 28.2
    assert settings.smtp_server is None
    assert settings.smtp_service == 25
    assert settings.smtp_user is None
    assert settings.stream_type is None
    assert settings.local_domain is None
    assert settings.sendto_domain is None
    assert settings.retries == 10
    assert settings.retry_delay == 1.0
    assert settings.debug_info is False
    assert settings.debug_verb is False
    assert settings.queue_mail is False
    assert settings.queue_dir == "~/Mail/queued-mail/"
    assert settings.queue_index_file == "index"
    assert settings.store_queue_variables is False
    assert settings.servers_requiring_authorization is None
    assert settings.mail_address is None
    assert settings.auth_supported == ("cram-md5", "plain", "login")
    # Emacs's auth-sources has the same three files (in the order
    # ~/.authinfo, ~/.authinfo.gpg, ~/.netrc); the contract puts .gpg first.
    assert sorted(settings.auth_sources) == sorted(
        ("~/.authinfo", "~/.authinfo.gpg", "~/.netrc"))
    assert settings.password_command is None
    assert settings == Settings()
    assert set(sources) == set(config.SETTING_NAMES)
    assert set(sources.values()) == {"default"}


def test_every_field_has_a_converter_and_a_dashed_name():
    names = [f.replace("-", "_") for f in config.SETTING_NAMES]
    assert names == [f.name for f in __import__("dataclasses").fields(Settings)]
    for name in config.KNOWN_NAMES:
        assert name in config._CONVERTERS


# --- the file ---------------------------------------------------------------

FULL_TOML = """\
smtp-server = "mail.example.org"
smtp-service = 587
smtp-user = "alice"
stream-type = "starttls"
local-domain = "example.org"
sendto-domain = "example.com"
retries = 3
retry-delay = 0
debug-info = true
debug-verb = true
queue-mail = true
queue-dir = "/var/tmp/q/"
queue-index-file = "idx"
store-queue-variables = true
servers-requiring-authorization = 'example\\.org$'
mail-address = "alice@example.org"
auth-supported = ["xoauth2", "PLAIN"]
auth-sources = ["~/a", "/b"]
password-command = "pass show smtp"
connect-timeout = 5
command-timeout = 6.5
data-timeout = 7
lock-timeout = 8
"""


def test_file_sets_every_setting(tmp_path):
    path = write(tmp_path / "c.toml", FULL_TOML)
    settings, sources = load(env={}, config_path=path)
    assert settings == Settings(
        smtp_server="mail.example.org", smtp_service=587, smtp_user="alice",
        stream_type="starttls", local_domain="example.org",
        sendto_domain="example.com", retries=3, retry_delay=0.0,
        debug_info=True, debug_verb=True, queue_mail=True,
        queue_dir="/var/tmp/q/", queue_index_file="idx",
        store_queue_variables=True,
        servers_requiring_authorization=r"example\.org$",
        mail_address="alice@example.org", auth_supported=("xoauth2", "plain"),
        auth_sources=("~/a", "/b"), password_command="pass show smtp",
        connect_timeout=5.0, command_timeout=6.5, data_timeout=7.0,
        lock_timeout=8.0)
    assert set(sources.values()) == {f"file {path}"}


def test_platformdirs_default_path_is_used(config_home):
    conf = config_home / "smtpmail-bridge"
    conf.mkdir()
    write(conf / "config.toml", 'smtp-server = "from-xdg.example"\n')
    assert config.default_config_path() == str(conf / "config.toml")
    settings, sources = load(env={})
    assert settings.smtp_server == "from-xdg.example"
    assert sources["smtp-server"] == f"file {conf / 'config.toml'}"


def test_absent_default_file_is_fine(config_home):
    assert not (config_home / "smtpmail-bridge").exists()
    settings, _ = load(env={})
    assert settings == Settings()


def test_explicit_missing_file_is_an_error(tmp_path):
    missing = str(tmp_path / "nope.toml")
    msg = error(load, env={}, config_path=missing)
    assert msg.startswith(missing + ":") and "not found" in msg
    msg = error(load, env={"SMTPMAIL_BRIDGE_CONFIG": missing})
    assert msg.startswith(missing + ":") and "not found" in msg


def test_config_flag_wins_over_config_env(tmp_path):
    flag = write(tmp_path / "flag.toml", 'smtp-server = "flag.example"\n')
    envf = write(tmp_path / "env.toml", 'smtp-server = "env.example"\n')
    settings, _ = load(env={"SMTPMAIL_BRIDGE_CONFIG": envf}, config_path=flag)
    assert settings.smtp_server == "flag.example"
    settings, _ = load(env={"SMTPMAIL_BRIDGE_CONFIG": envf})
    assert settings.smtp_server == "env.example"
    # the CLI may pass the whole vars(args), including "config"
    settings, _ = load(cli={"config": flag, "command": "config"},
                       env={"SMTPMAIL_BRIDGE_CONFIG": envf})
    assert settings.smtp_server == "flag.example"


def test_config_path_expands_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write(tmp_path / "c.toml", "retries = 2\n")
    settings, _ = load(env={}, config_path="~/c.toml")
    assert settings.retries == 2


# --- environment and flags ----------------------------------------------------

def test_env_var_for_every_setting_parses_strings():
    env = {
        "SMTPMAIL_BRIDGE_SMTP_SERVER": "env.example",
        "SMTPMAIL_BRIDGE_SMTP_SERVICE": "465",
        "SMTPMAIL_BRIDGE_SMTP_USER": "bob smith",
        "SMTPMAIL_BRIDGE_STREAM_TYPE": "TLS",
        "SMTPMAIL_BRIDGE_LOCAL_DOMAIN": "d.example",
        "SMTPMAIL_BRIDGE_SENDTO_DOMAIN": "s.example",
        "SMTPMAIL_BRIDGE_RETRIES": " 4 ",
        "SMTPMAIL_BRIDGE_RETRY_DELAY": "0.25",
        "SMTPMAIL_BRIDGE_DEBUG_INFO": "t",
        "SMTPMAIL_BRIDGE_DEBUG_VERB": "yes",
        "SMTPMAIL_BRIDGE_QUEUE_MAIL": "1",
        "SMTPMAIL_BRIDGE_QUEUE_DIR": "/q",
        "SMTPMAIL_BRIDGE_QUEUE_INDEX_FILE": "i",
        "SMTPMAIL_BRIDGE_STORE_QUEUE_VARIABLES": "on",
        "SMTPMAIL_BRIDGE_SERVERS_REQUIRING_AUTHORIZATION": "^env",
        "SMTPMAIL_BRIDGE_MAIL_ADDRESS": "bob@example.org",
        "SMTPMAIL_BRIDGE_AUTH_SUPPORTED": "login, xoauth2",
        "SMTPMAIL_BRIDGE_AUTH_SOURCES": os.pathsep.join(["/x", "~/y"]),
        "SMTPMAIL_BRIDGE_PASSWORD_COMMAND": "echo hi",
        "SMTPMAIL_BRIDGE_CONNECT_TIMEOUT": "1",
        "SMTPMAIL_BRIDGE_COMMAND_TIMEOUT": "2",
        "SMTPMAIL_BRIDGE_DATA_TIMEOUT": "3",
        "SMTPMAIL_BRIDGE_LOCK_TIMEOUT": "4.5",
    }
    assert set(env) == {config.env_name(n) for n in config.SETTING_NAMES}
    settings, sources = load(env=env)
    assert settings == Settings(
        smtp_server="env.example", smtp_service=465, smtp_user="bob smith",
        stream_type="ssl", local_domain="d.example", sendto_domain="s.example",
        retries=4, retry_delay=0.25, debug_info=True, debug_verb=True,
        queue_mail=True, queue_dir="/q", queue_index_file="i",
        store_queue_variables=True, servers_requiring_authorization="^env",
        mail_address="bob@example.org", auth_supported=("login", "xoauth2"),
        auth_sources=("/x", "~/y"), password_command="echo hi",
        connect_timeout=1.0, command_timeout=2.0, data_timeout=3.0,
        lock_timeout=4.5)
    for name in config.SETTING_NAMES:
        assert sources[name] == "env " + config.env_name(name)


def test_precedence_default_file_env_flag(tmp_path):
    path = write(tmp_path / "c.toml",
                 'smtp-server = "file.example"\nsmtp-service = 2525\n'
                 'retries = 2\nstream-type = "plain"\n')
    env = {"SMTPMAIL_BRIDGE_SMTP_SERVICE": "submission",
           "SMTPMAIL_BRIDGE_RETRIES": "5"}
    cli = {"smtp_service": "465", "stream-type": "ssl", "smtp_user": None,
           "queue_dir": "/flag/q", "debug": True}
    settings, sources = load(cli=cli, env=env, config_path=path)
    assert settings.smtp_server == "file.example"
    assert sources["smtp-server"] == f"file {path}"
    assert settings.retries == 5
    assert sources["retries"] == "env SMTPMAIL_BRIDGE_RETRIES"
    assert settings.smtp_service == 465
    assert sources["smtp-service"] == "flag --smtp-service"
    assert settings.stream_type == "ssl"
    assert sources["stream-type"] == "flag --stream-type"
    assert settings.smtp_user is None and sources["smtp-user"] == "default"
    assert settings.queue_dir == "/flag/q"
    assert settings.debug_info is True
    assert sources["debug-info"] == "flag --debug"
    assert sources["lock-timeout"] == "default"


def test_debug_flag_false_changes_nothing(tmp_path):
    path = write(tmp_path / "c.toml", "debug-info = true\n")
    settings, sources = load(cli={"debug": False}, env={}, config_path=path)
    assert settings.debug_info is True
    assert sources["debug-info"] == f"file {path}"


def test_empty_env_value_means_nil_for_optional_settings(tmp_path):
    path = write(tmp_path / "c.toml", 'smtp-user = "alice"\nstream-type = "ssl"\n')
    env = {"SMTPMAIL_BRIDGE_SMTP_USER": "", "SMTPMAIL_BRIDGE_STREAM_TYPE": "nil"}
    settings, sources = load(env=env, config_path=path)
    assert settings.smtp_user is None and settings.stream_type is None
    assert sources["smtp-user"] == "env SMTPMAIL_BRIDGE_SMTP_USER"


def test_unknown_smtpmail_bridge_env_vars_are_ignored():
    settings, _ = load(env={"SMTPMAIL_BRIDGE_SOMETHING_ELSE": "x"})
    assert settings == Settings()


# --- SMTPSERVER and default-smtp-server -------------------------------------

def test_smtpserver_env_is_the_initial_value(tmp_path):
    settings, sources = load(env={"SMTPSERVER": "env.example"})
    assert settings.smtp_server == "env.example"
    assert sources["smtp-server"] == "env SMTPSERVER"


def test_smtpserver_beats_default_smtp_server(tmp_path):
    path = write(tmp_path / "c.toml", 'default-smtp-server = "dflt.example"\n')
    settings, sources = load(env={"SMTPSERVER": "env.example"}, config_path=path)
    assert settings.smtp_server == "env.example"
    assert sources["smtp-server"] == "env SMTPSERVER"


def test_default_smtp_server_is_the_fallback(tmp_path):
    path = write(tmp_path / "c.toml", 'default-smtp-server = "dflt.example"\n')
    settings, sources = load(env={"SMTPSERVER": ""}, config_path=path)
    assert settings.smtp_server == "dflt.example"
    assert sources["smtp-server"] == f"file {path} (default-smtp-server)"
    settings, sources = load(
        env={"SMTPMAIL_BRIDGE_DEFAULT_SMTP_SERVER": "e.example"})
    assert settings.smtp_server == "e.example"
    assert sources["smtp-server"] == \
        "env SMTPMAIL_BRIDGE_DEFAULT_SMTP_SERVER (default-smtp-server)"


def test_explicit_smtp_server_beats_smtpserver_and_default(tmp_path):
    # As in Emacs: setting smtpmail-smtp-server overrides its initial value.
    path = write(tmp_path / "c.toml", 'smtp-server = "file.example"\n'
                 'default-smtp-server = "dflt.example"\n')
    settings, sources = load(env={"SMTPSERVER": "env.example"}, config_path=path)
    assert settings.smtp_server == "file.example"
    assert sources["smtp-server"] == f"file {path}"
    settings, sources = load(cli={"smtp-server": "flag.example"},
                             env={"SMTPSERVER": "env.example"})
    assert settings.smtp_server == "flag.example"
    assert sources["smtp-server"] == "flag --smtp-server"


def test_explicit_nil_smtp_server_is_kept():
    settings, sources = load(env={"SMTPSERVER": "env.example",
                                  "SMTPMAIL_BRIDGE_SMTP_SERVER": ""})
    assert settings.smtp_server is None
    assert sources["smtp-server"] == "env SMTPMAIL_BRIDGE_SMTP_SERVER"


# --- value conversions ------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (25, 25), (587, 587), (65535, 65535), ("587", 587), (" 465 ", 465),
    ("smtp", "smtp"), ("submission", "submission"), ("submissions", "submissions"),
])
def test_service_numbers_and_names(value, expected):
    assert coerce("smtp-service", value, "test") == expected


@pytest.mark.parametrize("value", [0, -3, 65536, "0", "-3", "70000", "",
                                   "has space", "1abc", True, 2.5, None])
def test_bad_service(value):
    msg = error(coerce, "smtp-service", value, "config.toml")
    assert msg.startswith("config.toml: smtp-service: expected a port number "
                          "(1-65535) or a service name, got ")


def test_service_error_message_exactly():
    assert error(coerce, "smtp-service", -3, "config.toml") == (
        "config.toml: smtp-service: expected a port number (1-65535) or a "
        "service name, got -3")


@pytest.mark.parametrize("value, expected", [
    (None, None), ("", None), ("nil", None), ("network", None),
    ("starttls", "starttls"), ("STARTTLS", "starttls"), ("ssl", "ssl"),
    ("tls", "ssl"), ("plain", "plain"),
])
def test_stream_type_normalisation(value, expected):
    assert coerce("stream-type", value, "test") == expected


def test_bad_stream_type():
    msg = error(coerce, "stream-type", "startls", "env X")
    assert msg.startswith('env X: stream-type: expected "starttls", "ssl"')
    assert msg.endswith('got "startls"')


@pytest.mark.parametrize("value, expected", [
    ("t", True), ("true", True), ("Yes", True), ("on", True), ("1", True),
    ("nil", False), ("false", False), ("no", False), ("off", False),
    ("0", False), ("", False), (True, True), (False, False), (1, True), (0, False),
])
def test_boolean_strings(value, expected):
    assert coerce("queue-mail", value, "test") is expected


def test_timeouts_must_be_positive():
    assert coerce("connect-timeout", "2.5", "t") == 2.5
    for bad in ("0", 0, -1, "abc", "inf", "nan", True):
        msg = error(coerce, "data-timeout", bad, "flag --data-timeout")
        assert "data-timeout: expected a positive number of seconds" in msg
    assert coerce("retry-delay", 0, "t") == 0.0
    assert "expected a number of seconds (0 or more)" in error(
        coerce, "retry-delay", -1, "t")


def test_retries():
    assert coerce("retries", "0", "t") == 0
    assert coerce("retries", 7, "t") == 7
    for bad in (-1, "x", "1.5", 1.5, True):
        assert "retries: expected a whole number of attempts" in error(
            coerce, "retries", bad, "t")


def test_auth_supported():
    assert coerce("auth-supported", "cram-md5 plain,login", "t") == \
        ("cram-md5", "plain", "login")
    assert coerce("auth-supported", "", "t") == ()
    assert coerce("auth-supported", ["XOAUTH2"], "t") == ("xoauth2",)
    msg = error(coerce, "auth-supported", ["plain", "scram-sha-1"], "c.toml")
    assert msg == ('c.toml: auth-supported: expected a list of mechanisms among '
                   '"cram-md5", "plain", "login", "xoauth2", '
                   'got ["plain", "scram-sha-1"]')


def test_servers_requiring_authorization_must_compile():
    assert coerce("servers-requiring-authorization", r"\.example\.org$", "t") \
        == r"\.example\.org$"
    msg = error(coerce, "servers-requiring-authorization", "mail(", "c.toml")
    assert msg.startswith("c.toml: servers-requiring-authorization: "
                          "expected a Python regular expression (")
    assert msg.endswith('got "mail("')


def test_requires_authorization_is_an_unanchored_case_insensitive_search():
    s = Settings(smtp_server="SMTP.Example.org",
                 servers_requiring_authorization=r"example\.org")
    assert config.requires_authorization(s)
    assert not config.requires_authorization(s, "smtp.example.com")
    assert not config.requires_authorization(Settings(smtp_server="x"))


def test_host_names_reject_spaces_and_control_characters():
    assert coerce("smtp-server", " mail.example.org ", "t") == "mail.example.org"
    for bad in ("mail example", "mail\r\n.example", 5, ["a"]):
        assert "smtp-server: expected a host name" in error(
            coerce, "smtp-server", bad, "t")
    assert "mail-address: expected an e-mail address" in error(
        coerce, "mail-address", "a@b\r\nRCPT TO:<x>", "t")


# --- errors name the file, the key and the expectation ----------------------

def test_toml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path / "config.toml", 'smtp-server = "a"\nretries = \n')
    msg = error(load, env={}, config_path=path)
    assert msg.startswith(f"{path}: not valid TOML: ")
    assert "line 2" in msg


def test_non_utf8_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b'smtp-user = "\xff"\n')
    msg = error(load, env={}, config_path=str(path))
    assert msg.startswith(f"{path}: not valid TOML")


def test_unreadable_file_is_a_config_error(tmp_path):
    msg = error(load, env={}, config_path=str(tmp_path))   # a directory
    assert msg.startswith(f"{tmp_path}: ")


@pytest.mark.parametrize("key, suggestion", [
    ("smtp-sever", "smtp-server"),
    ("smtp_service", "smtp-service"),
    ("smtpmail-stream-type", "stream-type"),
    ("retry", "retries"),
])
def test_unknown_key_suggests_closest(tmp_path, key, suggestion):
    path = write(tmp_path / "config.toml", f'{key} = 1\n')
    msg = error(load, env={}, config_path=path)
    assert msg == f'{path}: {key}: unknown setting (did you mean "{suggestion}"?)'


def test_unknown_key_without_a_close_match(tmp_path):
    path = write(tmp_path / "config.toml", "zzzzqqq = 1\n")
    assert error(load, env={}, config_path=path) == \
        f"{path}: zzzzqqq: unknown setting"


def test_tables_are_unknown_keys(tmp_path):
    path = write(tmp_path / "config.toml", '[smtp]\nserver = "x"\n')
    assert error(load, env={}, config_path=path).startswith(
        f"{path}: smtp: unknown setting")


@pytest.mark.parametrize("line, key, expected, got", [
    ('retries = "10"', "retries", "a whole number of attempts (0 or more)", '"10"'),
    ("debug-info = 1", "debug-info", "true or false", "1"),
    ('queue-mail = "yes"', "queue-mail", "true or false", '"yes"'),
    ("smtp-server = 42", "smtp-server", "a host name (no spaces), or nil", "42"),
    ('auth-sources = "~/.netrc"', "auth-sources", "a list of file names",
     '"~/.netrc"'),
    ("auth-supported = [1]", "auth-supported",
     'a list of mechanisms among "cram-md5", "plain", "login", "xoauth2"', "[1]"),
    ('connect-timeout = "5"', "connect-timeout", "a positive number of seconds",
     '"5"'),
    ("queue-dir = { a = 1 }", "queue-dir", "a directory name", "a table"),
    ("smtp-service = 0", "smtp-service",
     "a port number (1-65535) or a service name", "0"),
])
def test_wrong_types_in_the_file(tmp_path, line, key, expected, got):
    path = write(tmp_path / "config.toml", line + "\n")
    assert error(load, env={}, config_path=path) == \
        f"{path}: {key}: expected {expected}, got {got}"


def test_bad_env_value_names_the_variable():
    msg = error(load, env={"SMTPMAIL_BRIDGE_SMTP_SERVICE": "-3"})
    assert msg == ("env SMTPMAIL_BRIDGE_SMTP_SERVICE: smtp-service: expected a "
                   'port number (1-65535) or a service name, got "-3"')
    msg = error(load, env={"SMTPSERVER": "bad host"})
    assert msg.startswith("env SMTPSERVER: smtp-server: expected a host name")


def test_bad_flag_value_names_the_flag():
    msg = error(load, cli={"stream_type": "ssh"}, env={})
    assert msg.startswith("flag --stream-type: stream-type: expected ")


def test_password_command_value_never_in_errors():
    secret = ["pass", "hunter2"]
    msg = error(coerce, "password-command", secret, "c.toml")
    assert "hunter2" not in msg
    assert msg == "c.toml: password-command: expected a shell command (a string)"


# --- describe ---------------------------------------------------------------

def test_describe_lists_every_setting_with_origin(tmp_path):
    path = write(tmp_path / "c.toml", 'smtp-server = "mail.example.org"\n'
                 "connect-timeout = 2.5\n")
    settings, sources = load(cli={"smtp_service": "587"}, env={},
                             config_path=path)
    rows = describe(settings, sources)
    assert [r[0] for r in rows] == list(config.SETTING_NAMES)
    table = {name: (value, origin) for name, value, origin in rows}
    assert table["smtp-server"] == ('"mail.example.org"', f"file {path}")
    assert table["smtp-service"] == ("587", "flag --smtp-service")
    assert table["connect-timeout"] == ("2.5", f"file {path}")
    assert table["stream-type"] == ("nil", "default")
    assert table["queue-mail"] == ("false", "default")
    assert table["auth-supported"] == ('["cram-md5", "plain", "login"]', "default")


def test_describe_never_shows_the_password_command(tmp_path):
    secret = "printf %s s3cr3t-T0ken"
    path = write(tmp_path / "c.toml", f'password-command = "{secret}"\n')
    settings, sources = load(env={}, config_path=path)
    assert settings.password_command == secret
    rows = describe(settings, sources)
    assert ("password-command", "<set>", f"file {path}") in rows
    assert not any("s3cr3t" in cell for row in rows for cell in row)
    unset = dict((n, v) for n, v, _ in describe(Settings(), {}))
    assert unset["password-command"] == "nil"


# --- the Emacs shim's variables ---------------------------------------------

def test_from_mapping_with_emacs_values():
    base = Settings(smtp_server="base.example", retries=3)
    data = {
        "smtpmail-smtp-server": "mail.example.org",
        "smtp-service": "submission",
        "stream-type": "starttls",      # a symbol, sent as a string
        "smtp-user": [],                # sexpdata reads nil as []
        "debug-info": "t",
        "debug-verb": [],
        "queue-mail": 1,                # non-nil is true in Emacs
        "auth-supported": ["cram-md5", "xoauth2"],
        "servers-requiring-authorization": r"\`mail\.example\.\(org\|net\)\'",
        "local-domain": None,
    }
    settings = from_mapping(base, data, "emacs", emacs=True)
    assert settings.smtp_server == "mail.example.org"
    assert settings.smtp_service == "submission"
    assert settings.stream_type == "starttls"
    assert settings.smtp_user is None
    assert settings.debug_info is True and settings.debug_verb is False
    assert settings.queue_mail is True
    assert settings.auth_supported == ("cram-md5", "xoauth2")
    assert settings.retries == 3            # untouched: comes from base
    assert settings.local_domain is None
    assert config.requires_authorization(settings)
    assert not config.requires_authorization(settings, "mail.example.com")
    assert not config.requires_authorization(settings, "xmail.example.org")


def test_from_mapping_default_smtp_server_only_when_no_server():
    assert from_mapping(Settings(), {"default-smtp-server": "d.example"},
                        "emacs").smtp_server == "d.example"
    assert from_mapping(Settings(smtp_server="s.example"),
                        {"default-smtp-server": "d.example"},
                        "emacs").smtp_server == "s.example"


def test_from_mapping_errors_name_origin_and_key():
    assert error(from_mapping, Settings(), {"smtp-service": None}, "emacs") == (
        "emacs: smtp-service: expected a port number (1-65535) or a service "
        "name, got nil")
    assert error(from_mapping, Settings(), {"smtp-sevrer": "x"}, "emacs") == (
        'emacs: smtp-sevrer: unknown setting (did you mean "smtp-server"?)')


def test_settings_from_mapping_returns_dashed_typed_values():
    assert config.settings_from_mapping(
        {"smtp_service": "25", "stream-type": "tls", "default-smtp-server": "d"},
        "x") == {"smtp-service": 25, "stream-type": "ssl",
                 "default-smtp-server": "d"}


@pytest.mark.parametrize("emacs, python, matches, misses", [
    (r"smtp\.gmail\.com\|mail\.example\.org", None,
     ["smtp.gmail.com", "mail.example.org"], ["smtpXgmail.com"]),
    (r"^\(?:a\|b\)x$", r"^(?:a|b)x$", ["ax", "bx"], ["cx", "axx"]),
    (r"\`[[:alpha:]]+[0-9]\'", None, ["mx1"], ["mx", "1mx1"]),
    ("a(b)|c{2}", None, ["a(b)|c{2}"], ["ab", "cc"]),
    ("*x", None, ["*x"], ["x"]),
    ("a^b$c", None, ["a^b$c"], ["ab"]),
    (r"x\{2\}", "x{2}", ["xx"], ["x"]),
    (r"[]a]", None, ["]", "a"], ["b"]),
    (r"[\]", None, ["\\"], ["a"]),
    (r"\bmail\>", None, ["mail.x"], ["email"]),
])
def test_emacs_regexp_translation(emacs, python, matches, misses):
    pattern = config.emacs_regexp(emacs)
    if python is not None:
        assert pattern == python
    for text in matches:
        assert re.search(pattern, text), (pattern, text)
    for text in misses:
        assert not re.search(pattern, text), (pattern, text)


def test_untranslatable_emacs_regexp():
    msg = error(from_mapping, Settings(),
                {"servers-requiring-authorization": r"\cgmail"}, "emacs",
                emacs=True)
    assert msg.startswith("emacs: servers-requiring-authorization: expected an "
                          "Emacs regexp this bridge can translate")


# --- cheap import -----------------------------------------------------------

def test_import_does_not_load_heavy_modules():
    code = ("import sys, bridge.config; "
            "print(sorted(m for m in ('tomllib', 'tomli', 'platformdirs', "
            "'difflib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"
