"""KubeSink against the emulator with the real `kubernetes` client: writes, refusals and error mapping."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import CustomObjectsApi

from controller.labels import STOP_ANNOTATION
from controller.sinks import kube as kube_module
from controller.sinks.base import ApplyAction, NotManagedError, PermanentSinkError, Sink, TransientSinkError
from controller.sinks.kube import APPLIED_KEYS_ANNOTATION, KubeSink, merge_for_replace, sink_error
from tests.k8s_emulator import KubernetesEmulator
from tests.kube.helpers import isvc

G, V, P = "serving.kserve.io", "v1beta1", "inferenceservices"
GOLDEN = Path(__file__).resolve().parents[1] / "golden"


@pytest.fixture
async def sink(kube: KubernetesEmulator) -> AsyncIterator[KubeSink]:
    kube_sink = KubeSink(kube.api_client(), workers=4)
    yield kube_sink
    await kube_sink.close()


def live(kube: KubernetesEmulator, name: str, namespace: str = "default") -> dict[str, Any]:
    obj = kube.get("isvc", namespace, name)
    assert obj is not None, f"{namespace}/{name} is not on the server"
    return obj


async def test_it_is_a_sink(sink: KubeSink) -> None:
    protocol_user: Sink = sink  # mypy checks the protocol; this checks nothing is missing at runtime
    assert all(callable(getattr(protocol_user, name)) for name in ("apply", "delete", "get", "list_managed", "close"))


async def test_create_unchanged_update(kube: KubernetesEmulator, sink: KubeSink) -> None:
    assert await sink.apply(isvc("a", content_hash="sha256:1")) is ApplyAction.CREATED
    assert kube.faults.calls["total"] == 1  # a new object costs a single request
    created = live(kube, "a")
    assert created["metadata"]["annotations"][APPLIED_KEYS_ANNOTATION]

    writes_before = kube.faults.calls["PUT"] + kube.faults.calls["POST"]
    assert await sink.apply(isvc("a", content_hash="sha256:1")) is ApplyAction.UNCHANGED
    assert kube.faults.calls["PUT"] + kube.faults.calls["POST"] == writes_before  # no write at all
    assert live(kube, "a")["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]

    changed = isvc("a", content_hash="sha256:2", version=2)
    changed["spec"]["predictor"]["maxReplicas"] = 3
    calls_before = kube.faults.calls.copy()
    assert await sink.apply(changed) is ApplyAction.UPDATED
    assert kube.faults.calls - calls_before == {"PUT": 1, "total": 1}  # it remembers what it wrote: no read first
    updated = live(kube, "a")
    assert updated["spec"] == changed["spec"] and updated["metadata"]["generation"] == 2
    assert updated["metadata"]["labels"]["stokehold.dev/version"] == "2"
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]


async def test_rendered_golden_objects_round_trip(kube: KubernetesEmulator, sink: KubeSink) -> None:
    documents = [yaml.safe_load(path.read_text()) for path in sorted(GOLDEN.glob("*.yaml"))]
    assert documents, "the golden rendered InferenceServices are missing"
    for document in documents:
        assert await sink.apply(document) is ApplyAction.CREATED
    for document in documents:
        stored = live(kube, document["metadata"]["name"], document["metadata"]["namespace"])
        assert stored["spec"] == document["spec"]
        assert await sink.apply(document) is ApplyAction.UNCHANGED
    managed = await sink.list_managed()
    assert sorted(o["metadata"]["name"] for o in managed) == sorted(d["metadata"]["name"] for d in documents)


async def test_foreign_metadata_and_status_survive_an_update(kube: KubernetesEmulator, sink: KubeSink) -> None:
    stopped = isvc("a", content_hash="sha256:1")
    stopped["metadata"]["annotations"][STOP_ANNOTATION] = "true"
    await sink.apply(stopped)
    api = CustomObjectsApi(kube.api_client())
    api.patch_namespaced_custom_object(
        G,
        V,
        "default",
        P,
        "a",
        {"metadata": {"labels": {"team": "search"}, "annotations": {"owner": "alice"}, "finalizers": ["x.io/keep"]}},
    )
    kube.set_isvc_status("default", "a", ready=True)

    resumed = isvc("a", content_hash="sha256:2")  # no stop annotation any more
    assert await sink.apply(resumed) is ApplyAction.UPDATED
    after = live(kube, "a")
    meta = after["metadata"]
    assert meta["labels"]["team"] == "search" and meta["annotations"]["owner"] == "alice"
    assert meta["finalizers"] == ["x.io/keep"]
    assert STOP_ANNOTATION not in meta["annotations"]  # ours last time, not rendered now: removed
    assert after["status"]["url"] == "http://a.default.example.com"
    assert json.loads(meta["annotations"][APPLIED_KEYS_ANNOTATION])["annotations"] == sorted(resumed["metadata"]["annotations"])


async def test_objects_not_managed_by_stokehold_are_never_touched(kube: KubernetesEmulator, sink: KubeSink) -> None:
    foreign = isvc("theirs")
    del foreign["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    CustomObjectsApi(kube.api_client()).create_namespaced_custom_object(G, V, "default", P, foreign)
    before = live(kube, "theirs")
    with pytest.raises(NotManagedError):
        await sink.apply(isvc("theirs", content_hash="sha256:9"))
    with pytest.raises(NotManagedError):
        await sink.delete("default", "theirs")
    assert live(kube, "theirs") == before
    assert await sink.list_managed() == []
    with pytest.raises(PermanentSinkError):
        await sink.apply(foreign)  # and we never write an object without our label


async def test_an_existing_object_the_sink_has_not_seen_is_read_not_overwritten(kube: KubernetesEmulator, sink: KubeSink) -> None:
    CustomObjectsApi(kube.api_client()).create_namespaced_custom_object(G, V, "default", P, isvc("a", content_hash="sha256:1"))
    assert await sink.apply(isvc("a", content_hash="sha256:1")) is ApplyAction.UNCHANGED
    assert kube.faults.responses[409] == 1  # the create attempt found it, then the hash matched
    assert await sink.apply(isvc("a", content_hash="sha256:2")) is ApplyAction.UPDATED


async def test_delete(kube: KubernetesEmulator, sink: KubeSink) -> None:
    await sink.apply(isvc("a"))
    assert await sink.delete("default", "a") is True
    assert kube.objects("isvc") == []
    assert await sink.delete("default", "a") is False
    assert await sink.get("default", "a") is None


async def test_a_write_behind_the_sinks_back_is_read_and_kept(kube: KubernetesEmulator, sink: KubeSink) -> None:
    await sink.apply(isvc("a", content_hash="sha256:1"))
    other_writer = CustomObjectsApi(kube.api_client())
    other_writer.patch_namespaced_custom_object(G, V, "default", P, "a", {"metadata": {"labels": {"touched": "yes"}}})
    kube.set_isvc_status("default", "a", ready=True)

    calls_before = kube.faults.calls.copy()
    assert await sink.apply(isvc("a", content_hash="sha256:2")) is ApplyAction.UPDATED
    # the remembered resourceVersion was stale: the conditional replace conflicts, then a read and a replace
    assert kube.faults.calls - calls_before == {"PUT": 2, "GET": 1, "total": 3}
    assert kube.faults.responses[409] == 1
    after = live(kube, "a")
    assert after["metadata"]["labels"]["touched"] == "yes" and after["status"]["url"] == "http://a.default.example.com"
    assert after["metadata"]["annotations"]["stokehold.dev/content-hash"] == "sha256:2"


async def test_an_object_deleted_behind_the_sinks_back_is_created_again(kube: KubernetesEmulator, sink: KubeSink) -> None:
    await sink.apply(isvc("a", content_hash="sha256:1"))
    CustomObjectsApi(kube.api_client()).delete_namespaced_custom_object(G, V, "default", P, "a")

    assert await sink.apply(isvc("a", content_hash="sha256:2")) is ApplyAction.CREATED
    assert live(kube, "a")["metadata"]["annotations"]["stokehold.dev/content-hash"] == "sha256:2"


async def test_an_object_that_stopped_being_managed_is_not_replaced_from_memory(kube: KubernetesEmulator, sink: KubeSink) -> None:
    await sink.apply(isvc("a", content_hash="sha256:1"))
    patch = {"metadata": {"labels": {"app.kubernetes.io/managed-by": "someone-else"}}}
    CustomObjectsApi(kube.api_client()).patch_namespaced_custom_object(G, V, "default", P, "a", patch)
    before = live(kube, "a")

    with pytest.raises(NotManagedError):
        await sink.apply(isvc("a", content_hash="sha256:2"))
    assert live(kube, "a") == before


async def test_a_concurrent_write_between_read_and_replace_is_a_transient_conflict(
    kube: KubernetesEmulator, sink: KubeSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    await sink.apply(isvc("a", content_hash="sha256:1"))
    other_writer = CustomObjectsApi(kube.api_client())
    other_writer.patch_namespaced_custom_object(G, V, "default", P, "a", {"metadata": {"labels": {"touched": "first"}}})
    real_get = sink._api.get_namespaced_custom_object

    def read_then_someone_else_writes(*args: Any, **kwargs: Any) -> Any:
        seen = real_get(*args, **kwargs)
        other_writer.patch_namespaced_custom_object(G, V, "default", P, "a", {"metadata": {"labels": {"touched": "yes"}}})
        return seen

    monkeypatch.setattr(sink._api, "get_namespaced_custom_object", read_then_someone_else_writes)
    with pytest.raises(TransientSinkError, match="409"):
        await sink.apply(isvc("a", content_hash="sha256:2"))
    monkeypatch.undo()
    assert live(kube, "a")["metadata"]["annotations"]["stokehold.dev/content-hash"] == "sha256:1"  # nothing clobbered
    assert await sink.apply(isvc("a", content_hash="sha256:2")) is ApplyAction.UPDATED  # the retry wins
    assert live(kube, "a")["metadata"]["labels"]["touched"] == "yes"


@pytest.mark.parametrize(
    ("fault", "options", "expected", "retry_after"),
    [
        ("error", {"status": 500}, TransientSinkError, None),
        ("error", {"status": 503}, TransientSinkError, None),
        ("throttle", {"retry_after": 7}, TransientSinkError, 7.0),
        ("conflict", {}, TransientSinkError, None),
        ("disconnect", {}, TransientSinkError, None),
        ("error", {"status": 403}, PermanentSinkError, None),
        ("error", {"status": 400}, PermanentSinkError, None),
    ],
)
async def test_error_mapping_under_injected_faults(
    kube: KubernetesEmulator, sink: KubeSink, fault: str, options: dict[str, Any], expected: type[Exception], retry_after: float | None
) -> None:
    kube.faults.add(fault, methods={"POST"}, **options)  # type: ignore[arg-type]
    with pytest.raises(expected) as raised:
        await sink.apply(isvc("a"))
    assert not isinstance(raised.value, TransientSinkError) or raised.value.retry_after == retry_after
    assert kube.faults.injected["total"] == 1
    assert kube.objects("isvc") == []  # and nothing half-written


async def test_invalid_objects_and_foreign_namespaces_are_permanent(kube: KubernetesEmulator) -> None:
    restricted = KubeSink(kube.api_client(), namespaces=["team-a"])
    try:
        broken = isvc("a", namespace="team-a")
        del broken["spec"]["predictor"]
        with pytest.raises(PermanentSinkError, match="422"):
            await restricted.apply(broken)
        with pytest.raises(PermanentSinkError, match="not one this controller manages"):
            await restricted.apply(isvc("b", namespace="default"))
        await restricted.apply(isvc("c", namespace="team-a"))
        CustomObjectsApi(kube.api_client()).create_namespaced_custom_object(G, V, "default", P, isvc("d"))  # managed, elsewhere
        assert [o["metadata"]["name"] for o in await restricted.list_managed()] == ["c"]
    finally:
        await restricted.close()


async def test_a_missing_namespace_is_permanent() -> None:
    with KubernetesEmulator(auto_create_namespaces=False, tls=False) as strict:
        sink = KubeSink(strict.api_client())
        try:
            with pytest.raises(PermanentSinkError, match="namespace 'team-z' does not exist"):
                await sink.apply(isvc("a", namespace="team-z"))
        finally:
            await sink.close()


async def test_list_managed_follows_continue_tokens(kube: KubernetesEmulator, sink: KubeSink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_module, "LIST_PAGE_SIZE", 2)
    for index in range(5):
        await sink.apply(isvc(f"s{index}", namespace=f"ns-{index % 2}"))
    lists_before = kube.faults.calls["GET"]
    managed = await sink.list_managed()
    assert sorted(o["metadata"]["name"] for o in managed) == [f"s{i}" for i in range(5)]
    assert kube.faults.calls["GET"] - lists_before == 3  # 2 + 2 + 1


def test_merge_for_replace_is_pure() -> None:
    live_obj = isvc("a")
    live_obj["metadata"].update(resourceVersion="7", uid="u", annotations={"theirs": "1", "stokehold.dev/content-hash": "old"})
    live_obj["status"] = {"url": "x"}
    frozen = copy.deepcopy(live_obj)
    merged = merge_for_replace(live_obj, isvc("a", content_hash="new"))
    assert live_obj == frozen
    assert merged["metadata"]["resourceVersion"] == "7" and merged["metadata"]["annotations"]["theirs"] == "1"
    assert merged["metadata"]["annotations"]["stokehold.dev/content-hash"] == "new" and merged["status"] == {"url": "x"}


def test_sink_error_maps_connection_failures_to_transient() -> None:
    assert isinstance(sink_error(ConnectionRefusedError("refused"), "create a"), TransientSinkError)
    assert isinstance(sink_error(TimeoutError(), "create a"), TransientSinkError)
    assert type(sink_error(ValueError("bad"), "create a")) is PermanentSinkError
