"""Connecting to servers that demand credentials or TLS, and the one-line errors when it fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from events.local_server import LocalNatsServer, TlsFiles
from events.options import NatsConnectError
from events.publisher import Publisher
from events.stream import ProvisionOutcome, provision_stream
from tests.fixtures.tls import build_pki

FAIL_FAST = {"max_reconnect_attempts": 1, "reconnect_time_wait": 0.0}


@pytest.fixture(scope="module")
def password_server() -> Iterator[LocalNatsServer]:
    with LocalNatsServer(user="stokehold", password="correct horse") as server:
        yield server


@pytest.fixture(scope="module")
def token_server() -> Iterator[LocalNatsServer]:
    with LocalNatsServer(token="s3cr3t-t0ken") as server:
        yield server


async def _provision(server: LocalNatsServer, **overrides: object) -> ProvisionOutcome:
    async with await Publisher.connect(server.options(**overrides)) as publisher:
        result = await provision_stream(publisher.client.jetstream())
        await publisher.request_deployment("tiny-demo")
        return result.outcome


async def test_user_and_password(password_server: LocalNatsServer) -> None:
    assert await _provision(password_server) is ProvisionOutcome.CREATED


@pytest.mark.parametrize("credentials", [{"password": "wrong"}, {"user": None, "password": None}], ids=["wrong password", "none"])
async def test_wrong_or_missing_password_fails_clearly(password_server: LocalNatsServer, credentials: dict[str, object]) -> None:
    with pytest.raises(NatsConnectError) as caught:
        await password_server.options(**credentials, **FAIL_FAST).connect()

    message = str(caught.value)
    assert "refused the credentials" in message and password_server.url in message
    assert "\n" not in message and "wrong" not in message


async def test_token(token_server: LocalNatsServer) -> None:
    assert await _provision(token_server) is ProvisionOutcome.CREATED
    with pytest.raises(NatsConnectError, match="refused the credentials"):
        await token_server.options(token="not-the-token", **FAIL_FAST).connect()


async def test_unreachable_server_fails_with_one_line(tmp_path: Path) -> None:
    server = LocalNatsServer().start()
    options = server.options(**FAIL_FAST)
    server.close()  # nothing listens on that port any more

    with pytest.raises(NatsConnectError) as caught:
        await options.connect()

    assert str(caught.value) == f"cannot connect to NATS at {options.servers}: connection refused"


# ------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TlsFiles]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    return build_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls_server(pki: dict[str, TlsFiles]) -> Iterator[LocalNatsServer]:
    tls = TlsFiles(cert=pki["server"].cert, key=pki["server"].key, ca=pki["ca"].cert, verify_clients=True)
    with LocalNatsServer(tls=tls) as server:
        yield server


async def test_tls_with_a_client_certificate(mtls_server: LocalNatsServer, pki: dict[str, TlsFiles]) -> None:
    outcome = await _provision(mtls_server, tls_cert=pki["client"].cert, tls_key=pki["client"].key)

    assert mtls_server.url.startswith("tls://")
    assert outcome is ProvisionOutcome.CREATED


async def test_tls_without_trusting_the_ca_fails_clearly(mtls_server: LocalNatsServer, pki: dict[str, TlsFiles]) -> None:
    options = mtls_server.options(tls_ca=None, tls_cert=pki["client"].cert, tls_key=pki["client"].key)

    with pytest.raises(NatsConnectError, match=r"TLS handshake failed .*CERTIFICATE_VERIFY_FAILED"):
        await options.connect()


async def test_tls_without_a_client_certificate_is_refused(mtls_server: LocalNatsServer) -> None:
    with pytest.raises(
        NatsConnectError,
        match=rf"cannot connect to NATS at {mtls_server.url}: "
        r"(TLS handshake failed .*CERTIFICATE_REQUIRED|.*may require a client certificate)",
    ):
        await mtls_server.options(**FAIL_FAST).connect()
