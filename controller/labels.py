"""The labels and annotations stokehold's InferenceServices carry, and how to read them (pure, no I/O).

The renderer writes them; the sinks, the reconciler and the status watcher read them.
"""

from __future__ import annotations

from typing import Any

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "stokehold"
TEMPLATE_LABEL = "stokehold.dev/template"
VERSION_LABEL = "stokehold.dev/version"
HASH_ANNOTATION = "stokehold.dev/content-hash"
SOURCE_EVENT_ANNOTATION = "stokehold.dev/source-event-id"
STOP_ANNOTATION = "serving.kserve.io/stop"

Object = dict[str, Any]


def is_managed(obj: Object) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE)


def content_hash_of(obj: Object) -> str | None:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(HASH_ANNOTATION)
    return str(value) if value is not None else None
