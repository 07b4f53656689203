"""What a user sees with the real kubectl after the KubeSink wrote InferenceServices to the emulator."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from controller.sinks.kube import KubeSink
from tests.k8s_emulator import KubernetesEmulator
from tests.kube.helpers import isvc

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"


async def kubectl(kube: KubernetesEmulator, home: Path, *args: str) -> tuple[str, str]:
    """kubectl's (stdout, stderr), as a user in a fresh home directory would run it."""
    assert kube.kubeconfig is not None
    process = await asyncio.create_subprocess_exec(
        KUBECTL,
        "--kubeconfig",
        str(kube.kubeconfig),
        "--cache-dir",
        str(home / "cache"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, f"kubectl {' '.join(args)} failed: {err.decode()}"
    return out.decode(), err.decode()


@pytest.fixture
async def services(kube: KubernetesEmulator) -> dict[str, str]:
    """llama in two namespaces, and an unrelated template: name/namespace → content hash."""
    sink = KubeSink(kube.api_client(), workers=2)
    written = {
        ("team-a", "llama"): "sha256:aaa",
        ("team-b", "llama-canary"): "sha256:bbb",
        ("team-a", "gemma"): "sha256:ccc",
    }
    try:
        for (namespace, name), content_hash in written.items():
            template = "gemma" if name == "gemma" else "llama"
            await sink.apply(isvc(name, template=template, namespace=namespace, content_hash=content_hash))
    finally:
        await sink.close()
    kube.set_isvc_status("team-a", "llama", ready=True)
    kube.set_isvc_status("team-b", "llama-canary", ready=False, model_state="Loading")
    return {f"{namespace}/{name}": content_hash for (namespace, name), content_hash in written.items()}


async def test_kubectl_lists_exactly_the_templates_services(kube: KubernetesEmulator, services: dict[str, str], tmp_path: Path) -> None:
    table, _ = await kubectl(kube, tmp_path, "get", "inferenceservices", "-l", "stokehold.dev/template=llama", "-A")
    lines = table.strip().splitlines()
    header = lines[0].split()
    assert header[:5] == ["NAMESPACE", "NAME", "URL", "READY", "PREV"] and header[-1] == "AGE"
    rows = {tuple(line.split()[:2]): line.split() for line in lines[1:]}
    assert set(rows) == {("team-a", "llama"), ("team-b", "llama-canary")}
    assert rows[("team-a", "llama")][2:4] == ["http://llama.team-a.example.com", "True"]
    assert rows[("team-b", "llama-canary")][2] == "False"  # loading: no URL yet, not ready

    listed = json.loads((await kubectl(kube, tmp_path, "get", "isvc", "-l", "stokehold.dev/template=llama", "-A", "-o", "json"))[0])
    assert listed["kind"] == "List"
    names = {f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in listed["items"]}
    assert names == {"team-a/llama", "team-b/llama-canary"}

    jsonpath = r"{range .items[*]}{.metadata.namespace}/{.metadata.name}={.metadata.annotations.stokehold\.dev/content-hash}{'\n'}{end}"
    hashes, _ = await kubectl(
        kube, tmp_path, "get", "isvc", "-A", "-l", "app.kubernetes.io/managed-by=stokehold", "-o", f"jsonpath={jsonpath}"
    )
    assert dict(line.split("=", 1) for line in hashes.strip().splitlines()) == services

    single, _ = await kubectl(
        kube, tmp_path, "get", "isvc", "gemma", "-n", "team-a", "-o", "jsonpath={.metadata.labels.stokehold\\.dev/template}"
    )
    assert single == "gemma"
    nothing, why = await kubectl(kube, tmp_path, "get", "isvc", "-l", "stokehold.dev/template=none", "-A")
    assert nothing == "" and "No resources found" in why
