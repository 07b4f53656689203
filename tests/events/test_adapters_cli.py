"""`stokehold adapters publish|list|attach|detach` against a real nats-server (typer's CliRunner)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from events.stream import StreamSettings
from tests.events.test_cli import _no_inherited_nats_env, cli

__all__ = ["_no_inherited_nats_env", "cli"]  # the fixtures, imported for this module's tests


def stored(cli: Any) -> list[dict[str, Any]]:
    result = cli("events", "replay", "--json", "--subject", "stokehold.templates.>")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def rows(cli: Any, *args: str) -> list[list[str]]:
    result = cli("adapters", "list", *args)
    assert result.exit_code == 0, result.output
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in result.stdout.splitlines() if line.startswith("│")]


def test_publish_attach_list_detach_round_trip(cli: Any, clean_stream: StreamSettings) -> None:
    published = cli("adapters", "publish", "alpha", "-t", "tiny-demo", "-v", "1", "-s", "hf://org/alpha@main", "-r", "8")
    second = cli("adapters", "publish", "beta", "-t", "tiny-demo", "-v", "2", "-s", "adapters/beta", "-r", "16", "--base-version", "1")
    attached = cli("adapters", "attach", "alpha", "-t", "tiny-demo", "-n", "team-a", "-d", "chat")

    assert published.exit_code == 0 and "adapter.version.published" in published.stdout, published.output
    assert second.exit_code == 0 and attached.exit_code == 0, second.output + attached.output
    assert "stokehold.templates.tiny-demo.deployment.adapter.attached" in attached.stdout
    assert rows(cli) == [
        ["tiny-demo", "alpha", "1", "8", "hf://org/alpha@main", "team-a/chat"],
        ["tiny-demo", "beta", "2", "16", "adapters/beta", ""],
    ]

    detached = cli("adapters", "detach", "alpha", "-t", "tiny-demo", "-n", "team-a", "-d", "chat")
    assert detached.exit_code == 0, detached.output
    assert rows(cli, "-t", "tiny-demo")[0] == ["tiny-demo", "alpha", "1", "8", "hf://org/alpha@main", ""]
    events = stored(cli)
    assert [e["type"].rpartition("stokehold.")[2] for e in events] == [
        "adapter.version.published",
        "adapter.version.published",
        "deployment.adapter.attached",
        "deployment.adapter.detached",
    ]
    assert events[2]["data"] == {"template": "tiny-demo", "namespace": "team-a", "name": "chat", "adapter": "alpha", "version": None}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["publish", "a", "-t", "tiny-demo", "-v", "1", "-s", "adapters/../../etc", "-r", "8"], "must not contain '..'"),
        (["publish", "a", "-t", "tiny-demo", "-v", "1", "-s", "/etc/passwd", "-r", "8"], "relative to the model cache"),
        (["publish", "a", "-t", "tiny-demo", "-v", "1", "-s", "http://example.com/a", "-r", "8"], "is not allowed for adapters"),
        (["publish", "a", "-t", "tiny-demo", "-v", "1", "-s", "adapters/a", "-r", "1024"], "rank"),
        (["publish", "Not_A_Name", "-t", "tiny-demo", "-v", "1", "-s", "adapters/a", "-r", "8"], "name"),
        (["attach", "a", "-t", "tiny-demo", "-v", "0"], "version"),
        (["detach", "a/b", "-t", "tiny-demo"], "adapter"),
    ],
    ids=["dot-dot", "absolute", "scheme", "rank", "name", "attach-version", "detach-name"],
)
def test_bad_input_is_refused_before_anything_is_sent(cli: Any, clean_stream: StreamSettings, args: list[str], message: str) -> None:
    result = cli("adapters", *args)
    assert result.exit_code != 0
    assert message in result.output
    assert stored(cli) == [], "nothing reached the stream"
