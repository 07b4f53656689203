"""The desired-state reducer: versions, deployments, redelivery and rebuild (pure)."""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from controller.state import Change, DesiredState, InboundEvent, Rejected, rebuild
from events.types import (
    DeploymentDeleted,
    DeploymentRequested,
    DeploymentResumed,
    DeploymentStopped,
    EventKind,
    TemplateVersionDeleted,
    TemplateVersionPublished,
)
from templates.catalog import load_catalog
from templates.schema import VERSION_MAX

TINY = next(v for v in load_catalog() if v.name == "tiny-demo").to_document()
SERVED = frozenset({"default", "llm"})  # namespaces are opt-in: the tests' deployments go to these


def served(**settings: Any) -> DesiredState:
    return DesiredState(allowed_namespaces=SERVED, **settings)


KINDS: dict[type[BaseModel], EventKind] = {
    TemplateVersionPublished: EventKind.VERSION_PUBLISHED,
    TemplateVersionDeleted: EventKind.VERSION_DELETED,
    DeploymentRequested: EventKind.DEPLOYMENT_REQUESTED,
    DeploymentDeleted: EventKind.DEPLOYMENT_DELETED,
    DeploymentStopped: EventKind.DEPLOYMENT_STOPPED,
    DeploymentResumed: EventKind.DEPLOYMENT_RESUMED,
}


def version(number: int, template: str = "tiny-demo", max_tokens: int = 32) -> TemplateVersionPublished:
    document: dict[str, Any] = {**TINY, "version": number, "template": {**TINY["template"], "name": template}}
    document["spec"] = {**TINY["spec"], "generation": {"sampling": {"max_tokens": max_tokens}}}
    return TemplateVersionPublished.model_validate(document)


class Stream:
    """Numbers events like a stream does."""

    def __init__(self) -> None:
        self.sequence = itertools.count(1)

    def __call__(self, data: BaseModel) -> InboundEvent:
        seq = next(self.sequence)
        return InboundEvent(KINDS[type(data)], data, event_id=f"e{seq}", sequence=seq, subject_template=data.template_name)  # type: ignore[attr-defined]


def test_follow_latest_compares_version_numbers_not_arrival_order() -> None:
    state, ev = served(), Stream()
    state.apply(ev(version(1)))
    state.apply(ev(DeploymentRequested(template="tiny-demo", namespace="llm")))
    state.apply(ev(version(3)))
    assert state.apply(ev(version(2))) is Change.CHANGED  # older, arrives after 3
    deployment = state.deployments[("llm", "tiny-demo")]
    assert deployment.follows_latest
    assert state.version_for(deployment).version == 3  # type: ignore[union-attr]


def test_identical_republish_is_unchanged_and_other_content_is_an_immutability_violation() -> None:
    state, ev = served(), Stream()
    assert state.apply(ev(version(1))) is Change.CHANGED
    assert state.apply(ev(version(1))) is Change.UNCHANGED
    with pytest.raises(Rejected, match="immutable"):
        state.apply(ev(version(1, max_tokens=64)))
    assert state.versions.get("tiny-demo", 1).spec.generation.sampling.max_tokens == 32  # type: ignore[union-attr]


def test_deleting_a_version_falls_back_for_followers_and_unserves_pins() -> None:
    state, ev = served(), Stream()
    for n in (1, 2):
        state.apply(ev(version(n)))
    state.apply(ev(DeploymentRequested(template="tiny-demo", name="latest")))
    state.apply(ev(DeploymentRequested(template="tiny-demo", name="pinned", version=2)))
    state.apply(ev(TemplateVersionDeleted(template="tiny-demo", version=2)))
    assert state.version_for(state.deployments[("default", "latest")]).version == 1  # type: ignore[union-attr]
    assert state.version_for(state.deployments[("default", "pinned")]) is None
    with pytest.raises(Rejected, match="was deleted"):
        state.apply(ev(version(2)))
    assert state.apply(ev(TemplateVersionDeleted(template="tiny-demo", version=2))) is Change.UNCHANGED
    state.apply(ev(TemplateVersionDeleted(template="tiny-demo", version=1)))
    assert state.version_for(state.deployments[("default", "latest")]) is None
    with pytest.raises(Rejected, match="publish version 3"):
        state.apply(ev(version(1)))


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (DeploymentRequested(template="unknown"), "unknown template"),
        (DeploymentRequested(template="tiny-demo", version=7), "no version 7"),
        (DeploymentRequested(template="tiny-demo", overrides={"min_replicas": 5}), "min_replicas"),  # type: ignore[arg-type]
        (DeploymentRequested(template="tiny-demo", namespace="elsewhere"), "not one the controller serves: namespaces are opt-in"),
        (DeploymentStopped(template="tiny-demo", name="missing"), "no deployment"),
    ],
)
def test_requests_that_can_never_succeed_are_rejected(request_: BaseModel, reason: str) -> None:
    state, ev = DesiredState(allowed_namespaces=frozenset({"default"})), Stream()
    state.apply(ev(version(1)))
    event = ev(request_)
    with pytest.raises(Rejected, match=reason):
        state.apply(event)
    assert not state.deployments
    assert event.sequence in state.rejections, "remembered so that a redelivery is rejected again"


def test_a_name_taken_by_another_template_is_rejected() -> None:
    state, ev = served(), Stream()
    state.apply(ev(version(1)))
    state.apply(ev(version(1, template="other")))
    state.apply(ev(DeploymentRequested(template="tiny-demo", name="shared")))
    with pytest.raises(Rejected, match="already deploys template 'tiny-demo'"):
        state.apply(ev(DeploymentRequested(template="other", name="shared")))
    state.apply(ev(DeploymentDeleted(template="tiny-demo", name="shared")))
    assert state.apply(ev(DeploymentRequested(template="other", name="shared"))) is Change.CHANGED


def test_stop_resume_and_delete() -> None:
    state, ev = served(), Stream()
    state.apply(ev(version(1)))
    state.apply(ev(DeploymentRequested(template="tiny-demo")))
    key = ("default", "tiny-demo")
    assert state.apply(ev(DeploymentStopped(template="tiny-demo"))) is Change.CHANGED
    assert state.deployments[key].stopped
    assert state.apply(ev(DeploymentStopped(template="tiny-demo"))) is Change.UNCHANGED
    state.apply(ev(DeploymentRequested(template="tiny-demo", overrides={"max_replicas": 1})))  # type: ignore[arg-type]
    assert state.deployments[key].stopped, "a new request keeps the stop until an explicit resume"
    assert state.apply(ev(DeploymentResumed(template="tiny-demo"))) is Change.CHANGED
    assert not state.deployments[key].stopped
    assert state.apply(ev(DeploymentDeleted(template="tiny-demo"))) is Change.CHANGED
    assert key not in state.deployments and state.deployments_of("tiny-demo") == []
    assert state.apply(ev(DeploymentDeleted(template="tiny-demo"))) is Change.UNCHANGED


def test_redelivery_changes_nothing_and_rejections_are_remembered_until_settled() -> None:
    state, ev = served(), Stream()
    first = ev(version(1))
    request = ev(DeploymentRequested(template="tiny-demo"))
    bad = ev(DeploymentRequested(template="tiny-demo", version=9))
    stop = ev(DeploymentStopped(template="tiny-demo"))
    for event in (first, request):
        state.apply(event)
    with pytest.raises(Rejected):
        state.apply(bad)
    state.apply(stop)
    assert state.apply(request) is Change.ALREADY_APPLIED
    assert state.deployments[("default", "tiny-demo")].stopped, "the redelivered request did not undo the later stop"
    with pytest.raises(Rejected, match="no version 9"):
        state.apply(bad)
    state.settled(bad.sequence)
    assert state.apply(bad) is Change.ALREADY_APPLIED
    state.rejections[99] = "x"
    state.settled_through(50)
    assert state.rejections == {99: "x"}


def test_templates_handled_concurrently_do_not_mask_each_others_events() -> None:
    state = served()
    state.apply(InboundEvent(EventKind.VERSION_PUBLISHED, version(1, template="b"), "e9", 9, subject_template="b"))
    change = state.apply(InboundEvent(EventKind.VERSION_PUBLISHED, version(1), "e5", 5, subject_template="tiny-demo"))
    assert change is Change.CHANGED, "sequence 5 of another template is a first delivery, not a redelivery"
    assert state.high_water == {"b": 9, "tiny-demo": 5}


def test_subject_and_data_must_name_the_same_template() -> None:
    state = served()
    with pytest.raises(Rejected, match="subject names template 'other'"):
        state.apply(InboundEvent(EventKind.VERSION_PUBLISHED, version(1), "e1", 1, subject_template="other"))
    assert len(state.versions) == 0 and state.high_water == {"other": 1}


EVENTS = st.lists(
    st.one_of(
        st.builds(version, st.integers(1, 4), st.sampled_from(["a", "b"]), st.sampled_from([16, 32])),
        st.builds(TemplateVersionDeleted, template=st.sampled_from(["a", "b"]), version=st.integers(1, 4)),
        st.builds(
            DeploymentRequested,
            template=st.sampled_from(["a", "b"]),
            name=st.sampled_from(["x", "y"]),
            version=st.none() | st.integers(1, 4),
        ),
        st.builds(DeploymentDeleted, template=st.sampled_from(["a", "b"]), name=st.sampled_from(["x", "y"])),
        st.builds(DeploymentStopped, template=st.sampled_from(["a", "b"]), name=st.sampled_from(["x", "y"])),
        st.builds(DeploymentResumed, template=st.sampled_from(["a", "b"]), name=st.sampled_from(["x", "y"])),
    ),
    max_size=25,
)


def snapshot(state: DesiredState) -> tuple[Any, ...]:
    versions = {(n, v.version, v.content_hash) for n in state.versions.names() for v in state.versions.versions(n)}
    return versions, dict(state.deployments), state.high_water


@settings(max_examples=60, deadline=None)
@given(EVENTS, st.data())
def test_redeliveries_in_any_position_give_the_same_state(datas: list[BaseModel], draw: st.DataObject) -> None:
    ev = Stream()
    events = [ev(d) for d in datas]
    once = rebuild(events, SERVED)
    noisy = served()
    for i, event in enumerate(events):
        for redelivered in draw.draw(st.lists(st.sampled_from(events[:i]), max_size=2)) if i else []:
            with contextlib.suppress(Rejected):
                noisy.apply(redelivered)
        with contextlib.suppress(Rejected):
            noisy.apply(event)
    assert snapshot(noisy) == snapshot(once)


def test_reserved_namespaces_are_refused_even_when_listed() -> None:
    serving_stack = ("kserve", "knative-serving", "knative-eventing", "cert-manager", "istio-system")
    state, ev = DesiredState(allowed_namespaces=SERVED | {"kube-system", *serving_stack}), Stream()
    state.apply(ev(version(1)))
    for namespace in ("kube-system", "stokehold-system", *serving_stack):
        with pytest.raises(Rejected, match=f"namespace '{namespace}' is reserved"):
            state.apply(ev(DeploymentRequested(template="tiny-demo", namespace=namespace)))
    assert state.apply(ev(DeploymentRequested(template="tiny-demo", namespace="llm"))) is Change.CHANGED


def test_namespaces_are_opt_in() -> None:
    state, ev = DesiredState(), Stream()
    state.apply(ev(version(1)))
    with pytest.raises(Rejected, match=r"namespace 'llm' is not one the controller serves: namespaces are opt-in.*now: none"):
        state.apply(ev(DeploymentRequested(template="tiny-demo", namespace="llm")))
    assert not state.deployments


def test_trust_remote_code_needs_the_platforms_permission() -> None:
    remote = TemplateVersionPublished.model_validate(TINY | {"spec": TINY["spec"] | {"engine": {"trust_remote_code": True}}})
    refused, ev = served(), Stream()
    allowed = served(allow_trust_remote_code=True)

    with pytest.raises(Rejected, match=r"trust_remote_code.*policy does not allow it"):
        refused.apply(ev(remote))

    assert refused.versions.get("tiny-demo") is None
    assert allowed.apply(ev(remote)) is Change.CHANGED


def test_deleting_a_version_never_published_is_refused_and_blocks_no_number() -> None:
    state, ev = served(), Stream()
    state.apply(ev(version(1)))

    for number in (7, 1_000_000):
        with pytest.raises(Rejected, match=f"tiny-demo@{number} was never published \\(published versions: 1\\)"):
            state.apply(ev(TemplateVersionDeleted(template="tiny-demo", version=number)))

    assert state.apply(ev(version(7))) is Change.CHANGED, "7 was never used: it can still be published"


def test_the_number_suggested_after_a_deletion_stays_under_the_cap() -> None:
    state, ev = served(), Stream()
    state.apply(ev(version(VERSION_MAX)))
    state.apply(ev(TemplateVersionDeleted(template="tiny-demo", version=VERSION_MAX)))

    with pytest.raises(Rejected) as info:
        state.apply(ev(version(VERSION_MAX)))

    assert f"every version number up to {VERSION_MAX}" in info.value.reason and str(VERSION_MAX + 1) not in info.value.reason


@pytest.mark.parametrize("number", [True, "1", 1.0, 2**63])
def test_version_numbers_in_events_are_strict_integers(number: Any) -> None:
    with pytest.raises(ValidationError):
        TemplateVersionDeleted.model_validate({"template": "tiny-demo", "version": number})
    with pytest.raises(ValidationError):
        DeploymentRequested.model_validate({"template": "tiny-demo", "version": number})
    with pytest.raises(ValidationError):
        TemplateVersionPublished.model_validate(TINY | {"version": number})


@pytest.mark.parametrize("catalog_version", load_catalog(), ids=lambda v: v.name)
def test_older_versions_read_back_as_published(catalog_version: TemplateVersionPublished) -> None:
    """The state keeps older versions as their canonical JSON: what a pinned deployment reads back is what was published."""
    state, ev = served(), Stream()
    published = [catalog_version.model_copy(update={"version": n}) for n in (1, 2, 3)]
    for each in published:
        state.apply(ev(TemplateVersionPublished.model_validate(each.to_document())))
    for each in published:
        again = state.versions.get(catalog_version.name, each.version)
        assert again is not None and again.content_hash == each.content_hash and again.to_document() == each.to_document()
    assert state.apply(ev(TemplateVersionDeleted(template=catalog_version.name, version=3))) is Change.CHANGED
    latest = state.versions.latest(catalog_version.name)
    assert latest is not None and latest.to_document() == published[1].to_document(), "the next highest is the latest again"
    assert state.versions.numbers(catalog_version.name) == [1, 2] and len(state.versions) == 2
