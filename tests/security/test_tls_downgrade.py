"""TLS means TLS: a server that leaves `tls_required` out of its INFO never receives credentials.

nats-py starts TLS only when the server's INFO asks for it, so a server, or anything in the
path, that leaves `tls_required` out would get the CONNECT, password included, in
plaintext. A fake server here sends such an INFO and records every byte it receives; the
library (`NatsOptions.connect`), the `stokehold` CLI (flags and environment) and the
controller, each asked for TLS, must send it nothing at all and fail with one clear line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from events.local_server import TlsFiles
from events.options import NatsConnectError, NatsOptions
from tests.fixtures.figures import FiguresRecorder
from tests.fixtures.tls import build_pki
from tests.security.hostile import run_stokehold

USER, PASSWORD, TOKEN = "tenant-a", "correct-horse-battery-staple", "s3cr3t-t0ken-for-nats"
SECRETS = (PASSWORD.encode(), TOKEN.encode())
REFUSAL = "the server did not start TLS (its INFO lacks tls_required); no credentials were sent"
FAIL_FAST: dict[str, Any] = {"max_reconnect_attempts": 1, "reconnect_time_wait": 0.0, "connect_timeout": 1.0}


@dataclass
class FakeServer:
    """Speaks just enough NATS to offer a downgrade: an INFO without `tls_required`, then it listens."""

    info: dict[str, Any]
    received: list[bytes] = field(default_factory=list)  # everything each connection sent, one entry per connection
    open_connections: int = 0
    port: int = 0

    @property
    def attempts(self) -> int:
        return len(self.received)

    def credentials_sent(self) -> int:
        return sum(1 for data in self.received if any(secret in data for secret in SECRETS))

    def url(self, scheme: str) -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections += 1
        self.received.append(b"")
        index = len(self.received) - 1
        try:
            writer.write(b"INFO " + json.dumps(self.info | {"port": self.port}).encode() + b"\r\n")
            await writer.drain()
            while data := await reader.read(65536):
                self.received[index] += data
                if b"PING" in data:  # play along, as a real server would, if a client ever sent CONNECT
                    writer.write(b"PONG\r\n")
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            self.open_connections -= 1

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeServer]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            await server.wait_closed()


def _info(**overrides: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"server_id": "FAKE", "version": "2.10.0", "proto": 1, "headers": True, "max_payload": 1 << 20}
    return info | {"auth_required": True} | overrides


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TlsFiles]:
    return build_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def _no_inherited_nats_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("STOKEHOLD_"):
            monkeypatch.delenv(name)
    yield


# (INFO the fake server sends, URL scheme, options beyond the credentials)
CASES: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {
    "tls:// and a CA, INFO without tls_required": (_info(), "tls", {"user": USER, "password": PASSWORD, "ca": True}),
    "tls:// and a CA, tls_required false": (
        _info(tls_required=False, tls_available=True),
        "tls",
        {"user": USER, "password": PASSWORD, "ca": True},
    ),
    "nats:// with a CA (a TLS option alone)": (_info(), "nats", {"user": USER, "password": PASSWORD, "ca": True}),
    "tls:// with a token and the system's CAs": (_info(), "tls", {"token": TOKEN}),
    "tls:// with a client certificate": (_info(), "tls", {"user": USER, "password": PASSWORD, "ca": True, "client_cert": True}),
}


def _options(server: FakeServer, scheme: str, settings: dict[str, Any], pki: dict[str, TlsFiles]) -> NatsOptions:
    settings = dict(settings)
    extra: dict[str, Any] = {}
    if settings.pop("ca", False):
        extra["tls_ca"] = pki["ca"].cert
    if settings.pop("client_cert", False):
        extra |= {"tls_cert": pki["client"].cert, "tls_key": pki["client"].key}
    return NatsOptions(url=server.url(scheme), **settings, **extra, **FAIL_FAST)


@pytest.mark.parametrize("case", list(CASES))
async def test_a_server_without_tls_required_gets_nothing_from_the_library(case: str, pki: dict[str, TlsFiles]) -> None:
    info, scheme, settings = CASES[case]
    async with FakeServer(info).running() as server:
        options = _options(server, scheme, settings, pki)
        with pytest.raises(NatsConnectError) as caught:
            await options.connect()
        await _closed(server)

    message = str(caught.value)
    assert REFUSAL in message and server.url(scheme) in message
    assert "\n" not in message and PASSWORD not in message and TOKEN not in message
    assert server.attempts == 1, "a downgrade is refused at once, not retried"
    assert server.received == [b""], "not a byte: no CONNECT, no credentials, no PING"


async def test_tls_handshake_first_never_speaks_plaintext(pki: dict[str, TlsFiles]) -> None:
    """With `tls_handshake_first` the client's first bytes are a TLS ClientHello; a plaintext server gets nothing else."""
    async with FakeServer(_info()).running() as server:
        options = NatsOptions(
            url=server.url("tls"), user=USER, password=PASSWORD, tls_ca=pki["ca"].cert, tls_handshake_first=True, **FAIL_FAST
        )
        with pytest.raises(NatsConnectError) as caught:
            await options.connect()
        await _closed(server)

    assert "\n" not in str(caught.value)
    assert server.credentials_sent() == 0
    assert all(data == b"" or data.startswith(b"\x16\x03") for data in server.received), "TLS handshake records only"


async def test_the_cli_and_the_controller_send_no_credentials_to_a_downgrading_server(
    pki: dict[str, TlsFiles], tmp_path: Path, figures: FiguresRecorder
) -> None:
    ca = str(pki["ca"].cert)
    trials = 0
    async with FakeServer(_info()).running() as server:
        for case in CASES.values():  # the library, every way of asking for TLS
            info, scheme, settings = case
            server.info = info
            with pytest.raises(NatsConnectError):
                await _options(server, scheme, settings, pki).connect()
            trials += 1
        server.info = _info()
        url = server.url("tls")

        flags = ["--nats-url", url, "--tls-ca", ca, "--nats-user", USER, "--nats-password", PASSWORD, "stream", "info"]
        by_flags = await run_stokehold([sys.executable, "-m", "events", *flags], {})
        environment = {
            "STOKEHOLD_NATS_URL": url,
            "STOKEHOLD_NATS_TLS_CA": ca,
            "STOKEHOLD_NATS_USER": USER,
            "STOKEHOLD_NATS_PASSWORD": PASSWORD,
        }
        by_env = await run_stokehold([sys.executable, "-m", "events", "stream", "info"], environment)
        controller_args = [
            "-m",
            "controller",
            "run",
            "--sink",
            "dir",
            "--dir",
            str(tmp_path / "gitops"),
            "--namespace",
            "llm",
            "--metrics-port",
            "0",
        ]
        controller = await run_stokehold([sys.executable, *controller_args], environment)
        trials += 3
        await _closed(server)

    for name, (code, output) in {"CLI flags": by_flags, "CLI environment": by_env}.items():
        lines = [line for line in output.splitlines() if line.strip()]
        assert code == 1 and len(lines) == 1 and REFUSAL in lines[0], f"{name}: {output}"
    code, output = controller
    assert code == 1 and REFUSAL in output.splitlines()[-1], output
    for _, output in (by_flags, by_env, controller):
        assert PASSWORD not in output
    credentials_sent = server.credentials_sent()
    bytes_received = sum(len(data) for data in server.received)
    figures.report(
        published=0,
        applied=0,
        dead_lettered=0,
        lost=0,
        trials=trials,
        attempts=server.attempts,
        credentials_sent=credentials_sent,
        bytes_received=bytes_received,
    )
    assert server.attempts == trials, "each client tried once and gave up"
    assert credentials_sent == 0 and bytes_received == 0


async def _closed(server: FakeServer) -> None:
    """Every connection the clients opened is closed again (none is left open on a refusal)."""
    for _ in range(500):
        if server.open_connections == 0:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{server.open_connections} connection(s) left open")
