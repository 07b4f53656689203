"""From a live InferenceService to the status events stokehold publishes (pure: no I/O).

    no status yet                                   → REQUESTED
    not ready yet (Pending/Loading, Ready Unknown,  → LOADING
      Ready False without a failure reason, or the
      status describes an older generation)
    Ready True                                      → SUCCEEDED   + deployment.ready (status.url)
    Ready False with a failure reason, or the model → FAILED      + deployment.failed (reason: message)
      FailedToLoad

Only transitions are reported: `transition(previous, isvc)` returns the new observation and
the events that differ from `previous`. A stopped service (`serving.kserve.io/stop`) reports
nothing: it is not meant to be loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from controller.labels import STOP_ANNOTATION, TEMPLATE_LABEL, VERSION_LABEL, Object, content_hash_of
from events.types import DeploymentFailed, DeploymentLoadStatus, DeploymentReady, EventKind, LoadStatus

# Reasons KServe and Knative give when a service will not become ready without a change.
# Not "Unschedulable": a pod waiting for a GPU node is still on its way (cluster autoscaling).
FAILURE_REASONS = frozenset(
    {
        "FailedToLoad",
        "ModelLoadFailed",
        "ProgressDeadlineExceeded",
        "RevisionFailed",
        "RevisionMissing",
        "ContainerMissing",
        "ExitCode",
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "InvalidPredictorSpec",
        "InvalidSpec",
        "NoSupportingRuntime",
        "RuntimeNotRecognized",
        "RuntimeDisabled",
        "RuntimeUnhealthy",
        "InvalidGPUAllocation",
        "ServerlessModeRejected",
    }
)
FAILED_MODEL_STATES = frozenset({"FailedToLoad"})


@dataclass(frozen=True)
class Observation:
    """What one look at an InferenceService says about its loading."""

    status: LoadStatus
    reason: str | None = None  # FAILED: "Reason: message"; LOADING: what it waits for, when known
    url: str | None = None
    content_hash: str | None = None

    def same_news(self, other: Observation | None) -> bool:
        """Whether reporting this after `other` would tell a subscriber nothing new."""
        if other is None or other.status is not self.status or other.content_hash != self.content_hash:
            return False
        if self.status is LoadStatus.FAILED:
            return other.reason == self.reason
        if self.status is LoadStatus.SUCCEEDED:
            return other.url == self.url
        return True


@dataclass(frozen=True)
class StatusEvent:
    kind: EventKind
    data: BaseModel
    template: str


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(c.get("type")): c for c in status.get("conditions") or [] if isinstance(c, dict)}


def _failure(status: dict[str, Any]) -> str | None:
    """'Reason: message' when the status says the service failed, else None."""
    model = status.get("modelStatus") or {}
    states = model.get("states") or {}
    if states.get("targetModelState") in FAILED_MODEL_STATES or states.get("activeModelState") in FAILED_MODEL_STATES:
        info = model.get("lastFailureInfo") or {}
        return _reason_text(str(info.get("reason") or "FailedToLoad"), info.get("message"))
    conditions = _conditions(status)
    ready = conditions.get("Ready", {})
    candidates = [ready] + [c for kind, c in sorted(conditions.items()) if kind != "Ready"]
    for condition in candidates:
        if condition.get("status") == "False" and condition.get("reason") in FAILURE_REASONS:
            return _reason_text(str(condition["reason"]), condition.get("message"))
    return None


def _reason_text(reason: str, message: Any) -> str:
    return f"{reason}: {message}" if message else reason


def observe(isvc: Object) -> Observation | None:
    """The load status an InferenceService shows; None when it is stopped (nothing to report)."""
    metadata = isvc.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    content_hash = content_hash_of(isvc)
    if str(annotations.get(STOP_ANNOTATION, "")).lower() == "true":
        return None
    status = isvc.get("status") or {}
    if not status:
        return Observation(LoadStatus.REQUESTED, content_hash=content_hash)
    observed = status.get("observedGeneration")
    generation = metadata.get("generation")
    stale = isinstance(observed, int) and isinstance(generation, int) and observed < generation
    ready = _conditions(status).get("Ready", {})
    if not stale and ready.get("status") == "True":
        return Observation(LoadStatus.SUCCEEDED, url=status.get("url"), content_hash=content_hash)
    failure = None if stale else _failure(status)
    if failure is not None:
        return Observation(LoadStatus.FAILED, reason=failure, content_hash=content_hash)
    waiting = ((status.get("modelStatus") or {}).get("states") or {}).get("targetModelState") or ready.get("reason")
    return Observation(LoadStatus.LOADING, reason=str(waiting) if waiting else None, content_hash=content_hash)


def _identity(isvc: Object) -> dict[str, Any] | None:
    metadata = isvc.get("metadata") or {}
    labels = metadata.get("labels") or {}
    template = labels.get(TEMPLATE_LABEL)
    if not template or not metadata.get("name") or not metadata.get("namespace"):
        return None
    version = labels.get(VERSION_LABEL)
    return {
        "template": str(template),
        "version": int(version) if isinstance(version, str) and version.isdigit() else None,
        "namespace": str(metadata["namespace"]),
        "name": str(metadata["name"]),
        "content_hash": content_hash_of(isvc),
    }


def events_for(observation: Observation, isvc: Object) -> list[StatusEvent]:
    identity = _identity(isvc)
    if identity is None:
        return []
    template = identity["template"]
    events = [
        StatusEvent(
            EventKind.LOAD_STATUS,
            DeploymentLoadStatus(status=observation.status, reason=observation.reason, **identity),
            template,
        )
    ]
    if observation.status is LoadStatus.SUCCEEDED:
        events.append(StatusEvent(EventKind.DEPLOYMENT_READY, DeploymentReady(url=observation.url, **identity), template))
    elif observation.status is LoadStatus.FAILED:
        events.append(
            StatusEvent(EventKind.DEPLOYMENT_FAILED, DeploymentFailed(reason=observation.reason or "failed", **identity), template)
        )
    return events


def transition(previous: Observation | None, isvc: Object) -> tuple[Observation | None, list[StatusEvent]]:
    """The observation to remember for this object, and the events to publish (none if nothing changed)."""
    current = observe(isvc)
    if current is None or current.same_news(previous):
        return current, []
    return current, events_for(current, isvc)
