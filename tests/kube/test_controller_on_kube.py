"""Two controller replicas with the kube sink and leader election, against the emulator and a real nats-server.

Checks the wiring of KubeSink, the status watcher and the LeaderElector in `controller.app`:
one replica leads and writes InferenceServices, a status KServe sets comes back as
`deployment.ready`, and when the leader stops the standby takes over.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
from nats.aio.msg import Msg

from controller.app import Controller
from controller.cli import build_config
from events.codec import decode, encode
from events.types import DeploymentRequested, EventKind, TemplateVersionPublished, template_subject
from templates.catalog import load_catalog
from tests.k8s_emulator import KubernetesEmulator
from tests.kube.helpers import eventually

TINY = next(v for v in load_catalog() if v.name == "tiny-demo")
_runs = itertools.count()


@asynccontextmanager
async def replica(kube: KubernetesEmulator, nats_url: str, root: str, identity: str) -> AsyncIterator[Controller]:
    config = build_config(
        {
            "nats.url": nats_url,
            "stream": root.upper(),
            "subject_root": root,
            "sink": "kube",
            "kubeconfig": kube.kubeconfig,
            "leader_election": True,
            "lease_namespace": "stokehold-system",
            "namespaces": ["default", "llm"],
            "lease_name": root,
            "identity": identity,
            "metrics_host": "127.0.0.1",
            "metrics_port": 0,
            "resync_interval_s": 0,
            "retry_backoff_s": 0.05,
        }
    )
    controller = Controller(config)
    task = asyncio.create_task(controller.run())
    try:
        yield controller
    finally:
        controller.stop()
        await asyncio.wait_for(task, 20)


async def test_one_replica_leads_writes_and_hands_over(kube: KubernetesEmulator, nats_server: Any) -> None:
    root = f"kube{next(_runs)}"
    nc = await nats.connect(nats_server.url)
    statuses: list[tuple[str, Any]] = []

    async def on_status(msg: Msg) -> None:
        event = decode(msg.headers, msg.data)
        statuses.append((event.kind.value, event.data))

    await nc.subscribe(f"{root}.status.>", cb=on_status)
    js = nc.jetstream()

    async def publish(kind: EventKind, data: Any) -> None:
        headers, payload = encode(kind, data, source="/tests", subject_template="tiny-demo")
        await js.publish(template_subject("tiny-demo", kind, root), payload, headers=headers)

    try:
        async with replica(kube, nats_server.url, root, "replica-a") as first:
            await eventually(lambda: first.role == "leader", "the first replica to lead", limit=20)
            async with replica(kube, nats_server.url, root, "replica-b") as second:
                await eventually(lambda: second.role == "standby", "the second replica to stand by", limit=20)
                await publish(EventKind.VERSION_PUBLISHED, TemplateVersionPublished.model_validate(TINY.to_document()))
                await publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo"))
                await eventually(lambda: kube.get("isvc", "default", "tiny-demo"), "the InferenceService", limit=20)
                assert kube.get("lease", "stokehold-system", root)["spec"]["holderIdentity"] == "replica-a"  # type: ignore[index]

                kube.set_isvc_status("default", "tiny-demo", ready=True)
                ready = await eventually(lambda: [d for k, d in statuses if k == "deployment.ready"], "deployment.ready", limit=20)
                assert ready[0].url == "http://tiny-demo.default.example.com" and ready[0].template == "tiny-demo"

                first.stop()  # the leader shuts down and releases the lease: the standby takes over
                await eventually(lambda: second.role == "leader", "the standby to take over", limit=20)
                await publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo", name="tiny-two"))
                await eventually(lambda: kube.get("isvc", "default", "tiny-two"), "the new leader's write", limit=20)
                assert kube.get("lease", "stokehold-system", root)["spec"]["holderIdentity"] == "replica-b"  # type: ignore[index]
        assert [o["metadata"]["name"] for o in kube.objects("isvc")] == ["tiny-demo", "tiny-two"]
    finally:
        await nc.drain()
