"""The emulator behaves like an API server where the controller relies on it (real `kubernetes` client over HTTPS)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import watch
from kubernetes.client import ApiClient, CoordinationV1Api, CoreV1Api, CustomObjectsApi, V1DeleteOptions, V1Preconditions, VersionApi
from kubernetes.client.exceptions import ApiException
from kubernetes.config import new_client_from_config

from tests.k8s_emulator import KubernetesEmulator
from tests.k8s_emulator.errors import ApiError
from tests.k8s_emulator.patches import json_patch, merge_patch
from tests.k8s_emulator.selectors import parse_label_selector
from tests.k8s_emulator.tables import human_duration
from tests.kube.helpers import isvc

G, V, P = "serving.kserve.io", "v1beta1", "inferenceservices"
ROOT = Path(__file__).resolve().parents[2]


def custom(kube: KubernetesEmulator) -> CustomObjectsApi:
    return CustomObjectsApi(kube.api_client())


def status_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


def labelled(name: str, **labels: str) -> dict[str, Any]:
    obj = isvc(name)
    obj["metadata"]["labels"] = labels
    return obj


# ------------------------------------------------------------------ CRUD


def test_create_get_and_the_errors_a_real_server_gives(kube: KubernetesEmulator) -> None:
    api = custom(kube)
    created = api.create_namespaced_custom_object(G, V, "default", P, isvc("a", content_hash="sha256:x"))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and meta["generation"] == 1
    assert int(meta["resourceVersion"]) > 0
    assert api.get_namespaced_custom_object(G, V, "default", P, "a")["metadata"]["uid"] == meta["uid"]

    with pytest.raises(ApiException) as exists:
        api.create_namespaced_custom_object(G, V, "default", P, isvc("a"))
    assert exists.value.status == 409 and status_of(exists.value)["reason"] == "AlreadyExists"

    with pytest.raises(ApiException) as missing:
        api.get_namespaced_custom_object(G, V, "default", P, "nope")
    body = status_of(missing.value)
    assert missing.value.status == 404
    assert body["kind"] == "Status" and body["reason"] == "NotFound" and body["details"] == {"name": "nope", "group": G, "kind": P}
    assert body["message"] == 'inferenceservices.serving.kserve.io "nope" not found'

    invalid = isvc("b")
    del invalid["spec"]["predictor"]
    with pytest.raises(ApiException) as rejected:
        api.create_namespaced_custom_object(G, V, "default", P, invalid)
    assert rejected.value.status == 422 and status_of(rejected.value)["details"]["causes"][0]["field"] == "spec.predictor"

    bad_label = isvc("c")
    bad_label["metadata"]["labels"]["stokehold.dev/template"] = "not a valid value!"
    with pytest.raises(ApiException) as bad:
        api.create_namespaced_custom_object(G, V, "default", P, bad_label)
    assert bad.value.status == 422


def test_replace_needs_the_current_resource_version(kube: KubernetesEmulator) -> None:
    api = custom(kube)
    first = api.create_namespaced_custom_object(G, V, "default", P, isvc("a"))
    first["spec"]["predictor"]["maxReplicas"] = 2
    second = api.replace_namespaced_custom_object(G, V, "default", P, "a", first)
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    assert second["metadata"]["generation"] == 2

    first["spec"]["predictor"]["maxReplicas"] = 3  # written from the stale copy
    with pytest.raises(ApiException) as stale:
        api.replace_namespaced_custom_object(G, V, "default", P, "a", first)
    assert stale.value.status == 409 and status_of(stale.value)["reason"] == "Conflict"
    assert "the object has been modified" in status_of(stale.value)["message"]

    # Custom resources refuse an unconditional update (AllowUnconditionalUpdate is false for CRDs) ...
    del second["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as unconditional:
        api.replace_namespaced_custom_object(G, V, "default", P, "a", second)
    assert unconditional.value.status == 422
    assert kube.objects("isvc")[0]["spec"]["predictor"]["maxReplicas"] == 2

    # ... built-in types such as Lease accept one.
    leases = CoordinationV1Api(kube.api_client())
    leases.create_namespaced_lease(
        "default", {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}, "spec": {}}
    )
    replaced = leases.replace_namespaced_lease(
        "l",
        "default",
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}, "spec": {"holderIdentity": "x"}},
    )
    assert replaced.spec.holder_identity == "x"

    with pytest.raises(ApiException) as gone:
        api.replace_namespaced_custom_object(
            G, V, "default", P, "ghost", {**isvc("ghost"), "metadata": {"name": "ghost", "resourceVersion": "1"}}
        )
    assert gone.value.status == 404


def test_generation_status_subresource_and_no_op_updates(kube: KubernetesEmulator) -> None:
    api = custom(kube)
    body = isvc("a")
    body["status"] = {"url": "http://ignored"}  # status is not settable on create ...
    created = api.create_namespaced_custom_object(G, V, "default", P, body)
    assert "status" not in created

    created["metadata"]["labels"]["team"] = "x"  # metadata changes do not bump generation
    relabelled = api.replace_namespaced_custom_object(G, V, "default", P, "a", created)
    assert relabelled["metadata"]["generation"] == 1

    patched = api.patch_namespaced_custom_object_status(G, V, "default", P, "a", {"status": {"url": "http://a.example.com"}})
    assert patched["status"]["url"] == "http://a.example.com" and patched["metadata"]["generation"] == 1

    relabelled["metadata"]["resourceVersion"] = patched["metadata"]["resourceVersion"]
    relabelled["status"] = {"url": "http://clobbered"}  # ... nor through the main resource
    kept = api.replace_namespaced_custom_object(G, V, "default", P, "a", relabelled)
    assert kept["status"]["url"] == "http://a.example.com"
    assert kept["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]  # nothing changed: no new version

    json_patched = api.patch_namespaced_custom_object_status(
        G,
        V,
        "default",
        P,
        "a",
        [{"op": "add", "path": "/status/observedGeneration", "value": 1}],
        _content_type="application/json-patch+json",
    )
    assert json_patched["status"] == {"url": "http://a.example.com", "observedGeneration": 1}

    with pytest.raises(ApiException) as strategic:
        api.patch_namespaced_custom_object(G, V, "default", P, "a", {"spec": {}}, _content_type="application/strategic-merge-patch+json")
    assert strategic.value.status == 415


def test_delete_with_preconditions_and_not_found(kube: KubernetesEmulator) -> None:
    api = custom(kube)
    created = api.create_namespaced_custom_object(G, V, "default", P, isvc("a"))
    wrong = V1DeleteOptions(preconditions=V1Preconditions(uid="another-uid"))
    with pytest.raises(ApiException) as conflict:
        api.delete_namespaced_custom_object(G, V, "default", P, "a", body=wrong)
    assert conflict.value.status == 409 and "Precondition failed" in status_of(conflict.value)["message"]
    right = V1DeleteOptions(preconditions=V1Preconditions(uid=created["metadata"]["uid"]))
    deleted = api.delete_namespaced_custom_object(G, V, "default", P, "a", body=right)
    assert deleted["metadata"]["name"] == "a"
    with pytest.raises(ApiException) as missing:
        api.delete_namespaced_custom_object(G, V, "default", P, "a")
    assert missing.value.status == 404


def test_namespaces_must_exist_when_not_created_on_demand() -> None:
    with KubernetesEmulator(auto_create_namespaces=False, tls=False) as strict:
        api = CustomObjectsApi(strict.api_client())
        with pytest.raises(ApiException) as missing:
            api.create_namespaced_custom_object(G, V, "team-a", P, isvc("a", namespace="team-a"))
        assert missing.value.status == 404 and status_of(missing.value)["details"]["kind"] == "namespaces"
        strict.add_namespace("team-a")
        assert api.create_namespaced_custom_object(G, V, "team-a", P, isvc("a", namespace="team-a"))["metadata"]["namespace"] == "team-a"
        names = [ns.metadata.name for ns in CoreV1Api(strict.api_client()).list_namespace().items]
        assert "team-a" in names and "default" in names


# ------------------------------------------------------------- selectors


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("tier=gpu", {"a", "b"}),
        ("tier==gpu", {"a", "b"}),
        ("tier!=gpu", {"c", "d"}),  # also objects without the label
        ("tier in (gpu,cpu)", {"a", "b", "c"}),
        ("tier notin (gpu)", {"c", "d"}),
        ("size", {"a", "c"}),
        ("!size", {"b", "d"}),
        ("tier=gpu,size=big", {"a"}),
        ("tier in (gpu, cpu),!size", {"b"}),
    ],
)
def test_label_selectors(kube: KubernetesEmulator, selector: str, expected: set[str]) -> None:
    api = custom(kube)
    for name, labels in {"a": {"tier": "gpu", "size": "big"}, "b": {"tier": "gpu"}, "c": {"tier": "cpu", "size": "small"}, "d": {}}.items():
        api.create_namespaced_custom_object(G, V, "default", P, labelled(name, **labels))
    found = api.list_namespaced_custom_object(G, V, "default", P, label_selector=selector)
    assert {item["metadata"]["name"] for item in found["items"]} == expected


def test_bad_selectors_are_400() -> None:
    for text in ("tier in ()", "=x", "a b", "tier=bad value"):
        with pytest.raises(ApiError) as error:
            parse_label_selector(text)
        assert error.value.code == 400


def test_list_all_namespaces_and_pages(kube: KubernetesEmulator) -> None:
    api = custom(kube)
    for namespace in ("team-a", "team-b"):
        for index in range(3):
            api.create_namespaced_custom_object(G, V, namespace, P, isvc(f"s{index}", namespace=namespace))
    everything = api.list_cluster_custom_object(G, V, P)
    assert everything["kind"] == "InferenceServiceList" and len(everything["items"]) == 6
    assert all(item["kind"] == "InferenceService" for item in everything["items"])
    assert len(api.list_namespaced_custom_object(G, V, "team-b", P)["items"]) == 3

    seen, token, pages = [], None, 0
    while True:
        page = api.list_cluster_custom_object(G, V, P, limit=4, _continue=token)
        seen += [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in page["items"]]
        pages += 1
        token = page["metadata"].get("continue")
        if not token:
            break
    assert pages == 2 and seen == sorted(seen) and len(set(seen)) == 6


# ----------------------------------------------------------------- watches


def collect(api: CustomObjectsApi, stop_after: int, **kwargs: Any) -> list[tuple[str, str, str]]:
    events: list[tuple[str, str, str]] = []
    stream = watch.Watch()
    for event in stream.stream(api.list_cluster_custom_object, G, V, P, **kwargs):
        obj = event["raw_object"]
        events.append((event["type"], obj["metadata"].get("name", ""), obj["metadata"]["resourceVersion"]))
        if len(events) >= stop_after:
            stream.stop()
    return events


def test_watch_streams_changes_and_resumes_from_a_resource_version(kube: KubernetesEmulator) -> None:
    api = custom(kube)
    start = api.list_cluster_custom_object(G, V, P)["metadata"]["resourceVersion"]
    created = api.create_namespaced_custom_object(G, V, "default", P, labelled("a", app="x"))
    created["metadata"]["labels"]["app"] = "y"  # leaves the selector app=x
    moved = api.replace_namespaced_custom_object(G, V, "default", P, "a", created)
    moved["metadata"]["labels"]["app"] = "x"  # enters it again
    api.replace_namespaced_custom_object(G, V, "default", P, "a", moved)
    api.delete_namespaced_custom_object(G, V, "default", P, "a")

    everything = collect(api, 4, resource_version=start, timeout_seconds=5)
    assert [kind for kind, _, _ in everything] == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]
    versions = [int(rv) for _, _, rv in everything]
    assert versions == sorted(versions) and len(set(versions)) == 4

    selected = collect(api, 4, resource_version=start, label_selector="app=x", timeout_seconds=5)
    assert [kind for kind, _, _ in selected] == ["ADDED", "DELETED", "ADDED", "DELETED"]

    resumed = collect(api, 2, resource_version=everything[1][2], timeout_seconds=5)
    assert [kind for kind, _, _ in resumed] == ["MODIFIED", "DELETED"]


def test_watch_from_now_lists_first_then_follows_live_changes(kube: KubernetesEmulator) -> None:
    api = custom(kube)
    api.create_namespaced_custom_object(G, V, "default", P, isvc("before"))
    result: list[tuple[str, str, str]] = []
    reader = threading.Thread(target=lambda: result.extend(collect(api, 2, timeout_seconds=10)))
    reader.start()
    kube_api = custom(kube)
    while kube.faults.calls["GET"] < 1:  # the watch request has reached the server
        threading.Event().wait(0.01)
    kube_api.create_namespaced_custom_object(G, V, "default", P, isvc("after"))
    reader.join(15)
    assert [(kind, name) for kind, name, _ in result] == [("ADDED", "before"), ("ADDED", "after")]


def test_watch_ends_at_timeout_with_a_bookmark_and_too_old_versions_are_gone(kube: KubernetesEmulator) -> None:
    api = custom(kube)
    created = api.create_namespaced_custom_object(G, V, "default", P, isvc("a"))
    events = []
    stream = watch.Watch()
    for event in stream.stream(
        api.list_cluster_custom_object,
        G,
        V,
        P,
        resource_version=created["metadata"]["resourceVersion"],
        timeout_seconds=1,
        allow_watch_bookmarks=True,
    ):
        events.append(event)
    assert [e["type"] for e in events] == ["BOOKMARK"]
    assert int(events[0]["raw_object"]["metadata"]["resourceVersion"]) >= int(created["metadata"]["resourceVersion"])

    api.create_namespaced_custom_object(G, V, "default", P, isvc("b"))
    kube.compact()  # the change from `created` to `b` is no longer in the history
    with pytest.raises(ApiException) as expired:
        collect(api, 1, resource_version=created["metadata"]["resourceVersion"], timeout_seconds=5)
    assert expired.value.status == 410


# ------------------------------------------------------------------- faults


def test_injected_faults_are_seeded_counted_and_filtered(kube: KubernetesEmulator) -> None:
    api = custom(kube)
    api.create_namespaced_custom_object(G, V, "default", P, isvc("a"))

    def failures(fraction: float) -> list[int]:
        kube.faults.clear(seed=7)
        kube.faults.add("error", fraction, methods={"GET"}, path=r"/inferenceservices/a$")
        seen = []
        for _ in range(40):
            try:
                api.get_namespaced_custom_object(G, V, "default", P, "a")
                seen.append(200)
            except ApiException as exc:
                seen.append(exc.status)
        return seen

    first, second = failures(0.5), failures(0.5)
    assert first == second  # same seed, same calls: the same faults
    assert kube.faults.injected["error"] == first.count(500) and 5 < first.count(500) < 35
    assert kube.faults.calls["GET"] == 40

    kube.faults.clear()
    # On a PATCH: urllib3 itself would wait out Retry-After and repeat an idempotent GET or PUT.
    kube.faults.add("throttle", retry_after=3, times=1)
    labels = {"metadata": {"labels": {"x": "y"}}}
    with pytest.raises(ApiException) as throttled:
        api.patch_namespaced_custom_object(G, V, "default", P, "a", labels)
    assert throttled.value.status == 429 and throttled.value.headers["Retry-After"] == "3"
    assert api.patch_namespaced_custom_object(G, V, "default", P, "a", labels)  # `times=1`: only once

    kube.faults.add("conflict")
    assert api.get_namespaced_custom_object(G, V, "default", P, "a")  # conflicts only hit writes
    with pytest.raises(ApiException) as conflict:
        api.patch_namespaced_custom_object(G, V, "default", P, "a", labels)
    assert conflict.value.status == 409
    assert kube.faults.injected == {"throttle": 1, "conflict": 1, "total": 2}


def test_a_wrong_token_is_refused(kube: KubernetesEmulator) -> None:
    configuration = kube.configuration()
    configuration.api_key = {"BearerToken": "wrong"}
    with ApiClient(configuration) as client, pytest.raises(ApiException) as refused:
        CustomObjectsApi(client).list_cluster_custom_object(G, V, P)
    assert refused.value.status == 401


def test_discovery_and_version(kube: KubernetesEmulator) -> None:
    client = kube.api_client()
    assert VersionApi(client).get_code().git_version.startswith("v1.32")
    groups = {g.name for g in __import__("kubernetes").client.ApisApi(client).get_api_versions().groups}
    assert {"serving.kserve.io", "coordination.k8s.io"} <= groups
    resources = CustomObjectsApi(client).get_api_resources(G, V)
    isvc_resource = next(r for r in resources.resources if r.name == "inferenceservices")
    assert isvc_resource.namespaced and isvc_resource.short_names == ["isvc"] and "watch" in isvc_resource.verbs
    assert any(r.name == "inferenceservices/status" for r in resources.resources)


# --------------------------------------------------------------- pure parts


def test_merge_and_json_patch() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}) == {"a": {"c": 2, "d": 3}}
    document = {"list": [1, 3], "x": {"y": 1}}
    patched = json_patch(document, [{"op": "add", "path": "/list/1", "value": 2}, {"op": "replace", "path": "/x/y", "value": 5}])
    assert patched == {"list": [1, 2, 3], "x": {"y": 5}} and document == {"list": [1, 3], "x": {"y": 1}}
    with pytest.raises(ApiError):
        json_patch(document, [{"op": "test", "path": "/x/y", "value": 2}])


def test_age_like_kubectl() -> None:
    assert [human_duration(s) for s in (5, 119, 150, 3600, 7 * 3600 + 120, 30 * 3600, 3 * 86400)] == [
        "5s",
        "119s",
        "2m30s",
        "60m",
        "7h2m",
        "30h",
        "3d",
    ]


def test_as_a_process_driven_through_the_admin_routes(tmp_path: Path) -> None:
    """`python -m tests.k8s_emulator` (what benchmarks run, off the test process's GIL) and its /_emulator routes."""
    kubeconfig = tmp_path / "kubeconfig"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.k8s_emulator", "--kubeconfig", str(kubeconfig)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("https://127.0.0.1:")
        with new_client_from_config(config_file=str(kubeconfig)) as client:
            api = CustomObjectsApi(client)
            api.create_namespaced_custom_object(G, V, "default", P, isvc("a"))
            admin = httpx.Client(base_url=url, verify=False)
            assert admin.post("/_emulator/faults", json={"kind": "error", "status": 503, "methods": ["GET"], "times": 1}).status_code == 201
            with pytest.raises(ApiException) as failed:
                api.get_namespaced_custom_object(G, V, "default", P, "a")
            assert failed.value.status == 503
            assert admin.put("/_emulator/isvc-status/default/a", json={"ready": True}).status_code == 200
            assert api.get_namespaced_custom_object(G, V, "default", P, "a")["status"]["url"] == "http://a.default.example.com"
            stats = admin.get("/_emulator/stats").json()
            assert stats["injected"] == {"error": 1, "total": 1} and stats["responses"]["503"] == 1
            assert admin.post("/_emulator/reset").status_code == 200
            assert api.list_cluster_custom_object(G, V, P)["items"] == []
    finally:
        process.terminate()
        assert process.wait(10) == 0
