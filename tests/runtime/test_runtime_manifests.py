"""The ClusterServingRuntimes and the runtime images agree with the launcher, the catalog and the controller.

No Docker engine and no cluster here: the manifests are rendered with `kubectl kustomize` and validated
offline (tests/manifests/kustomize.py), the Dockerfiles are read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from controller.render_config import RenderConfig
from runtimes.launcher import DEFAULT_PORT
from templates.catalog import load_catalog
from tests.manifests.kustomize import MANIFESTS, one, problems_of, render_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runtimes() -> list[dict[str, Any]]:
    return render_dir(MANIFESTS / "runtimes")


def container(doc: dict[str, Any]) -> dict[str, Any]:
    (found,) = doc["spec"]["containers"]
    return found


def test_both_runtimes_render_valid_and_match_the_controller(runtimes: list[dict[str, Any]]) -> None:
    assert [problem for doc in runtimes for problem in problems_of(doc)] == []
    names = {doc["metadata"]["name"] for doc in runtimes}
    config = RenderConfig()
    assert names == {config.runtime, config.multinode_runtime}


def test_single_node_runtime(runtimes: list[dict[str, Any]]) -> None:
    runtime = one(runtimes, "ClusterServingRuntime", "stokehold-vllm-ray")
    spec, main = runtime["spec"], container(runtime)
    # never auto-selected: only services that name the runtime run here (tests/admission)
    assert {(f["name"], f["autoSelect"]) for f in spec["supportedModelFormats"]} == {("vllm", False), ("huggingface", False)}
    assert main["command"] == ["python3", "-m", "runtimes", "head"]
    assert main["ports"] == [{"name": "http1", "containerPort": DEFAULT_PORT, "protocol": "TCP"}]  # Knative: one http1 port
    assert main["livenessProbe"]["httpGet"]["path"] == "/health"
    assert main["readinessProbe"]["httpGet"]["path"] == "/ready"
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800  # big models load for many minutes
    assert main["readinessProbe"]["timeoutSeconds"] > 30  # the probe's own generation timeout
    assert spec["annotations"] == {"prometheus.kserve.io/port": str(DEFAULT_PORT), "prometheus.kserve.io/path": "/metrics"}
    assert_hardened(main)
    assert_shared_memory(spec, main)


def test_multinode_runtime_has_a_ray_head_and_workers(runtimes: list[dict[str, Any]]) -> None:
    runtime = one(runtimes, "ClusterServingRuntime", "stokehold-vllm-ray-multinode")
    spec, head = runtime["spec"], container(runtime)
    assert head["command"] == ["python3", "-m", "runtimes", "head"] and "--executor=ray" in head["args"]
    assert head["ports"][0]["name"] == "http"  # raw deployment: the PodMonitor scrapes this name
    (worker,) = spec["workerSpec"]["containers"]
    assert worker["name"] == "worker-container"  # the name KServe and the controller's workerSpec use
    assert worker["command"] == ["python3", "-m", "runtimes", "worker"]
    assert {e["name"] for e in worker["env"]} >= {"POD_IP"}
    assert_hardened(head)
    assert_hardened(worker)
    assert_shared_memory(spec, head)
    assert_shared_memory(spec["workerSpec"], worker)
    version = next(v for v in load_catalog() if v.spec.parallelism.nodes > 1)
    assert version.spec.source.startswith(("pvc://", "oci://"))


def assert_hardened(c: dict[str, Any]) -> None:
    context = c["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] != 0
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}


def assert_shared_memory(spec: dict[str, Any], c: dict[str, Any]) -> None:
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volume = next(v for v in spec["volumes"] if v["name"] == mounts["/dev/shm"])
    assert volume["emptyDir"]["medium"] == "Memory"


def dockerfile(name: str) -> str:
    return re.sub(r"\\\n", " ", (REPO / "runtimes" / name).read_text())


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_images_run_the_launcher_as_a_numeric_non_root_user(name: str) -> None:
    text = dockerfile(name)
    users = re.findall(r"^USER (\d+):(\d+)$", text, re.MULTILINE)
    assert users and users[-1][0] != "0"
    assert re.search(r'^ENTRYPOINT \["python3?", "-m", "runtimes"\]$', text, re.MULTILINE)
    assert "COPY runtimes/ runtimes/" in text and "COPY templates/ templates/" in text
    ignored = (REPO / "runtimes" / f"{name}.dockerignore").read_text()
    assert "!runtimes/" in ignored and "!templates/" in ignored


def test_cpu_image_builds_the_tiny_model_where_the_catalog_expects_it() -> None:
    tiny = next(v for v in load_catalog() if v.name == "tiny-demo")
    assert f"build_tiny_model('{tiny.spec.source}')" in dockerfile("Dockerfile.cpu")
    assert re.search(r"vllm/vllm-openai:v0\.32\.\d+", dockerfile("Dockerfile"))
