"""How to reach NATS: one settings model, read from flags or `STOKEHOLD_NATS_*` variables.

    STOKEHOLD_NATS_URL        comma-separated server URLs (nats://, tls://, ws://, wss://)
    STOKEHOLD_NATS_USER / _PASSWORD, STOKEHOLD_NATS_TOKEN
    STOKEHOLD_NATS_CREDS      credentials file (NKEYS/JWT, as made by `nsc`)
    STOKEHOLD_NATS_TLS_CA / _TLS_CERT / _TLS_KEY
    STOKEHOLD_NATS_TLS_HANDSHAKE_FIRST   true for a server configured with `handshake_first`

The controller and the CLI both connect through `NatsOptions.connect()`, which turns every
way a first connection can fail into one `NatsConnectError` with a one-line message.

TLS means TLS: a tls:// or wss:// URL, or any TLS option, makes a plaintext connection
impossible. nats-py on its own starts TLS only when the server's INFO says `tls_required`,
so a server (or anything in the path) that leaves it out would receive the CONNECT,
password included, in plaintext. With TLS required, the client refuses to send CONNECT on
a connection that is not encrypted, on the first connection and on every reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.transport import TcpTransport, WebSocketTransport
from pydantic import Field, SecretStr, StringConstraints, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

log = logging.getLogger(__name__)

DEFAULT_URL = "nats://127.0.0.1:4222"
URL_SCHEMES = ("nats", "tls", "ws", "wss")


class NatsConnectError(ConnectionError):
    """The first connection to NATS failed; the message is one line meant for people."""


class _GiveUp(Exception):
    """Raised from the error callback to end the first connection attempts early."""


class TlsNotStartedError(nats.errors.Error):
    """The connection requires TLS but the server did not start it; nothing was sent to the server."""

    def __str__(self) -> str:
        return "the server did not start TLS (its INFO lacks tls_required), so nothing was sent: no credentials left this client"


class _TlsOnlyClient(NatsClient):
    """A nats-py client that sends CONNECT, and with it any credentials, only over an encrypted connection.

    `_connect_command` is where nats-py builds CONNECT, after reading INFO and starting TLS
    if INFO asked for it, on first connections and reconnects alike, so the check sits
    there. A test against a server that leaves `tls_required` out keeps this hook honest
    across nats-py versions.
    """

    def _connect_command(self) -> bytes:
        if not _encrypted(self._transport):
            raise TlsNotStartedError
        return super()._connect_command()


def _encrypted(transport: object) -> bool:
    if isinstance(transport, TcpTransport):
        writer = transport._io_writer
        return writer is not None and writer.get_extra_info("ssl_object") is not None
    if isinstance(transport, WebSocketTransport):
        return transport._using_tls is True
    return False  # a transport we do not know: never assume it is encrypted


class NatsOptions(BaseSettings):
    """Connection options; flags (init arguments) win over `STOKEHOLD_NATS_*` variables."""

    model_config = SettingsConfigDict(env_prefix="STOKEHOLD_NATS_", extra="forbid", frozen=True)

    url: Annotated[list[str], NoDecode] = Field(default_factory=lambda: [DEFAULT_URL], min_length=1)
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    creds: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # TLS before anything else, even INFO: only for a server whose TLS block sets `handshake_first`.
    tls_handshake_first: bool = False
    name: str = "stokehold"
    # Where JetStream sends this client's acks and fetched messages. With subject permissions, give
    # every publisher its own prefix (e.g. `_INBOX_team_a`) so that none needs `_INBOX.>`, which
    # would let it read the replies of every other client (docs/security.md).
    inbox_prefix: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$", max_length=128)] = "_INBOX"
    connect_timeout: float = Field(default=5.0, gt=0, le=300)
    # Attempts per server before giving up, on the first connection and on reconnects; -1 = forever.
    max_reconnect_attempts: int = Field(default=60, ge=-1)
    reconnect_time_wait: float = Field(default=2.0, ge=0, le=300)

    @field_validator("url", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            return [str(item).strip() for item in value if str(item).strip()]
        return value

    @field_validator("url")
    @classmethod
    def _check_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if "://" not in url:
                raise ValueError(f"{url!r} is not a server URL like nats://host:4222")
            scheme = url.split("://", 1)[0].lower()
            if scheme not in URL_SCHEMES:
                raise ValueError(f"{url!r}: scheme {scheme!r} is not one of {', '.join(URL_SCHEMES)}")
        return urls

    @field_validator("max_reconnect_attempts")
    @classmethod
    def _check_attempts(cls, value: int) -> int:
        if value == 0:  # nats-py would read 0 as "forever"; say so explicitly
            raise ValueError("use -1 to retry forever, or a number of attempts from 1")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> NatsOptions:
        if self.password is not None and not self.user:
            raise ValueError("a NATS password needs a user")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together (the client certificate and its key)")
        if self.token is not None and (self.user or self.creds):
            raise ValueError("use one of: user/password, token, or a credentials file")
        for field in ("creds", "tls_ca", "tls_cert", "tls_key"):
            path = getattr(self, field)
            if path is not None and not path.is_file():
                raise ValueError(f"{field}: no such file: {path}")
        schemes = {url.split("://", 1)[0].lower() for url in self.url}
        if {"tls", "nats"} <= schemes:
            raise ValueError("the server URLs mix tls:// and nats://: TLS is required for all of them, so write each as tls://")
        if self.uses_tls and "ws" in schemes:
            raise ValueError("a ws:// URL cannot carry TLS, which a wss:// URL or a TLS option requires: use wss://")
        return self

    @property
    def servers(self) -> str:
        """The server URLs without any user or password in them, for messages."""
        return ", ".join(_redacted(url) for url in self.url)

    @property
    def uses_tls(self) -> bool:
        """TLS is required: a tls:// or wss:// URL or any TLS option asks for it, and no connection goes without it."""
        return (
            self.tls_ca is not None
            or self.tls_cert is not None
            or self.tls_handshake_first
            or any(url.lower().startswith(("tls://", "wss://")) for url in self.url)
        )

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.uses_tls:
            return None
        context = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
        if self.tls_cert is not None and self.tls_key is not None:
            context.load_cert_chain(certfile=str(self.tls_cert), keyfile=str(self.tls_key))
        return context

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for nats-py's `Client.connect` (pure: no network)."""
        kwargs: dict[str, Any] = {
            "servers": list(self.url),
            "name": self.name,
            "connect_timeout": self.connect_timeout,
            "max_reconnect_attempts": self.max_reconnect_attempts,
            "reconnect_time_wait": self.reconnect_time_wait,
            "inbox_prefix": self.inbox_prefix,
        }
        if self.user:
            kwargs["user"] = self.user
        if self.password is not None:
            kwargs["password"] = self.password.get_secret_value()
        if self.token is not None:
            kwargs["token"] = self.token.get_secret_value()
        if self.creds is not None:
            kwargs["user_credentials"] = str(self.creds)
        tls = self.tls_context()
        if tls is not None:
            kwargs["tls"] = tls
            kwargs["tls_handshake_first"] = self.tls_handshake_first
        return kwargs

    async def connect(self, *, give_up: Callable[[], bool] | None = None, **client_options: Any) -> NatsClient:
        """A connected nats-py client. `client_options` pass through (e.g. `disconnected_cb`).

        `give_up`, asked after each failed attempt, ends the attempts when it says so (e.g. the
        process was told to stop): cancelling alone is not enough, as asyncio.wait_for in Python
        3.11 may swallow a cancellation that races an attempt's end, and the attempts go on.
        """
        client = _TlsOnlyClient() if self.uses_tls else NatsClient()
        failures: list[Exception] = []
        connected = False

        async def on_error(exc: Exception) -> None:
            if connected:
                log.warning("NATS: %s", _describe(exc))
                return
            failures.append(exc)
            if give_up is not None and give_up():
                raise _GiveUp from None
            if isinstance(exc, ssl.SSLCertVerificationError | TlsNotStartedError) or _is_auth_failure(exc):
                # Retrying cannot help: a downgrade is refused at once, credentials refused on a first
                # connection stay refused, and after a failed certificate check nats-py would wait
                # forever closing the TLS stream.
                raise _GiveUp from None
            # not silent while it retries (the controller waits long for a NATS that is still starting)
            log.info("NATS at %s not reachable yet (attempt %d): %s", self.servers, len(failures), _describe(exc))

        try:
            kwargs = self.connect_kwargs()
        except (OSError, ssl.SSLError) as exc:
            raise NatsConnectError(f"cannot set up TLS for NATS: {exc}") from None
        try:
            await asyncio.wait_for(client.connect(**kwargs, error_cb=on_error, **client_options), self._connect_budget())
        except (_GiveUp, OSError, TimeoutError, nats.errors.Error) as exc:
            if any(isinstance(failure, TlsNotStartedError) for failure in failures):
                await _abandon(client)
            raise NatsConnectError(self._failure_line(failures or [exc])) from None
        except asyncio.CancelledError:  # e.g. SIGTERM while still connecting: leave nothing behind
            await _abandon(client)
            raise
        connected = True
        return client

    def _connect_budget(self) -> float | None:
        """An upper bound on all first-connection attempts, so that no stuck attempt hangs the caller."""
        if self.max_reconnect_attempts < 0:
            return None
        attempts = (self.max_reconnect_attempts + 1) * len(self.url)
        return attempts * (2 * self.connect_timeout + self.reconnect_time_wait) + self.connect_timeout

    def _failure_line(self, failures: list[Exception]) -> str:
        if any(isinstance(exc, TlsNotStartedError) for exc in failures):
            return (
                f"refusing to talk to NATS at {self.servers} in plaintext: TLS is required (tls:// or a TLS option), "
                "but the server did not start TLS (its INFO lacks tls_required); no credentials were sent"
            )
        refused = next((exc for exc in failures if _is_auth_failure(exc)), None)
        if refused is not None:
            return (
                f"NATS at {self.servers} refused the credentials (authorization violation): "
                "check the user/password, token or credentials file"
            )
        # a TLS alert says more than the connection reset that races it
        cause = next((exc for exc in failures if isinstance(exc, ssl.SSLError)), failures[-1])
        line = f"cannot connect to NATS at {self.servers}: {_describe(cause)}"
        if isinstance(cause, _CUT_OFF) and self.uses_tls and self.tls_cert is None:
            # With TLS 1.3 the server checks the client certificate after the client's handshake has
            # finished, so a missing certificate often shows up as a bare reset instead of an alert.
            line += " (the server may require a client certificate: set tls_cert and tls_key)"
        return line


async def _abandon(client: NatsClient) -> None:
    """Close the plaintext connection a refused downgrade leaves open (not `client.close()`: it was never connected)."""
    transport = client._transport
    if transport is not None:
        transport.close()  # type: ignore[no-untyped-call]  # nats-py's transports are not annotated
        with contextlib.suppress(Exception):
            await asyncio.wait_for(transport.wait_closed(), 2.0)  # type: ignore[no-untyped-call]


# How a server that wants a client certificate may end a TLS 1.3 connection: the client has
# finished its handshake already, so it sees the connection cut off rather than an alert.
_CUT_OFF = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, ssl.SSLEOFError)


@contextlib.asynccontextmanager
async def nats_client(options: NatsOptions) -> AsyncIterator[NatsClient]:
    """A connected client for the length of a block (create it inside the loop that uses it)."""
    client = await options.connect()
    try:
        yield client
    finally:
        await client.close()


def _is_auth_failure(exc: Exception) -> bool:
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in str(exc).lower()


def _describe(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | nats.errors.TimeoutError):
        return "timed out"
    if isinstance(exc, nats.errors.NoServersError):
        return "no server could be reached"
    text = str(exc).strip() or type(exc).__name__
    return text.removeprefix("nats: ").strip("'")


def _redacted(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. nats://[::1 (an unclosed IPv6 bracket): cut any user info out by hand
        scheme, sep, rest = url.partition("://")
        return f"{scheme}{sep}***@{rest.rsplit('@', 1)[1]}" if "@" in rest else url
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


__all__ = ["DEFAULT_URL", "NatsConnectError", "NatsOptions", "TlsNotStartedError", "nats_client"]
