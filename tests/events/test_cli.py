"""The `stokehold` command against a real nats-server (typer's CliRunner, one subprocess for tail)."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from events.cli import app
from events.options import NatsOptions
from events.publisher import Publisher
from events.stream import StreamSettings
from events.types import EventKind, LoadStatus
from templates.catalog import CATALOG_DIR, load_catalog
from tests.events.samples import sample
from tests.fixtures.controller_process import ControllerProcess
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
    updated = cli("stream", "provision", "--max-age", "7d", "--duplicate-window", "5m")
    info = cli("stream", "info", "--stream", "status", "--json")
    desired = cli("stream", "info", "--json")

    assert unchanged.exit_code == 0 and "stream STOKEHOLD unchanged" in unchanged.stdout
    assert "stream STOKEHOLD_STATUS unchanged" in unchanged.stdout and "stream STOKEHOLD_DEADLETTER unchanged" in unchanged.stdout
    assert updated.exit_code == 0 and "stream STOKEHOLD_STATUS updated" in updated.stdout and "max_age" in updated.stdout
    expected = {"name": "STOKEHOLD_STATUS", "max_age_seconds": 7 * 86400.0, "duplicate_window_seconds": 300.0, "storage": "file"}
    assert {key: json.loads(info.stdout)[key] for key in expected} == expected
    assert json.loads(desired.stdout)["max_age_seconds"] == 0.0, "the desired state is never aged out"


def test_publish_validates_then_publishes_and_says_a_republish_changes_nothing(cli: Any, clean_stream: StreamSettings) -> None:
    first = cli("publish", str(TINY))
    again = cli("publish", str(TINY))

    assert first.exit_code == 0 and "tiny-demo" in first.stdout
    assert again.exit_code == 0 and "published before with the same content, so nothing changes: tiny-demo@1" in again.stderr
    stored = _replayed(cli)
    assert [event["type"] for event in stored] == ["dev.stokehold.template.version.published"] * 2
    assert stored[0]["data"] == stored[1]["data"] and stored[0]["id"] != stored[1]["id"], "the same content under random ids"


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
        ("publish", str(TINY)),
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
        "template.version.published",
        "deployment.requested",
        "deployment.stopped",
        "deployment.resumed",
        "deployment.deleted",
        "template.version.deleted",
    ]
    assert stored[1]["data"] == {
        "template": "tiny-demo",
        "namespace": "llm",
        "name": "tiny",
        "version": 1,
        "overrides": {"min_replicas": 1, "max_replicas": None, "target_concurrency": None, "keep_hot": "30m", "priority": 2},
        "adapters": None,
    }
    assert all(event["subject"].startswith("stokehold.templates.tiny-demo.") for event in stored)
    assert [event["data"]["template"] for event in _replayed(cli, "--type", "template.version.deleted")] == ["tiny-demo"]
    assert len(_replayed(cli, "--limit", "2")) == 2


def test_unpublish_refuses_a_version_that_was_never_published(cli: Any, clean_stream: StreamSettings) -> None:
    cli("publish", str(TINY))

    never = cli("unpublish", "tiny-demo@7")
    other = cli("unpublish", "falcon-7b-instruct@1")

    assert never.exit_code == 1 and never.stderr.strip() == (
        "error: tiny-demo@7 was never published (published versions: 1): nothing to delete"
    )
    assert other.exit_code == 1 and "(published versions: none)" in other.stderr
    assert [event["type"] for event in _replayed(cli)] == ["dev.stokehold.template.version.published"], "nothing was sent"


def test_a_url_that_does_not_parse_is_one_line(cli: Any) -> None:
    result = cli("deploy", "tiny-demo", "-n", "llm", url="nats://[::1")

    assert result.exit_code == 1
    assert result.stderr == "error: invalid NATS server URL 'nats://[::1': Invalid IPv6 URL\n"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("deploy", "tiny-demo", "-n", "Not_A_Namespace"), "namespace: "),
        (("deploy", "tiny-demo@latest"), "is not a whole number"),
        (("deploy", "tiny-demo@" + "9" * 5000), "is not a whole number"),
        (("unpublish", "tiny-demo@1000001"), "is not a whole number from 1 to 1000000"),
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


def test_status_shows_the_latest_state_of_each_deployment_and_the_newest_rejections(
    cli: Any, nats_url: str, nats_options: NatsOptions, clean_stream: StreamSettings
) -> None:
    tiny = {"template": "tiny-demo", "version": 1, "namespace": "llm", "name": "tiny-demo"}
    other = {"template": "mistral-7b-instruct-v0-2-awq", "namespace": "team-b", "name": "mistral-7b-instruct-v0-2-awq-for-team-b"}
    refused: dict[str, Any] = {
        "original_id": "e-1",
        "original_type": "dev.stokehold.deployment.requested",
        "subject": "stokehold.templates.tiny-demo.deployment.requested",
        "reason": "namespace 'kube-system' is reserved (the cluster's, the serving stack's or stokehold's own): models never run there",
        "stream_sequence": 9,
    }

    async def report() -> None:
        async with await Publisher.connect(nats_options, source="/controller") as publisher:
            await publisher.publish(EventKind.DEPLOYMENT_APPLIED, tiny | {"action": "created"})
            await publisher.publish(EventKind.LOAD_STATUS, tiny | {"status": LoadStatus.LOADING})
            await publisher.publish(EventKind.DEPLOYMENT_READY, tiny | {"url": "http://tiny-demo.llm.example.com"})
            await publisher.publish(EventKind.DEPLOYMENT_APPLIED, other | {"action": "created"})
            await publisher.publish(EventKind.DEPLOYMENT_FAILED, other | {"reason": "no GPU node fits"})
            await publisher.request_deployment("tiny-demo", namespace="llm")  # inbound: not a status
            await publisher.publish(EventKind.EVENT_REJECTED, refused)

    run_in_thread(report())
    as_json = cli("status", "--json")
    as_table = cli("status", "-n", "llm")
    piped = subprocess.run(  # `stokehold status | cat`: not a terminal, whatever the width
        [sys.executable, "-m", "events", "--nats-url", nats_url, "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "COLUMNS"},
    )

    lines = [json.loads(line) for line in as_json.stdout.splitlines()]  # JSON lines, as the help says
    rows = {(row["namespace"], row["name"]): row for row in lines if row["kind"] == "deployment"}
    assert set(rows) == {("llm", "tiny-demo"), ("team-b", other["name"])}
    assert (rows["llm", "tiny-demo"]["phase"], rows["llm", "tiny-demo"]["url"]) == ("Ready", "http://tiny-demo.llm.example.com")
    assert (rows["team-b", other["name"]]["phase"], rows["team-b", other["name"]]["reason"]) == ("Failed", "no GPU node fits")
    assert [(row["reason"], row["original_id"]) for row in lines if row["kind"] == "rejection"] == [(refused["reason"], "e-1")]
    assert as_table.exit_code == 0 and "Ready" in as_table.stdout and other["name"] not in as_table.stdout
    assert piped.returncode == 0, piped.stderr
    assert other["name"] in piped.stdout.split() and "mistral-7b-instruct-v0-2-awq" in piped.stdout.split(), piped.stdout
    assert "…" not in piped.stdout and refused["reason"] in piped.stdout, "no cell is cut, rejections included"


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


# ------------------------------------------------- the first hour (issue 16): bugs and visible failures


@pytest.mark.parametrize("kind", list(EventKind), ids=lambda kind: kind.value)
def test_every_event_kind_has_a_line(kind: EventKind) -> None:
    """`events replay` and `events tail --inbound` show any event without crashing (an unpublish event did)."""
    from events.codec import DecodedEvent
    from events.display import describe

    data = sample(kind)
    line = describe(DecodedEvent(id="e1", kind=kind, source="/test", time=None, content_hash=None, data=data))

    assert (getattr(data, "subject", None) or "tiny-demo") in line


def test_replay_shows_an_unpublish_event(cli: Any, clean_stream: StreamSettings) -> None:
    for command in (("publish", str(TINY)), ("deploy", "tiny-demo", "-n", "llm"), ("unpublish", "tiny-demo@1")):
        assert cli(*command).exit_code == 0

    result = cli("events", "replay")

    assert result.exit_code == 0, result.output
    assert "template.version.deleted tiny-demo@1" in result.stdout
    assert "deployment.requested llm/tiny-demo (tiny-demo)" in result.stdout


@pytest.fixture
def no_streams(nats_options: NatsOptions) -> None:
    async def delete_all() -> None:
        client = await nats_options.connect()
        try:
            js = client.jetstream()
            for info in await js.streams_info():
                await js.delete_stream(str(info.config.name))
        finally:
            await client.close()

    run_in_thread(delete_all())


@pytest.mark.parametrize(
    ("args", "stream"),
    [(("status",), "STOKEHOLD_STATUS"), (("events", "replay"), "STOKEHOLD"), (("stream", "info"), "STOKEHOLD")],
)
def test_reading_before_the_streams_exist_is_one_line_and_exit_1(cli: Any, no_streams: None, args: tuple[str, ...], stream: str) -> None:
    result = cli(*args)

    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "not exist: run `stokehold stream provision`" in result.stderr
    assert f"{stream} does not exist" in result.stderr or f"{stream}, " in result.stderr


def test_what_the_cli_can_check_is_refused_before_sending(cli: Any, clean_stream: StreamSettings, tmp_path: Path) -> None:
    changed = tmp_path / "changed.yaml"
    changed.write_text(TINY.read_text().replace("max_replicas: 1", "max_replicas: 2"))
    assert cli("publish", str(TINY)).exit_code == 0

    nope = cli("deploy", "nope", "-n", "llm")
    version_two = cli("deploy", "tiny-demo@2", "-n", "llm")
    other_content = cli("publish", str(changed))
    assert cli("unpublish", "tiny-demo@1").exit_code == 0
    republished = cli("publish", str(TINY))

    assert nope.exit_code == 1 and "nope has no published version" in nope.stderr
    assert version_two.exit_code == 1 and "tiny-demo@2 is not published (published versions: 1)" in version_two.stderr
    assert other_content.exit_code == 1 and "tiny-demo@1 is already published with other content" in other_content.stderr
    assert republished.exit_code == 1 and "tiny-demo@1 was deleted, and a version number is never reused: publish it as version 2" in (
        " ".join(republished.stderr.split())
    )
    kinds = [event["type"].removeprefix("dev.stokehold.") for event in _replayed(cli)]
    assert kinds == ["template.version.published", "template.version.deleted"], "nothing refused was sent"


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (("--min-replicas", "5", "--max-replicas", "2"), "min_replicas (5) exceeds max_replicas (2)"),
        (("--keep-hot", "forever"), "overrides.keep_hot: 'forever' is not a duration like '10m', '1h30m' or '45s'"),
        (("--keep-hot", "2h"), "keep_hot '2h' is longer than 1h"),
    ],
)
def test_deploy_errors_are_sentences_and_come_before_connecting(cli: Any, args: tuple[str, ...], sentence: str) -> None:
    result = cli("deploy", "tiny-demo", "-n", "llm", *args, url=f"nats://127.0.0.1:{_closed_port()}")

    assert result.exit_code == 1
    assert sentence in result.stderr and "pattern" not in result.stderr and "connect" not in result.stderr


@pytest.fixture
def controller(nats_url: str, clean_stream: StreamSettings, tmp_path: Path) -> Iterator[ControllerProcess]:
    """The controller as its own process, dir sink, serving the namespace llm."""
    args = ["--nats-url", nats_url, "--sink", "dir", "--dir", str(tmp_path / "gitops"), "--namespace", "llm"]
    process = ControllerProcess(args, tmp_path / "controller.log")
    with process:
        process.wait_ready()
        yield process


def test_wait_follows_the_controllers_answer(cli: Any, controller: ControllerProcess) -> None:
    published = cli("publish", str(TINY), "--wait")
    applied = cli("deploy", "tiny-demo", "-n", "llm", "--wait")
    unchanged = cli("deploy", "tiny-demo", "-n", "llm", "--wait")
    stopped = cli("stop", "tiny-demo", "-n", "llm", "--wait")

    assert published.exit_code == 0, published.output
    assert published.stdout.splitlines()[0].split()[-1] == "OUTCOME" and published.stdout.splitlines()[1].split()[-1] == "applied"
    assert applied.exit_code == 0, applied.output
    assert "applied: llm/tiny-demo created (tiny-demo@1)" in applied.stdout
    assert unchanged.exit_code == 0 and "applied: llm/tiny-demo unchanged (tiny-demo@1)" in unchanged.stdout
    assert stopped.exit_code == 0 and "applied: llm/tiny-demo stopped (tiny-demo@1)" in stopped.stdout


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("-n", "kube-system"), "namespace 'kube-system' is reserved"),
        (("-n", "team-x"), "namespace 'team-x' is not one the controller serves: namespaces are opt-in"),
        (("-n", "llm", "--min-replicas", "5"), "overrides do not fit the template: <root>: min_replicas (5) exceeds max_replicas (1)"),
    ],
)
def test_deploy_wait_of_a_dead_lettered_deployment_prints_the_reason_and_fails(
    cli: Any, controller: ControllerProcess, args: tuple[str, ...], reason: str
) -> None:
    assert cli("publish", str(TINY)).exit_code == 0

    result = cli("deploy", "tiny-demo", *args, "--wait", "--timeout", "10")  # the controller's answer within 10 s
    status = cli("status")

    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: the controller rejected it: ") and reason in " ".join(result.stderr.split())
    assert status.exit_code == 0 and reason.split(":")[0] in " ".join(status.stdout.split()), "status shows the rejection"


def test_templates_list_piped_shows_full_names() -> None:
    """`stokehold templates list | cat`: no column is cut to 80 characters when stdout is not a terminal."""
    done = subprocess.run(
        [sys.executable, "-m", "events", "templates", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "COLUMNS"},
    )

    latest = {version.name: version for version in sorted(load_catalog(), key=lambda version: version.version)}
    names = [line.split()[0] for line in done.stdout.splitlines()[1:]]
    assert names == sorted(latest)
    assert "…" not in done.stdout and all(version.spec.source in done.stdout.split() for version in latest.values())


def test_table_commands_have_json(cli: Any, clean_stream: StreamSettings) -> None:
    templates = CliRunner().invoke(app, ["templates", "list", "--json"])
    published = cli("publish", str(TINY), "--json")
    stream = cli("stream", "info", "--json")

    assert [json.loads(line)["name"] for line in templates.stdout.splitlines()][-1] == "tiny-demo"
    assert json.loads(published.stdout)["template"] == "tiny-demo" and json.loads(published.stdout)["stream_sequence"] == 1
    assert json.loads(stream.stdout)["name"] == "STOKEHOLD"


def test_models_describe_is_readable(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "vocab_size": 512, "hidden_size": 64}))

    result = CliRunner().invoke(app, ["models", "describe", str(tmp_path)])

    assert result.exit_code == 0, result.output
    assert "architectures: LlamaForCausalLM" in result.stdout and "vocab_size: 512" in result.stdout
    assert "{" not in result.stdout and "'" not in result.stdout, "not a Python repr"
