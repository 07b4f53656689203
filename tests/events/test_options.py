"""NatsOptions: environment variables, flags over them, and what reaches nats-py (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from events.options import NatsOptions
from tests.fixtures.tls import build_pki


@pytest.fixture(autouse=True)
def _no_inherited_nats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("URL", "USER", "PASSWORD", "TOKEN", "CREDS", "TLS_CA", "TLS_CERT", "TLS_KEY", "TLS_HANDSHAKE_FIRST"):
        monkeypatch.delenv(f"STOKEHOLD_NATS_{name}", raising=False)


def test_environment_gives_several_urls_and_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOKEHOLD_NATS_URL", "tls://a:4222, tls://b:4222,,tls://c:4443")
    monkeypatch.setenv("STOKEHOLD_NATS_USER", "alice")
    monkeypatch.setenv("STOKEHOLD_NATS_PASSWORD", "s3cret")

    options = NatsOptions()
    kwargs = options.connect_kwargs()

    assert options.url == ["tls://a:4222", "tls://b:4222", "tls://c:4443"]
    assert (kwargs["servers"], kwargs["user"], kwargs["password"]) == (options.url, "alice", "s3cret")
    assert "s3cret" not in repr(options)
    assert kwargs["tls"] is not None  # a tls:// URL turns TLS on


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOKEHOLD_NATS_URL", "nats://from-env:4222")
    monkeypatch.setenv("STOKEHOLD_NATS_TOKEN", "env-token")

    options = NatsOptions(url="nats://from-flag:4222", token="flag-token")

    assert options.url == ["nats://from-flag:4222"]
    assert options.connect_kwargs()["token"] == "flag-token"


def test_credentials_file_and_defaults(tmp_path: Path) -> None:
    creds = tmp_path / "user.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n")

    kwargs = NatsOptions(creds=creds).connect_kwargs()

    assert kwargs["user_credentials"] == str(creds)
    assert kwargs["servers"] == ["nats://127.0.0.1:4222"]
    assert "tls" not in kwargs and "user" not in kwargs


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"url": "localhost:4222"}, "not a server URL"),
        ({"url": "http://x:80"}, "scheme 'http'"),
        ({"password": "p"}, "needs a user"),
        ({"tls_cert": "/etc/hostname"}, "go together"),
        ({"token": "t", "user": "u"}, "one of"),
        ({"creds": "/no/such/file.creds"}, "no such file"),
        ({"max_reconnect_attempts": 0}, "-1 to retry forever"),
        ({"url": ""}, "at least 1"),
        ({"url": "tls://a:4222,nats://b:4222"}, "mix tls:// and nats://"),
        ({"url": "nats://a:4222,tls://b:4222", "tls_ca": "/etc/hostname"}, "mix tls:// and nats://"),
        ({"url": "ws://a:8080", "tls_ca": "/etc/hostname"}, "ws:// URL cannot carry TLS"),
        ({"url": "ws://a:8080,wss://b:8443"}, "ws:// URL cannot carry TLS"),
        ({"url": "ws://a:8080", "tls_handshake_first": True}, "ws:// URL cannot carry TLS"),
    ],
)
def test_invalid_options_are_refused_clearly(settings: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        NatsOptions(**settings)  # type: ignore[arg-type]


def test_servers_never_shows_passwords_in_urls() -> None:
    assert NatsOptions(url="nats://bob:hunter2@host:4222,nats://plain:4222").servers == "nats://***@host:4222, nats://plain:4222"


@pytest.mark.parametrize(
    "settings",
    [{"url": "tls://a:4222"}, {"url": "wss://a:8443"}, {"tls_ca": "CA"}, {"tls_handshake_first": True}],
    ids=["tls URL", "wss URL", "a CA alone", "handshake first"],
)
def test_any_way_of_asking_for_tls_makes_it_required(settings: dict[str, object], tmp_path: Path) -> None:
    if "tls_ca" in settings:
        settings = {"tls_ca": build_pki(tmp_path)["ca"].cert}
    options = NatsOptions(**settings)  # type: ignore[arg-type]
    kwargs = options.connect_kwargs()

    assert options.uses_tls
    assert kwargs["tls"] is not None
    assert kwargs["tls_handshake_first"] is bool(settings.get("tls_handshake_first", False))


def test_plain_nats_urls_without_tls_options_stay_plain() -> None:
    options = NatsOptions(url="nats://a:4222,nats://b:4222")

    assert not options.uses_tls and "tls" not in options.connect_kwargs()
