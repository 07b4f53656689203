"""Which versions are cached (storage.cache, else automatic), what a cached version's InferenceService and Job look like,
and the clear refusals and notes when caching cannot happen (pure: no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from controller.render import PROGRESS_DEADLINE_ANNOTATION, render_inference_service
from controller.render_cache import cache_dir, cache_plan, job_name, render_cache_job, wants_cache
from controller.render_config import ColdStart, RenderConfig
from events.codec import DecodedEvent, validate_data
from events.display import status_rows
from events.status_view import summarize
from events.types import EventKind
from templates.schema import ModelTemplateVersion, TemplateValidationError, parse_version
from tests.controller.test_render import by_name, default_deployment

CONFIG = RenderConfig(model_cache_pvc="model-cache")


def version(
    source: str = "hf://org/model", size: float | None = 1.0, priority: int = 0, cache: bool | None = None, **spec: Any
) -> ModelTemplateVersion:
    document = by_name("tiny-demo").to_document()
    document["spec"] |= {"source": source, "model_size_gb": size} | spec
    document["spec"]["scaling"]["priority"] = priority
    if cache is not None:
        document["spec"]["storage"]["cache"] = cache
    return parse_version(document)


def env_of(isvc: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in isvc["spec"]["predictor"]["model"]["env"]}


@pytest.mark.parametrize(
    ("kwargs", "cached"),
    [
        ({"priority": 2}, True),  # always hot
        ({"priority": 3, "size": None}, True),
        ({"size": 10.0}, True),  # the documented threshold, RenderConfig.cache_min_size_gb
        ({"size": 9.9, "priority": 1}, False),
        ({"size": None}, False),  # unknown size, not always hot
        ({"size": 50.0, "cache": False}, False),  # the version says no
        ({"size": 0.5, "cache": True}, True),  # the version says yes
        ({"size": 50.0, "source": "/opt/models/x"}, False),  # a local path is never cached
        ({"size": 50.0, "source": "pvc://claim/x"}, False),  # already on a volume
        ({"size": 50.0, "source": "oci://registry/x"}, False),  # a modelcar
        ({"size": 50.0, "source": "s3://bucket/x"}, True),
        ({"size": 50.0, "source": "gs://bucket/x"}, True),
    ],
)
def test_the_automatic_rule(kwargs: dict[str, Any], cached: bool) -> None:
    v = version(**kwargs)
    assert wants_cache(v, CONFIG) is cached
    assert cache_plan(v, CONFIG).cached is cached


def test_the_size_threshold_is_a_setting() -> None:
    assert wants_cache(version(size=10.0), RenderConfig()) and not wants_cache(version(size=10.0), RenderConfig(cache_min_size_gb=20))


@pytest.mark.parametrize("source", ["/opt/models/x", "pvc://claim/x", "oci://registry/x"])
def test_cache_true_for_a_source_that_is_never_cached_is_refused_at_validation(source: str) -> None:
    with pytest.raises(TemplateValidationError) as refused:
        version(source=source, cache=True)
    assert "storage.cache is true, but a" in str(refused.value) and "leave storage.cache out" in str(refused.value)


def test_cache_left_out_keeps_the_content_hash_and_the_document() -> None:
    tiny = by_name("qwen3-8b")
    document = tiny.to_document()
    assert "cache" not in document["spec"]["storage"]
    document["spec"]["storage"]["cache"] = None
    assert parse_version(document).content_hash == tiny.content_hash
    document["spec"]["storage"]["cache"] = True
    assert parse_version(document).content_hash != tiny.content_hash


def test_cache_true_with_nowhere_to_cache_is_a_note_not_a_crash() -> None:
    v = version(cache=True)
    plan = cache_plan(v, RenderConfig())
    assert not plan.cached and plan.note is not None and "nowhere to cache" in plan.note
    isvc = render_inference_service(v, default_deployment(v), RenderConfig())
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "hf://org/model"
    off = cache_plan(v, RenderConfig(model_cache_pvc="model-cache", model_cache_mode="off"))
    assert not off.cached and off.note is not None and "model_cache_mode 'off'" in off.note
    assert cache_plan(version(size=50.0), RenderConfig()).note is None, "automatic: nothing to say"
    pvc = cache_plan(version(cache=True, storage={"cache_pvc": "own-cache", "cache": True}), RenderConfig())
    assert pvc.mode == "job" and pvc.pvc == "own-cache"


def test_local_model_cache_mode_needs_node_groups() -> None:
    with pytest.raises(ValidationError, match="needs local_model_node_groups"):
        RenderConfig(model_cache_mode="localmodelcache")
    with pytest.raises(ValidationError, match="not a valid Kubernetes name"):
        RenderConfig(model_cache_pvc="Not A Claim")


def test_a_cached_version_reads_the_cached_folder_and_an_uncached_one_keeps_storage_uri() -> None:
    v = version(size=50.0)
    isvc = render_inference_service(v, default_deployment(v), CONFIG)
    model = isvc["spec"]["predictor"]["model"]
    assert "storageUri" not in model
    assert model["args"][0] == f"--model=/mnt/model-cache/models/tiny-demo/1-{v.content_hash[7:23]}" == f"--model={cache_dir(v, CONFIG)}"
    env = env_of(isvc)
    assert env["STOKEHOLD_MODEL_SOURCE"] == "hf://org/model" and env["STOKEHOLD_CONTENT_HASH"] == v.content_hash
    assert env["STOKEHOLD_COMPILE_CACHE"] == "/mnt/model-cache/compile"
    assert isvc["spec"]["predictor"]["volumes"] == [{"name": "model-cache", "persistentVolumeClaim": {"claimName": "model-cache"}}]

    lmc = render_inference_service(v, default_deployment(v), CONFIG.model_copy(update={"model_cache_mode": "localmodelcache"}))
    lmc_model = lmc["spec"]["predictor"]["model"]
    assert lmc_model["storageUri"] == "hf://org/model" and lmc_model["args"][0] == "--model=/mnt/models", "KServe swaps in its copy"
    assert "STOKEHOLD_MODEL_SOURCE" not in env_of(lmc) and env_of(lmc)["STOKEHOLD_CONTENT_HASH"] == v.content_hash

    small = version(size=1.0)
    plain = render_inference_service(small, default_deployment(small), CONFIG)["spec"]["predictor"]["model"]
    assert plain["storageUri"] == "hf://org/model" and plain["args"][0] == "--model=/mnt/models"
    assert "STOKEHOLD_MODEL_SOURCE" not in env_of({"spec": {"predictor": {"model": plain}}})
    assert env_of({"spec": {"predictor": {"model": plain}}})["STOKEHOLD_COMPILE_CACHE"], "a mounted cache keeps the compile cache"


def test_every_runtime_gets_the_bus() -> None:
    v = by_name("tiny-demo")
    env = env_of(render_inference_service(v, default_deployment(v, namespace="llm", name="chat"), RenderConfig()))
    assert (
        env["STOKEHOLD_DEPLOYMENT"] == "llm/chat" and env["STOKEHOLD_TEMPLATE"] == "tiny-demo" and env["STOKEHOLD_TEMPLATE_VERSION"] == "1"
    )
    assert env["STOKEHOLD_NATS_URL"] == RenderConfig().runtime_nats_url


def test_a_cached_version_keeps_the_download_in_its_progress_deadline_and_startup_budget() -> None:
    """Its first replica fills the cache itself when the pre-download Job has not finished yet."""
    big = by_name("qwen3-30b-a3b")  # 61 GB: its download alone is 10 minutes at the documented rate

    def rendered(config: RenderConfig) -> tuple[int, int]:
        isvc = render_inference_service(big, default_deployment(big), config)
        probe = isvc["spec"]["predictor"]["model"]["startupProbe"]
        deadline = int(isvc["metadata"]["annotations"][PROGRESS_DEADLINE_ANNOTATION].rstrip("s"))
        return deadline, probe["failureThreshold"] * probe["periodSeconds"]

    cached, uncached = rendered(CONFIG), rendered(CONFIG.model_copy(update={"model_cache_mode": "off"}))
    cold = CONFIG.cold_start
    assert "storageUri" not in render_inference_service(big, default_deployment(big), CONFIG)["spec"]["predictor"]["model"]
    assert cached == uncached
    assert uncached[0] == round(cold.safety_factor * (cold.base_s + 61.1 / cold.download_gb_per_s + 61.1 / cold.load_gb_per_s))
    assert uncached[1] >= uncached[0], "the startup probe allows what the deadline allows"


def test_the_job_is_deterministic_and_bounded_by_the_documented_rate() -> None:
    v = version(size=50.0)
    job = render_cache_job(v, "llm", CONFIG, "model-cache")
    assert job == render_cache_job(v, "llm", CONFIG, "model-cache")
    assert job["metadata"]["name"] == job_name(v) == f"stokehold-cache-tiny-demo-1-{v.content_hash[7:17]}"
    spec = job["spec"]
    assert spec["activeDeadlineSeconds"] == round(1.5 * 50.0 / 0.1) == ColdStart().download_seconds(50.0)
    assert spec["backoffLimit"] == CONFIG.cache_fill_backoff_limit and spec["ttlSecondsAfterFinished"] == CONFIG.cache_fill_ttl_s
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    assert container["command"] == ["python3", "-m", "runtimes", "cache-fill"]
    assert container["args"] == [
        "--source", "hf://org/model", "--dest", cache_dir(v, CONFIG), "--content-hash", v.content_hash,
        "--template", "tiny-demo", "--version", "1",
    ]  # fmt: skip
    assert "HF_TOKEN" not in {e["name"] for e in container["env"]}, "no token Secret named"
    other = version(size=50.0, generation={"stop": ["</s>"]})
    assert job_name(other) != job_name(v), "another content hash, another Job"
    assert ColdStart().download_seconds(0.01) == ColdStart().floor_s


def test_stokehold_status_shows_the_cache_of_the_deployed_version() -> None:
    def event(number: int, kind: EventKind, **data: Any) -> DecodedEvent:
        return DecodedEvent(
            id=f"e{number}",
            kind=kind,
            source="/controller",
            time=datetime(2026, 1, 1, 0, number, tzinfo=UTC),
            content_hash=None,
            data=validate_data(kind, {"template": "chat"} | data),
        )

    deployment = {"namespace": "llm", "name": "chat", "version": 2}
    events = [
        event(1, EventKind.DEPLOYMENT_APPLIED, action="created", **deployment),
        event(2, EventKind.VERSION_LOAD_STATUS, version=2, status="DOWNLOADING"),
        event(3, EventKind.VERSION_LOAD_STATUS, version=1, status="FAILED", reason="gone"),  # another version
    ]
    assert [row.cache for row in summarize(events)] == ["DOWNLOADING"]
    events.append(event(4, EventKind.VERSION_LOAD_STATUS, version=2, status="CACHED", bytes=16_400_000_000, seconds=170.2))
    [row] = summarize(events)
    assert row.cache == "CACHED 16.4 GB in 170s" and row.phase == "Applied"
    assert "cache: CACHED 16.4 GB in 170s" in str(status_rows([row])[0][5])
    events.append(event(5, EventKind.VERSION_LOAD_STATUS, version=2, status="FAILED", reason="403 from the bucket", bytes=1_000_000_000))
    assert summarize(events)[0].cache == "FAILED 1.0 GB: 403 from the bucket"


def test_the_storage_secret_reaches_every_pod_that_downloads_a_cached_version() -> None:
    """No storage initializer runs for a cached version: the Job and the runtime read the object store's credentials."""
    v = version(size=50.0)
    config = CONFIG.model_copy(update={"storage_secret": "s3-credentials"})
    wanted = [{"secretRef": {"name": "s3-credentials", "optional": True}}]
    job = render_cache_job(v, "llm", config, "model-cache")
    isvc = render_inference_service(v, default_deployment(v), config)
    assert job["spec"]["template"]["spec"]["containers"][0]["envFrom"] == wanted
    assert isvc["spec"]["predictor"]["model"]["envFrom"] == wanted
    plain = render_inference_service(v, default_deployment(v), CONFIG)
    assert "envFrom" not in plain["spec"]["predictor"]["model"]
    assert "envFrom" not in render_cache_job(v, "llm", CONFIG, "model-cache")["spec"]["template"]["spec"]["containers"][0]
