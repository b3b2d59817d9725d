"""Shared pytest fixtures: real loopback SMTP servers, TLS trust, tools.

Add new fixtures in their own section below; keep each one documented.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Callable, Iterator

import pytest

from tests.smtpserver import SMTPTestServer, TestCertificates, certificates


# --------------------------------------------------------------------------
# External tools


def require(cmd: str) -> str:
    """Path of `cmd`; skip the test if missing, but fail when CI=true."""
    path = shutil.which(cmd)
    if path is None:
        msg = f"{cmd!r} not found on PATH"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + " (required because CI=true)")
        pytest.skip(msg)
    return path


@pytest.fixture
def emacs_bin() -> str:
    """Path of the `emacs` binary (skip/fail as `require` does)."""
    return require("emacs")


# --------------------------------------------------------------------------
# TLS and SMTP servers


@pytest.fixture(scope="session")
def tls_ca() -> TestCertificates:
    """The test CAs and certificates; `.ca_pem` is the trusted CA's PEM path.

    Sets no environment variable; use `ssl_cert_env` for that.
    """
    return certificates()


@pytest.fixture
def ssl_cert_env(tls_ca: TestCertificates, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """SSL_CERT_FILE -> the test CA for this test; returns an env for subprocesses."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_ca.ca_pem))
    return dict(os.environ)


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., SMTPTestServer]]:
    """Factory: `smtp_server(**options)` starts an SMTPTestServer, stopped at teardown."""
    servers: list[SMTPTestServer] = []

    def start(**options: Any) -> SMTPTestServer:
        server = SMTPTestServer(**options)
        servers.append(server)
        return server.start()

    yield start
    for server in reversed(servers):
        server.stop()
