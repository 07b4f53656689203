"""Rendering a LoRA template: the runtime gets what it needs to follow its adapters on the bus, and
the adapter set itself never reaches the pod (attaching an adapter must not roll a new revision)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from controller.render import ADAPTERS_ANNOTATION, render_inference_service
from controller.render_config import RenderConfig
from runtimes.adapters import AdapterSettings
from templates.schema import ModelTemplateVersion, parse_version
from tests.controller.test_render import CATALOG, all_keys, by_name, default_deployment, validate_as_pod
from tests.k8s_emulator import openapi
from tests.k8s_emulator.resources import INFERENCE_SERVICES

CONFIG = RenderConfig.model_validate(
    {"runtime_nats_url": "tls://nats.nats.svc:4222", "runtime_nats_token_secret": {"name": "runtime-nats", "key": "token"}}
)


def with_lora(name: str) -> ModelTemplateVersion:
    document = by_name(name).to_document()
    document["spec"]["engine"]["lora"] = {"max_loras": 4, "max_rank": 16}
    return parse_version(document)


def env_of(isvc: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in isvc["spec"]["predictor"]["model"]["env"]}


def test_a_lora_runtime_gets_its_identity_the_bus_and_a_cache_and_secrets_only_by_reference() -> None:
    version = with_lora("tiny-demo")
    isvc = render_inference_service(version, default_deployment(version, namespace="team-a", name="chat"), CONFIG)
    env = env_of(isvc)
    predictor = isvc["spec"]["predictor"]

    settings = AdapterSettings.from_env({k: v for k, v in env.items() if isinstance(v, str)})
    assert settings is not None and settings.key == ("team-a", "chat")
    assert (settings.template, settings.version) == (version.name, version.version)
    assert str(settings.cache) == CONFIG.adapter_cache_mount  # no cache PVC: an emptyDir
    assert {"name": "adapter-cache", "emptyDir": {}} in predictor["volumes"]
    assert env["STOKEHOLD_NATS_URL"] == "tls://nats.nats.svc:4222"
    assert env["STOKEHOLD_NATS_TOKEN"] == {"secretKeyRef": {"name": "runtime-nats", "key": "token"}}
    assert "--enable-lora" in predictor["model"]["args"]


def test_with_a_cache_pvc_adapters_download_into_it() -> None:
    version = with_lora("qwen3-8b")
    env = env_of(render_inference_service(version, default_deployment(version), CONFIG))
    assert env["STOKEHOLD_ADAPTER_CACHE"] == f"{CONFIG.model_cache_mount}/adapters"


@pytest.mark.parametrize("version", [v for v in CATALOG if v.spec.engine.lora is None], ids=lambda v: v.name)
def test_templates_without_lora_render_nothing_of_it(version: ModelTemplateVersion) -> None:
    isvc = render_inference_service(version, default_deployment(version), CONFIG.model_copy(update={"adapters_annotation": True}))
    assert not any(name.startswith("STOKEHOLD_ADAPTER") for name in env_of(isvc))  # the bus env is every runtime's (start phases)
    assert ADAPTERS_ANNOTATION not in isvc["metadata"]["annotations"]


@pytest.mark.parametrize("name", ["tiny-demo", "qwen3-8b"])
def test_a_lora_inference_service_passes_kserves_real_schema_and_is_a_real_pod(name: str) -> None:
    version = with_lora(name)
    config = CONFIG.model_copy(update={"adapters_annotation": True})
    isvc = render_inference_service(version, default_deployment(version), config, ["alpha@2", "beta@1"])

    pruned, unknown = openapi.prune(isvc, INFERENCE_SERVICES.schema or {})
    assert unknown == []
    assert openapi.default(pruned, INFERENCE_SERVICES.schema or {}) == isvc
    assert openapi.validate(isvc, INFERENCE_SERVICES.schema or {}) == []
    predictor = isvc["spec"]["predictor"]
    container = {"name": "kserve-container", "image": "from-the-runtime"} | {
        k: v for k, v in predictor["model"].items() if k not in {"modelFormat", "runtime", "storageUri"}
    }
    pod_fields = {"model", "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "timeout"}
    validate_as_pod({"containers": [container]} | {k: v for k, v in predictor.items() if k not in pod_fields})
    assert "securityContext" not in all_keys(isvc)


def test_the_adapter_set_is_a_readable_annotation_only_and_never_touches_the_pod() -> None:
    version = with_lora("tiny-demo")
    config = CONFIG.model_copy(update={"adapters_annotation": True})
    before = render_inference_service(version, default_deployment(version), config, [])
    after = render_inference_service(version, default_deployment(version), config, ["beta@1", "alpha@2"])

    assert after["metadata"]["annotations"][ADAPTERS_ANNOTATION] == "alpha@2,beta@1"
    assert before["metadata"]["annotations"][ADAPTERS_ANNOTATION] == ""
    assert after["spec"] == before["spec"], "the pod template is the same: only the annotation, which KServe must not propagate"
    off = render_inference_service(version, default_deployment(version), CONFIG, ["alpha@2"])
    assert ADAPTERS_ANNOTATION not in off["metadata"]["annotations"], "off by default: without KServe's disallow list it would roll pods"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"runtime_nats_password_secret": {"name": "nats"}}, "needs runtime_nats_user"),
        ({"runtime_nats_user": "rt", "runtime_nats_token_secret": {"name": "nats"}}, "not both"),
        ({"runtime_nats_url": "nats://rt:hunter2@nats:4222"}, "without credentials"),
    ],
)
def test_runtime_nats_settings_refuse_inline_or_mixed_credentials(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RenderConfig.model_validate(settings)
