"""Connecting to servers that demand credentials or TLS, and the one-line errors when it fails."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from events.local_server import LocalNatsServer, TlsFiles
from events.options import NatsConnectError
from events.publisher import Publisher
from events.stream import ProvisionOutcome, provision_stream

FAIL_FAST = {"max_reconnect_attempts": 1, "reconnect_time_wait": 0.0}


@pytest.fixture(scope="module")
def password_server() -> Iterator[LocalNatsServer]:
    with LocalNatsServer(user="modelplane", password="correct horse") as server:
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


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> TlsFiles:
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return TlsFiles(cert=cert_path, key=key_path)


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, *, ca: bool = False
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TlsFiles]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    directory = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca_cert = _certificate("modelplane test CA", ca_key, None, ca=True)
    ca = _write(directory / "ca", ca_cert, ca_key)
    issuer = (ca_cert.subject, ca_key)
    server_key, client_key = _key(), _key()
    server = _write(directory / "server", _certificate("nats", server_key, issuer), server_key)
    client = _write(directory / "client", _certificate("modelplane-cli", client_key, issuer), client_key)
    return {"ca": ca, "server": server, "client": client}


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
        NatsConnectError, match=rf"cannot connect to NATS at {mtls_server.url}: TLS handshake failed .*CERTIFICATE_REQUIRED"
    ):
        await mtls_server.options(**FAIL_FAST).connect()
