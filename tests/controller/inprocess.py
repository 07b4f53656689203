"""The controller in-process on the `kube` sink (API emulator over HTTPS, real nats-server), for the wiring tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats

from controller.app import Controller
from controller.cli import build_config
from controller.config import ControllerConfig
from tests.controller.test_integration import Env
from tests.k8s_emulator import KubernetesEmulator


def kube_config(env: Env, emulator: KubernetesEmulator, namespaces: list[str], **flags: Any) -> ControllerConfig:
    """`stokehold controller run --sink kube` on the test's stream and the emulator; `flags` add to or override it."""
    base: dict[str, Any] = {
        "nats.url": env.config.nats.url,
        "stream": env.config.stream,
        "subject_root": env.root,
        "durable": "controller",
        "sink": "kube",
        "kubeconfig": emulator.kubeconfig,
        "namespaces": namespaces,
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "resync_interval_s": 0,
    }
    return build_config(base | flags)


async def start(config: ControllerConfig) -> tuple[Controller, asyncio.Task[None]]:
    controller = Controller(config)
    task = asyncio.create_task(controller.run())
    await asyncio.wait({task, asyncio.create_task(controller.wait_started())}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    return controller, task


async def stop(controller: Controller, task: asyncio.Task[None]) -> None:
    controller.stop()
    await asyncio.wait_for(task, 30)


async def kube_env(nats_url: str, tmp_path: Path, emulator: KubernetesEmulator) -> AsyncIterator[Env]:
    """A test's stream and status listener on an emptied emulator (the body of the modules' `env` fixtures)."""
    emulator.reset()
    nc = await nats.connect(nats_url)
    environment = Env(nats_url, tmp_path / "unused", nc)
    await environment.listen()
    yield environment
    await nc.drain()
