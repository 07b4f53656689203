"""Objects and waits shared by the Kubernetes tests."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

from controller.labels import HASH_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE, TEMPLATE_LABEL, VERSION_LABEL, Object


def isvc(name: str, *, template: str | None = None, version: int = 1, namespace: str = "default", content_hash: str = "sha256:1") -> Object:
    """A managed InferenceService as the renderer produces them (labels, content-hash annotation, spec)."""
    template = template or name
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE, TEMPLATE_LABEL: template, VERSION_LABEL: str(version)},
            "annotations": {HASH_ANNOTATION: content_hash, "serving.kserve.io/deploymentMode": "Knative"},
        },
        "spec": {
            "predictor": {
                "minReplicas": 0,
                "maxReplicas": 1,
                "model": {"modelFormat": {"name": "vllm"}, "runtime": "stokehold-vllm-ray", "args": [f"--served-model-name={template}"]},
            }
        },
    }


async def eventually(condition: Callable[[], Any], what: str, limit: float = 10.0) -> Any:
    """Poll until `condition()` (or what it returns, when awaitable) is truthy (never an assertion about how long it took)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
