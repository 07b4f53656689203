"""Shared by the security tests: hostile inputs, raw (unvalidated) events, the walk over stored objects,
the controller run in-process and a stokehold command run as a user does."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from controller.app import Controller
from controller.cli import build_config
from controller.labels import MANAGED_BY_LABEL, TEMPLATE_LABEL, VERSION_LABEL
from controller.render_config import RenderConfig
from events.codec import NATS_MSG_ID
from templates.catalog import load_catalog
from tests.k8s_emulator import KubernetesEmulator

REPO = Path(__file__).resolve().parents[2]
MARKER = "pwned"  # every hostile value carries it, so a stored object can be searched for all of them at once
# shaped like a Hugging Face token (not a real one): what a careless publisher pastes instead of a Secret reference
HF_TOKEN = "hf_pwnedAbCdEfGhIjKlMnOpQrStUvWxYz012345"
TEAM_A = "team-a-chat"
TEAM_B = "team-b-chat"
SAFE_LABEL_PREFIX = RenderConfig().template_label_prefix + "/"
CONTROLLER_LABELS = frozenset({MANAGED_BY_LABEL, "app.kubernetes.io/name", TEMPLATE_LABEL, VERSION_LABEL})
# pod-spec fields no event may set: KServe takes them from the ClusterServingRuntime
FORBIDDEN_FIELDS = frozenset(
    {"image", "command", "hostPath", "hostNetwork", "hostPID", "hostIPC", "privileged", "securityContext", "capabilities"}
    | {"serviceAccountName", "serviceAccount", "automountServiceAccountToken"}
)
_TINY = next(v for v in load_catalog() if v.name == "tiny-demo")


def set_path(document: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = document
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def version_document(name: str = TEAM_A, version: int = 1, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The tiny-demo catalog version as `name`@`version`, with `changes` ({"spec.image": ...}) applied."""
    document = copy.deepcopy(_TINY.to_document())
    document["template"]["name"] = name
    document["version"] = version
    document["spec"]["served_model_name"] = name
    for dotted, value in (changes or {}).items():
        set_path(document, dotted, value)
    return document


def raw_event(ce_type: str, data: Any, event_id: str | None = None) -> tuple[dict[str, str], bytes]:
    """A binary-mode CloudEvent built by hand, the way any publisher could: no validation at all."""
    event_id = event_id or secrets.token_hex(8)
    headers = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "/tests/security",
        "ce-type": ce_type,
        "content-type": "application/json",
        NATS_MSG_ID: event_id,
    }
    payload = data if isinstance(data, bytes) else json.dumps(data).encode()
    return headers, payload


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(path, key, value) for every mapping entry and list item below `node`."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{path}.{key}", key, value
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield f"{path}[{index}]", index, value
            yield from _walk(value, f"{path}[{index}]")


def stored_problems(obj: dict[str, Any]) -> list[str]:
    """Everything in a stored object that an event should never have been able to put there."""
    problems = [f"{path}: forbidden field" for path, key, _ in _walk(obj) if key in FORBIDDEN_FIELDS]
    labels = obj["metadata"].get("labels") or {}
    for key, value in labels.items():
        if key not in CONTROLLER_LABELS and not key.startswith(SAFE_LABEL_PREFIX):
            problems.append(f"label {key}={value}: outside stokehold's own keys and {SAFE_LABEL_PREFIX}")
    for path, _, value in _walk({k: v for k, v in obj.items() if k != "metadata"} | {"annotations": obj["metadata"].get("annotations")}):
        if isinstance(value, str) and (MARKER in value or HF_TOKEN in value):
            problems.append(f"{path}: carries a hostile value {value[:60]!r}")
    for path, _, value in _walk(obj):
        if path.endswith(".env") and isinstance(value, list):
            problems += [f"{path}: {e['name']} has a literal value" for e in value if e["name"] == "HF_TOKEN" and "value" in e]
            problems += [f"{path}: {e['name']} holds a token" for e in value if str(e.get("value", "")).startswith("hf_")]
    return problems


# ------------------------------------------------------------------ controller

_QUICK = {"metrics_host": "127.0.0.1", "metrics_port": 0, "resync_interval_s": 0, "retry_backoff_s": 0.05}


def on_kube(kube: KubernetesEmulator, nats_url: str, root: str) -> dict[str, Any]:
    """Controller flags for the kube sink on the emulator, with its own subject root and stream."""
    return {"nats.url": nats_url, "stream": root.upper(), "subject_root": root, "sink": "kube", "kubeconfig": kube.kubeconfig}


@asynccontextmanager
async def running_controller(flags: dict[str, Any]) -> AsyncIterator[Controller]:
    """The controller in-process (flags as `stokehold controller run` takes them), consuming or standing by."""
    controller = Controller(build_config(_QUICK | flags))
    task = asyncio.create_task(controller.run())
    try:
        await asyncio.wait_for(controller.wait_started(), 20)
        yield controller
    finally:
        controller.stop()  # with leader election it steps down: the Lease is released
        await asyncio.wait_for(task, 30)


async def run_stokehold(command: list[str], environment: dict[str, str]) -> tuple[int, str]:
    """Run a stokehold command to its end (killed after 60 s), with no STOKEHOLD_ variable inherited but `environment`;
    its exit status and its output, both streams."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("STOKEHOLD_")}
    env |= {"PYTHONPATH": str(REPO), **environment}
    process = await asyncio.create_subprocess_exec(
        *command, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")
