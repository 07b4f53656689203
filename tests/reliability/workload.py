"""A seeded stream of inbound events and, computed independently of the controller, the state it must end in.

Every template gets, in its own order: version 1, a deployment request (following the latest
version), then more versions mixed with stop/resume pairs, and for some templates a final
`deployment.deleted`. Templates are interleaved at random, as many publishers would. The
expected end state is simple enough to derive by hand: a deleted deployment has no object;
any other serves its template's highest version and is stopped when its last stop/resume
was a stop.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from events.codec import encode
from events.types import (
    DeploymentDeleted,
    DeploymentRequested,
    DeploymentResumed,
    DeploymentStopped,
    EventKind,
    template_subject,
)
from templates.catalog import load_catalog

BASE_TEMPLATE = "tiny-demo"
SOURCE = "/tests/reliability"


@dataclass(frozen=True)
class PlannedEvent:
    template: str
    kind: EventKind
    version: int | None
    subject: str
    headers: dict[str, str]
    payload: bytes

    @property
    def event_id(self) -> str:
        return self.headers["Nats-Msg-Id"]


@dataclass(frozen=True)
class ExpectedObject:
    version: int
    stopped: bool


@dataclass
class Workload:
    namespace: str
    root: str
    events: list[PlannedEvent]
    expected: dict[str, ExpectedObject]  # InferenceService name -> what it must serve

    @property
    def templates(self) -> list[str]:
        return sorted({event.template for event in self.events})


def _version_document(base: dict[str, Any], template: str, number: int) -> dict[str, Any]:
    spec = {**base["spec"], "engine": {**base["spec"]["engine"], "max_num_seqs": 8 + number}}
    return {**base, "template": {**base["template"], "name": template}, "version": number, "spec": spec}


def build_workload(*, events: int, templates: int, seed: int, namespace: str, root: str) -> Workload:
    """About `events` events over `templates` templates (at least 2 per template)."""
    rng = random.Random(seed)
    base = next(v for v in load_catalog() if v.name == BASE_TEMPLATE).to_document()
    per_template, spare = divmod(events, templates)
    sequences: list[list[PlannedEvent]] = []
    expected: dict[str, ExpectedObject] = {}

    for index in range(templates):
        name = f"{root}-{index:03d}"
        budget = per_template + (1 if index < spare else 0)
        plan: list[tuple[EventKind, Any, int | None]] = [
            (EventKind.VERSION_PUBLISHED, _version_document(base, name, 1), 1),
            (EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template=name, namespace=namespace), None),
        ]
        version, stopped = 1, False
        deleted = rng.random() < 0.1 and budget > 3
        while len(plan) < budget - (1 if deleted else 0):
            if rng.random() < 0.2:
                kind = EventKind.DEPLOYMENT_RESUMED if stopped else EventKind.DEPLOYMENT_STOPPED
                model = DeploymentResumed if stopped else DeploymentStopped
                plan.append((kind, model(template=name, namespace=namespace), None))
                stopped = not stopped
            else:
                version += 1
                plan.append((EventKind.VERSION_PUBLISHED, _version_document(base, name, version), version))
        if deleted:
            plan.append((EventKind.DEPLOYMENT_DELETED, DeploymentDeleted(template=name, namespace=namespace), None))
        else:
            expected[name] = ExpectedObject(version, stopped)
        sequences.append([_planned(name, kind, data, number, root) for kind, data, number in plan])

    return Workload(namespace, root, _interleave(sequences, rng), expected)


def _planned(template: str, kind: EventKind, data: Any, version: int | None, root: str) -> PlannedEvent:
    headers, payload = encode(kind, data, source=SOURCE, subject_template=template)
    return PlannedEvent(template, kind, version, template_subject(template, kind, root), headers, payload)


def _interleave(sequences: list[list[PlannedEvent]], rng: random.Random) -> list[PlannedEvent]:
    """A random merge that keeps each template's own order."""
    slots = [index for index, sequence in enumerate(sequences) for _ in sequence]
    rng.shuffle(slots)
    cursors = [0] * len(sequences)
    merged = []
    for index in slots:
        merged.append(sequences[index][cursors[index]])
        cursors[index] += 1
    return merged
