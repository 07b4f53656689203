"""The `stokehold` command against a real nats-server (typer's CliRunner, one subprocess for tail)."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from events.cli import app
from events.options import NatsOptions
from events.publisher import Publisher
from events.stream import StreamSettings
from events.types import EventKind, LoadStatus
from templates.catalog import CATALOG_DIR
from tests.events.samples import sample
from tests.fixtures.nats import run_in_thread

TINY = CATALOG_DIR / "tiny-demo.yaml"


@pytest.fixture(autouse=True)
def _no_inherited_nats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("URL", "USER", "PASSWORD", "TOKEN", "CREDS", "TLS_CA", "TLS_CERT", "TLS_KEY"):
        monkeypatch.delenv(f"STOKEHOLD_NATS_{name}", raising=False)


@pytest.fixture
def cli(nats_url: str) -> Any:
    runner = CliRunner()

    def invoke(*args: str, url: str = nats_url) -> Any:
        return runner.invoke(app, ["--nats-url", url, *args])

    return invoke


def _replayed(cli: Any, *args: str) -> list[dict[str, Any]]:
    result = cli("events", "replay", "--json", *args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_stream_provision_is_idempotent_and_applies_changes(cli: Any, clean_stream: StreamSettings) -> None:
    unchanged = cli("stream", "provision")
    updated = cli("stream", "provision", "--max-age", "30d", "--duplicate-window", "5m")
    info = cli("stream", "info", "--json")

    assert unchanged.exit_code == 0 and "stream STOKEHOLD unchanged" in unchanged.stdout
    assert updated.exit_code == 0 and "updated" in updated.stdout and "max_age" in updated.stdout
    expected = {"max_age_seconds": 30 * 86400.0, "duplicate_window_seconds": 300.0, "storage": "file"}
    assert {key: json.loads(info.stdout)[key] for key in expected} == expected


def test_publish_validates_then_publishes_once(cli: Any, clean_stream: StreamSettings) -> None:
    first = cli("publish", str(TINY))
    again = cli("publish", str(TINY))

    assert first.exit_code == 0 and "tiny-demo" in first.stdout
    assert again.exit_code == 0 and "duplicate" in again.stdout
    [stored] = _replayed(cli)
    assert stored["type"] == "dev.stokehold.template.version.published"
    assert stored["data"]["template"]["name"] == "tiny-demo"


def test_publish_refuses_every_file_when_one_is_invalid(cli: Any, clean_stream: StreamSettings, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(TINY.read_text().replace("max_replicas: 1", "max_replicas: 0"))

    result = cli("publish", str(TINY), str(broken))

    assert result.exit_code == 1
    assert f"{broken}: spec.scaling.max_replicas:" in result.stderr
    assert "nothing was published" in result.stderr
    assert _replayed(cli) == []


def test_deploy_and_the_lifecycle_commands(cli: Any, clean_stream: StreamSettings) -> None:
    commands = [
        ("deploy", "tiny-demo@1", "-n", "llm", "--name", "tiny", "--min-replicas", "1", "--keep-hot", "30m", "--priority", "2"),
        ("stop", "tiny-demo", "-n", "llm", "--name", "tiny"),
        ("resume", "tiny-demo", "-n", "llm", "--name", "tiny"),
        ("undeploy", "tiny-demo", "-n", "llm", "--name", "tiny"),
        ("unpublish", "tiny-demo@1"),
    ]
    for command in commands:
        result = cli(*command)
        assert result.exit_code == 0, result.output

    stored = _replayed(cli)
    assert [event["type"].removeprefix("dev.stokehold.") for event in stored] == [
        "deployment.requested",
        "deployment.stopped",
        "deployment.resumed",
        "deployment.deleted",
        "template.version.deleted",
    ]
    assert stored[0]["data"] == {
        "template": "tiny-demo",
        "namespace": "llm",
        "name": "tiny",
        "version": 1,
        "overrides": {"min_replicas": 1, "max_replicas": None, "target_concurrency": None, "keep_hot": "30m", "priority": 2},
    }
    assert all(event["subject"].startswith("stokehold.templates.tiny-demo.") for event in stored)
    assert [event["data"]["template"] for event in _replayed(cli, "--type", "template.version.deleted")] == ["tiny-demo"]
    assert len(_replayed(cli, "--limit", "2")) == 2


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("deploy", "tiny-demo", "-n", "Not_A_Namespace"), "namespace: "),
        (("deploy", "tiny-demo@latest"), "is not a number"),
        (("deploy", "tiny-demo", "--max-replicas", "0"), "overrides.max_replicas: "),
        (("deploy", "tiny-demo", "--keep-hot", "soon"), "overrides.keep_hot: "),
        (("unpublish", "tiny-demo"), "names no version"),
    ],
)
def test_bad_input_is_refused_before_connecting(cli: Any, args: tuple[str, ...], fragment: str) -> None:
    result = cli(*args, url=f"nats://127.0.0.1:{_closed_port()}")  # nothing listens: a connection attempt would say so

    assert result.exit_code == 1
    assert fragment in result.stderr
    assert "connect" not in result.stderr


def test_an_unreachable_broker_is_one_line_not_a_traceback(cli: Any) -> None:
    url = f"nats://127.0.0.1:{_closed_port()}"

    result = cli("deploy", "tiny-demo", "-n", "llm", url=url)

    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: cannot connect to NATS at {url}: connection refused"
    assert "Traceback" not in result.output


def test_invalid_nats_options_are_one_line(cli: Any) -> None:
    result = cli("events", "replay", url="http://wrong-scheme:80")

    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "scheme 'http'" in result.stderr


def test_status_shows_the_latest_state_of_each_deployment(cli: Any, nats_options: NatsOptions, clean_stream: StreamSettings) -> None:
    tiny = {"template": "tiny-demo", "version": 1, "namespace": "llm", "name": "tiny-demo"}
    other = {"template": "falcon-7b-instruct", "namespace": "team-b", "name": "falcon"}

    async def report() -> None:
        async with await Publisher.connect(nats_options, source="/controller") as publisher:
            await publisher.publish(EventKind.DEPLOYMENT_APPLIED, tiny | {"action": "created"})
            await publisher.publish(EventKind.LOAD_STATUS, tiny | {"status": LoadStatus.LOADING})
            await publisher.publish(EventKind.DEPLOYMENT_READY, tiny | {"url": "http://tiny-demo.llm.example.com"})
            await publisher.publish(EventKind.DEPLOYMENT_APPLIED, other | {"action": "created"})
            await publisher.publish(EventKind.DEPLOYMENT_FAILED, other | {"reason": "no GPU node fits"})
            await publisher.request_deployment("tiny-demo", namespace="llm")  # inbound: not a status

    run_in_thread(report())
    as_json = cli("status", "--json")
    as_table = cli("status", "-n", "llm")

    rows = {(row["namespace"], row["name"]): row for row in json.loads(as_json.stdout)}
    assert set(rows) == {("llm", "tiny-demo"), ("team-b", "falcon")}
    assert (rows["llm", "tiny-demo"]["phase"], rows["llm", "tiny-demo"]["url"]) == ("Ready", "http://tiny-demo.llm.example.com")
    assert (rows["team-b", "falcon"]["phase"], rows["team-b", "falcon"]["reason"]) == ("Failed", "no GPU node fits")
    assert as_table.exit_code == 0 and "Ready" in as_table.stdout and "falcon" not in as_table.stdout


def test_events_tail_follows_status_events(nats_url: str, nats_options: NatsOptions, clean_stream: StreamSettings) -> None:
    command = [sys.executable, "-m", "events", "--nats-url", nats_url, "events", "tail", "--json", "--count", "2", "--timeout", "30"]
    command += ["--type", "deployment.ready", "--type", "dev.stokehold.event.rejected"]
    tail = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ | {"COLUMNS": "200"})
    try:
        _wait_for_line(tail, "following")

        async def publish() -> None:
            async with await Publisher.connect(nats_options, source="/controller") as publisher:
                await publisher.publish(EventKind.DEPLOYMENT_APPLIED, sample(EventKind.DEPLOYMENT_APPLIED))  # filtered out
                await publisher.publish(EventKind.DEPLOYMENT_READY, sample(EventKind.DEPLOYMENT_READY))
                await publisher.request_deployment("tiny-demo")  # inbound: not followed
                await publisher.publish(EventKind.EVENT_REJECTED, sample(EventKind.EVENT_REJECTED))

        run_in_thread(publish())
        stdout, stderr = tail.communicate(timeout=30)
    finally:
        tail.kill()

    assert tail.returncode == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    assert [event["type"] for event in events] == ["dev.stokehold.deployment.ready", "dev.stokehold.event.rejected"]
    assert events[0]["data"]["url"] == "http://tiny-demo.llm.example.com"


def _wait_for_line(process: subprocess.Popen[str], text: str, timeout: float = 30) -> None:
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, _, _ = select.select([process.stderr], [], [], 0.5)
        if readable and text in process.stderr.readline():
            return
        if process.poll() is not None:
            raise AssertionError(f"tail exited early: {process.stderr.read()}")
    raise AssertionError(f"no {text!r} line within {timeout}s")


def test_help_lists_the_commands_and_mounted_apps() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})

    assert result.exit_code == 0
    for command in ("publish", "deploy", "undeploy", "stop", "resume", "status", "events", "stream", "templates"):
        assert command in result.stdout


def test_other_components_apps_are_called_lazily_with_their_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import typer

    from events.cli import _delegate

    fake = types.ModuleType("fake_component_cli")
    fake_app = typer.Typer()

    @fake_app.command()
    def hello(name: str, loud: bool = False) -> None:
        typer.echo(f"hello {name.upper() if loud else name}")

    fake.app = fake_app  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_component_cli", fake)
    root = typer.Typer()
    root.command("present", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)(
        _delegate("present", "fake_component_cli", "app")
    )
    root.command("absent", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)(
        _delegate("absent", "fake_component_cli", "missing_app")
    )

    called = CliRunner().invoke(root, ["present", "world", "--loud"])
    missing = CliRunner().invoke(root, ["absent"])

    assert (called.exit_code, called.stdout) == (0, "hello WORLD\n")
    assert missing.exit_code == 1 and "`stokehold absent` is not available here" in missing.stderr
