"""The controller wired to the `kube` sink, the status watcher and leader election (API emulator over HTTPS, real nats-server).

The sink, watcher and elector are tested in depth in tests/kube; this checks that the
controller process puts them together: only the leader writes, a standby takes over when
the leader stops, and KServe's readiness comes back as a `deployment.ready` event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from controller.config import ControllerConfig
from events.types import DeploymentRequested, EventKind
from tests.controller import inprocess
from tests.controller.inprocess import kube_env, start
from tests.controller.test_integration import Env, settled, tiny, wait_for
from tests.k8s_emulator import KubernetesEmulator

pytestmark = pytest.mark.asyncio(loop_scope="module")


def kube_config(env: Env, emulator: KubernetesEmulator, identity: str) -> ControllerConfig:
    election = {"leader_election": True, "lease_namespace": "stokehold-system", "lease_name": f"lease-{env.root}", "identity": identity}
    return inprocess.kube_config(env, emulator, ["llm"], **election)


@pytest.fixture
async def env(nats_server: Any, tmp_path: Path, k8s_emulator: KubernetesEmulator) -> AsyncIterator[Env]:
    async for environment in kube_env(nats_server.url, tmp_path, k8s_emulator):
        yield environment


async def test_leader_writes_standby_takes_over_and_readiness_is_reported(env: Env, k8s_emulator: KubernetesEmulator) -> None:
    first, first_task = await start(kube_config(env, k8s_emulator, "replica-a"))
    await wait_for(lambda: first.role == "leader", "the first replica to lead")
    second, second_task = await start(kube_config(env, k8s_emulator, "replica-b"))
    try:
        await wait_for(lambda: second.readiness().role == "standby", "the second replica to stand by")
        assert second.readiness().ready, "a standby is ready: it takes over when needed"

        await env.publish(EventKind.VERSION_PUBLISHED, tiny(1), "tiny-demo")
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo", namespace="llm"), "tiny-demo")
        isvc = await wait_for(lambda: k8s_emulator.get("isvc", "llm", "tiny-demo"), "the InferenceService in the API")
        assert isvc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "stokehold"
        assert second.reconciler is None or not second.reconciler.live, "the standby wrote nothing"

        k8s_emulator.set_isvc_status("llm", "tiny-demo", ready=True, url="http://tiny-demo.llm.example.com")
        ready = await wait_for(lambda: [d for k, d in env.status if k == "deployment.ready"], "deployment.ready from the watcher")
        assert ready[0].name == "tiny-demo" and ready[0].url == "http://tiny-demo.llm.example.com"

        first.stop()  # graceful: finishes its batch, then releases the Lease
        await asyncio.wait_for(first_task, 30)
        await wait_for(lambda: second.role == "leader", "the standby to take over", limit=30)
        await env.publish(EventKind.VERSION_PUBLISHED, tiny(2, max_tokens=64), "tiny-demo")
        await wait_for(
            lambda: (
                (k8s_emulator.get("isvc", "llm", "tiny-demo") or {}).get("metadata", {}).get("labels", {}).get("stokehold.dev/version")
                == "2"
            ),
            "the new leader to apply version 2",
        )
        await settled(second, env)
        assert env.dead_letters == []
    finally:
        for controller, task in ((first, first_task), (second, second_task)):
            controller.stop()
            await asyncio.wait_for(task, 30)
