"""NATS subject permissions per publisher, as docs/security.md recommends, on a nats-server with TLS.

The server's `authorization` block is read from docs/security.md itself (its ```conf block), so
the documented configuration is the tested one. Passwords are nats-server variables defined here.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
import yaml
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError
from typer.testing import CliRunner

from events.cli import app as cli_app
from events.codec import decode
from events.local_server import LocalNatsServer, TlsFiles
from events.options import NatsOptions
from events.publisher import Publisher, PublishError
from events.types import (
    STREAM_NAME,
    DeploymentReady,
    EventKind,
    EventRejected,
    deadletter_subject,
    role_of_subject,
    status_subject,
    stream_name,
    template_subject,
)
from tests.fixtures.nats import reset_stream, run_in_thread
from tests.fixtures.tls import build_pki
from tests.kube.helpers import eventually
from tests.security.hostile import MARKER, TEAM_A, TEAM_B, raw_event, running_controller, version_document

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"
PASSWORDS = {
    "ADMIN_PASSWORD": "admin-pw",
    "CONTROLLER_PASSWORD": "controller-pw",
    "TEAM_A_PASSWORD": "team-a-pw",
    "TEAM_C_PASSWORD": "team-c-pw",
}
USERS = {
    "admin": "ADMIN_PASSWORD",
    "stokehold-controller": "CONTROLLER_PASSWORD",
    "publisher-team-a": "TEAM_A_PASSWORD",
    "deployer-team-c": "TEAM_C_PASSWORD",
}
INBOXES = {"publisher-team-a": "_INBOX_team_a", "deployer-team-c": "_INBOX_team_c"}
REFUSAL_WAIT_S = 1.0  # a refused publish is dropped by the server: the publisher's ack wait runs out


def documented_config() -> str:
    found = re.search(r"```conf\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)
    assert found, "docs/security.md has no ```conf block"
    return found.group(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNatsServer]:
    pki = build_pki(tmp_path_factory.mktemp("pki"))
    variables = "".join(f'{name}: "{value}"\n' for name, value in PASSWORDS.items())
    tls = TlsFiles(cert=pki["server"].cert, key=pki["server"].key, ca=pki["ca"].cert)
    with LocalNatsServer(config=variables + documented_config(), tls=tls) as started:
        run_in_thread(reset_stream(options_for(started, "admin")))  # the operator provisions the stream
        yield started


def options_for(server: LocalNatsServer, user: str) -> NatsOptions:
    inbox = {"inbox_prefix": INBOXES[user]} if user in INBOXES else {}
    return server.options(user=user, password=PASSWORDS[USERS[user]], max_reconnect_attempts=1, **inbox)


@contextlib.asynccontextmanager
async def publisher(server: LocalNatsServer, user: str) -> AsyncIterator[Publisher]:
    client = await options_for(server, user).connect()
    async with Publisher(client, owns_client=True, ack_timeout=REFUSAL_WAIT_S) as connected:
        yield connected


@contextlib.asynccontextmanager
async def admin(server: LocalNatsServer) -> AsyncIterator[NatsClient]:
    client = await options_for(server, "admin").connect()
    try:
        yield client
    finally:
        await client.close()


async def stored(server: LocalNatsServer, subject: str) -> Any | None:
    """The last event stored on `subject` (in the stream that holds its kind), decoded, or None."""
    role = role_of_subject(subject)
    assert role is not None, subject
    async with admin(server) as client:
        try:
            msg = await client.jetstream().get_last_msg(stream_name(role), subject)
        except NotFoundError:
            return None
    return decode(msg.headers, msg.data or b"").data


def violations(caplog: pytest.LogCaptureFixture, action: str, subject: str) -> list[str]:
    wanted = f'permissions violation for {action} to "{subject.lower()}"'
    return [r.getMessage() for r in caplog.records if wanted in r.getMessage().lower()]


async def test_team_a_publishes_its_own_templates_only(server: LocalNatsServer, caplog: pytest.LogCaptureFixture) -> None:
    async with publisher(server, "publisher-team-a") as team_a:
        result = await team_a.publish_version(version_document(TEAM_A))
        assert result.stream == STREAM_NAME and result.subject == template_subject(TEAM_A, EventKind.VERSION_PUBLISHED)
        await team_a.request_deployment(TEAM_A, namespace="llm")

        with pytest.raises(PublishError, match="did not acknowledge"):
            await team_a.publish_version(version_document(TEAM_B))
    other_team = template_subject(TEAM_B, EventKind.VERSION_PUBLISHED)
    assert violations(caplog, "publish", other_team)
    assert await stored(server, other_team) is None
    requested = await stored(server, template_subject(TEAM_A, EventKind.DEPLOYMENT_REQUESTED))
    assert requested is not None and requested.namespace == "llm"


async def test_a_publisher_cannot_forge_status_or_dead_letters_or_call_the_jetstream_api(
    server: LocalNatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    ready = DeploymentReady(template=TEAM_A, namespace="llm", name=TEAM_A, url=f"http://{MARKER}.example")
    rejected = EventRejected(subject=template_subject(TEAM_B, EventKind.DEPLOYMENT_REQUESTED), reason=MARKER)
    async with publisher(server, "publisher-team-a") as team_a:
        with pytest.raises(PublishError):
            await team_a.publish(EventKind.DEPLOYMENT_READY, ready)
        with pytest.raises(PublishError):
            await team_a.publish(EventKind.EVENT_REJECTED, rejected)
        with pytest.raises((TimeoutError, nats.errors.TimeoutError)):
            await team_a.client.request(f"$JS.API.STREAM.DELETE.{STREAM_NAME}", b"", timeout=REFUSAL_WAIT_S)
    for subject in (status_subject(TEAM_A, EventKind.DEPLOYMENT_READY), deadletter_subject(TEAM_B), f"$JS.API.STREAM.DELETE.{STREAM_NAME}"):
        assert violations(caplog, "publish", subject), subject
    assert await stored(server, status_subject(TEAM_A, EventKind.DEPLOYMENT_READY)) is None
    assert await stored(server, deadletter_subject(TEAM_B)) is None
    async with admin(server) as client:
        assert (await client.jetstream().stream_info(STREAM_NAME)).config.name == STREAM_NAME


async def test_a_publisher_cannot_read_the_controllers_inbox_or_the_stream(
    server: LocalNatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with publisher(server, "publisher-team-a") as team_a:
        await team_a.client.subscribe("_INBOX.>")
        await team_a.client.subscribe("stokehold.templates.>")
        await team_a.client.flush()
        await eventually(lambda: violations(caplog, "subscription", "stokehold.templates.>"), "the second refusal")
    assert violations(caplog, "subscription", "_INBOX.>")


async def test_a_deployer_deploys_any_template_but_publishes_no_version(server: LocalNatsServer, caplog: pytest.LogCaptureFixture) -> None:
    async with publisher(server, "deployer-team-c") as team_c:
        result = await team_c.request_deployment(TEAM_B, namespace="llm")
        assert result.subject == template_subject(TEAM_B, EventKind.DEPLOYMENT_REQUESTED)
        with pytest.raises(PublishError):
            await team_c.publish_version(version_document(TEAM_B, version=7, changes={"spec.engine.trust_remote_code": True}))
    assert violations(caplog, "publish", template_subject(TEAM_B, EventKind.VERSION_PUBLISHED))
    assert await stored(server, template_subject(TEAM_B, EventKind.VERSION_PUBLISHED)) is None


async def test_the_controller_works_with_exactly_its_permissions(server: LocalNatsServer, tmp_path: Path) -> None:
    flags = {
        "nats.url": server.url,
        "nats.user": "stokehold-controller",
        "nats.password": PASSWORDS["CONTROLLER_PASSWORD"],
        "nats.tls_ca": str(server.tls.ca) if server.tls else None,
        "sink": "dir",
        "dir": str(tmp_path),
        "namespaces": ["prod"],
    }
    async with running_controller(flags) as controller:
        assert controller.config.nats.uses_tls
        async with publisher(server, "publisher-team-a") as team_a:
            await team_a.publish_version(version_document(TEAM_A, version=2))
            await team_a.request_deployment(TEAM_A, namespace="prod")
            # team A's own subject, another team's template: stored, then dead-lettered by the controller
            headers, payload = raw_event(EventKind.DEPLOYMENT_REQUESTED.ce_type, {"template": TEAM_B, "namespace": "prod"})
            forged = await team_a.client.jetstream().publish(
                template_subject(TEAM_A, EventKind.DEPLOYMENT_REQUESTED), payload, headers=headers
            )
        await eventually(lambda: (tmp_path / "prod" / f"{TEAM_A}.yaml").exists(), "the controller's write", limit=20)
        applied = await _eventually_stored(server, status_subject(TEAM_A, EventKind.DEPLOYMENT_APPLIED))
        letter = await _eventually_stored(server, deadletter_subject(TEAM_A))
    assert applied.template == TEAM_A and applied.action in ("created", "updated")
    assert letter.stream_sequence == forged.seq and "the subject names template" in letter.reason
    refused = [line for line in server.log_path.read_text().splitlines() if "stokehold-controller" in line and "Violation" in line]
    assert refused == []


async def _eventually_stored(server: LocalNatsServer, subject: str) -> Any:
    deadline = asyncio.get_running_loop().time() + 20
    while asyncio.get_running_loop().time() < deadline:
        found = await stored(server, subject)
        if found is not None:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"nothing stored on {subject}")


def test_the_cli_publishes_with_the_publishers_own_inbox_prefix(server: LocalNatsServer, tmp_path: Path) -> None:
    """`stokehold publish` as publisher-team-a: with its inbox prefix it works; with NATS's default `_INBOX` it gets no ack."""
    document = tmp_path / "team-a.yaml"
    document.write_text(yaml.safe_dump(version_document(TEAM_A, version=7)))
    assert server.tls is not None and server.tls.ca is not None
    common = ["--nats-url", server.url, "--tls-ca", str(server.tls.ca), "--nats-user", "publisher-team-a"]
    common += ["--nats-password", PASSWORDS["TEAM_A_PASSWORD"], "--connect-attempts", "1"]
    subject = template_subject(TEAM_A, EventKind.VERSION_PUBLISHED)
    runner = CliRunner()

    # The publish itself is allowed, but the stream's acknowledgement cannot reach `_INBOX.…`:
    # the CLI cannot confirm it and says so.
    without = runner.invoke(cli_app, [*common, "publish", str(document)])
    assert without.exit_code != 0
    assert "did not acknowledge" in without.output

    with_prefix = runner.invoke(cli_app, [*common, "--nats-inbox-prefix", INBOXES["publisher-team-a"], "publish", str(document)])
    assert with_prefix.exit_code == 0, with_prefix.output
    assert run_in_thread(stored(server, subject)).version == 7
