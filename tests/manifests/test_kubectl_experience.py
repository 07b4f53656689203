"""docs/kubectl.md, run as written: the `kubectl stokehold` plugin and the plain kubectl commands.

Everything is real except the cluster: kubectl finds the `kubectl-stokehold` console script on
PATH and the plugin publishes to a real nats-server; the controller (in-process, kube sink,
leader election) writes the InferenceService to the Kubernetes API emulator, which plays KServe
for the status; the documented `kubectl get/describe isvc` lines (and the README's kubectl block) run
through bash and the real kubectl against that emulator. Lines about objects only Knative and KServe create (pods, ksvc,
revisions, logs) have no server here, nor does `kubectl get events --field-selector involvedObject.name=…`
(the emulator serves no field selectors on Events); tests/manifests/test_docs_commands.py checks
their label selectors.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from controller.labels import HASH_ANNOTATION, STOP_ANNOTATION
from controller.render import RETENTION_ANNOTATION
from events.local_server import LocalNatsServer
from events.stream import StreamSettings
from tests.k8s_emulator import KubernetesEmulator
from tests.kube.helpers import eventually
from tests.manifests.commands import shell_lines, words
from tests.manifests.kustomize import REPO, kubectl
from tests.security.hostile import running_controller

KUBECTL_MD = (REPO / "docs" / "kubectl.md").read_text()
README_KUBECTL = (REPO / "README.md").read_text().split("\n## kubectl\n", 1)[1].split("\n## ", 1)[0]
NAMESPACE, NAME = "llm", "gemma-3-12b-it"  # what the documentation's examples use
IDENTITY = "stokehold-controller-7d9f-abcde"
FAILURE = 'Revision "gemma-3-12b-it-predictor-00001" failed with message: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.'


def documented(start: str, *contains: str, exact: bool = False) -> str:
    """The one command line of docs/kubectl.md that starts with `start` and contains every `contains` (or is `start`)."""
    lines = shell_lines(KUBECTL_MD)
    found = [line for line in lines if line == start] if exact else [line for line in lines if line.startswith(start)]
    found = [line for line in found if all(part in line for part in contains)]
    assert len(found) == 1, f"docs/kubectl.md has {len(found)} lines like {start!r} {contains}: {found}"
    return found[0]


class Shell:
    """Runs documentation lines with bash, as a user with the plugin on PATH and a kubeconfig would."""

    def __init__(self, kube: KubernetesEmulator, nats_url: str, home: Path) -> None:
        plugin_dir = Path(sys.executable).parent
        assert (plugin_dir / "kubectl-stokehold").exists(), "the kubectl-stokehold console script is not installed (pip install -e .)"
        assert kube.kubeconfig is not None
        self.env = {
            "PATH": os.pathsep.join([str(plugin_dir), str(Path(kubectl()).parent), os.environ.get("PATH", "/usr/bin:/bin")]),
            "HOME": str(home),
            "KUBECONFIG": str(kube.kubeconfig),
            "STOKEHOLD_NATS_URL": nats_url,
            "COLUMNS": "250",  # the plugin's tables are not folded
        }

    async def __call__(self, line: str) -> str:
        process = await asyncio.create_subprocess_exec(
            "bash", "-c", line, cwd=REPO, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, f"{line}\nexit {process.returncode}: {err.decode()}"
        return out.decode() + err.decode()


@asynccontextmanager
async def controller_and_shell(kube: KubernetesEmulator, nats_url: str, home: Path) -> AsyncIterator[Shell]:
    """The controller as the Deployment runs it (default stream and Lease, kube sink, leader election), and a shell."""
    flags = {"nats.url": nats_url, "sink": "kube", "kubeconfig": kube.kubeconfig, "leader_election": True, "identity": IDENTITY}
    flags |= {"namespaces": [NAMESPACE]}  # the namespace the install's ConfigMap lists (manifests/base/controller.env)
    async with running_controller(flags) as controller:
        await eventually(lambda: controller.role == "leader", "the controller to lead", limit=20)
        yield Shell(kube, nats_url, home)


def live(kube: KubernetesEmulator) -> dict[str, Any] | None:
    found = [o for o in kube.objects("isvc", NAMESPACE) if o["metadata"]["name"] == NAME]
    return found[0] if found else None


def live_annotations(kube: KubernetesEmulator) -> dict[str, str]:
    obj = live(kube)
    return dict(obj["metadata"].get("annotations", {})) if obj else {}


def live_min_replicas(kube: KubernetesEmulator) -> int | None:
    obj = live(kube)
    return int(obj["spec"]["predictor"]["minReplicas"]) if obj else None


def columns(table: str) -> list[dict[str, str]]:
    """kubectl's custom-columns output as one dict per row."""
    header, *rows = table.strip().splitlines()
    names = header.split()
    return [dict(zip(names, row.split(), strict=True)) for row in rows]


async def status_of(shell: Shell) -> dict[str, Any]:
    """The documented `kubectl stokehold status --namespace llm`, in its JSON form."""
    out = await shell(shlex.join(words(documented("kubectl stokehold status", "--namespace llm"))) + " --json")
    summaries = [s for s in map(json.loads, out.splitlines()) if s.get("kind") == "deployment" and s["name"] == NAME]
    if not summaries:  # "no deployments have reported status yet"
        raise json.JSONDecodeError("no deployment in the output", out, 0)
    assert len(summaries) == 1, out
    summary: dict[str, Any] = summaries[0]
    return summary


async def load_statuses(shell: Shell) -> list[str] | None:
    """The deployment's load statuses in the order the stream stored them, once the first write's LOADING is there."""
    line = shlex.join(
        ["kubectl", "stokehold", "events", "replay", "--subject", f"stokehold.status.{NAME}.>", "--type", "deployment.load_status"]
    )
    line += " --json"
    records = [json.loads(row) for row in (await shell(line)).splitlines() if row.startswith("{")]
    statuses = [r["data"]["status"] for r in records if (r["data"]["namespace"], r["data"]["name"]) == (NAMESPACE, NAME)]
    return statuses if "LOADING" in statuses else None


async def wait_for_phase(shell: Shell, phase: str) -> dict[str, Any]:
    summary: dict[str, Any] | None = None
    for _ in range(100):
        try:
            summary = await status_of(shell)
        except json.JSONDecodeError:  # "no deployments have reported status yet"
            summary = None
        if summary is not None and summary["phase"] == phase:
            return summary
        await asyncio.sleep(0.2)
    raise AssertionError(f"`kubectl stokehold status` never showed {phase}: {summary}")


async def test_the_documented_kubectl_workflow(
    k8s_emulator: KubernetesEmulator, nats_server: LocalNatsServer, clean_stream: StreamSettings, tmp_path: Path
) -> None:
    kube = k8s_emulator
    kube.reset()
    async with controller_and_shell(kube, nats_server.url, tmp_path) as shell:
        await documented_workflow(shell, kube)


async def documented_workflow(shell: Shell, kube: KubernetesEmulator) -> None:
    assert "/kubectl-stokehold\n" in await shell(documented("kubectl plugin list"))
    assert "gemma-3-12b-it" in await shell(documented("kubectl stokehold templates list"))

    # publish / deploy through the plugin; the controller creates the InferenceService
    await shell(documented("kubectl stokehold publish", "gemma-3-12b-it.yaml"))
    await shell(documented("kubectl stokehold deploy gemma-3-12b-it --namespace llm", "# latest"))
    isvc = await eventually(lambda: live(kube), "the controller to create the InferenceService", limit=30)
    content_hash = isvc["metadata"]["annotations"][HASH_ANNOTATION]

    # list a template's services by label
    for line in (
        documented("kubectl get isvc -A -l app.kubernetes.io/managed-by=stokehold", exact=True),
        documented("kubectl get isvc -A -l stokehold.dev/template=gemma-3-12b-it"),
        documented("kubectl get isvc -A -l 'stokehold.dev/template=gemma-3-12b-it,stokehold.dev/version!=2'"),
    ):
        rows = (await shell(line)).strip().splitlines()
        assert [row.split()[:2] for row in rows[1:]] == [[NAMESPACE, NAME]], line
    assert "No resources found" in await shell(documented("kubectl get isvc -A -l template.stokehold.dev/family=llama"))

    # version and content hash
    table = columns(await shell(documented("kubectl get isvc -n llm -l stokehold.dev/template=gemma-3-12b-it", "custom-columns")))
    assert table == [{"NAME": NAME, "VERSION": "1", "HASH": content_hash, "READY": "<none>", "URL": "<none>"}]
    assert await shell(documented("kubectl get isvc gemma-3-12b-it -n llm", "content-hash}'")) == content_hash
    assert await shell(documented("kubectl get isvc gemma-3-12b-it -n llm", "stokehold\\.dev/version}'")) == "1"
    assert (await shell(documented("kubectl get isvc gemma-3-12b-it -n llm", "served-model-name}"))).strip() == "google/gemma-3-12b-it"
    loading = await wait_for_phase(shell, "Loading")  # applied, KServe has not reported yet
    assert (loading["template"], loading["version"]) == (NAME, 1)
    # the stream keeps every status event: requested before the write, loading after it
    statuses = await eventually(lambda: load_statuses(shell), "the load statuses of the first write", limit=30)
    # (a write retried after a transient API error is requested again: REQUESTED, REQUESTED, LOADING)
    assert "LOADING" in statuses and set(statuses) <= {"REQUESTED", "LOADING"}, statuses
    assert set(statuses[: statuses.index("LOADING")]) == {"REQUESTED"}, statuses
    assert NAME in await shell(documented("kubectl stokehold status", "--namespace llm"))  # the table, as documented

    # why it failed: KServe reports the revision as failed
    kube.set_isvc_status(NAMESPACE, NAME, ready=False, reason="RevisionFailed", message=FAILURE)
    conditions = (await shell(documented("kubectl get isvc gemma-3-12b-it -n llm", "range .status.conditions"))).splitlines()
    assert ["Ready", "False", "RevisionFailed", FAILURE] in [line.split("\t") for line in conditions]
    assert await shell(documented("kubectl get isvc gemma-3-12b-it -n llm", '@.type=="Ready")].message')) == FAILURE
    described = await shell(documented("kubectl describe isvc gemma-3-12b-it -n llm"))
    assert "RevisionFailed" in described and "Insufficient nvidia.com/gpu" in described
    failed = await wait_for_phase(shell, "Failed")
    assert "Insufficient nvidia.com/gpu" in failed["reason"]
    assert await shell(documented("kubectl get lease stokehold-controller -n stokehold-system")) == IDENTITY
    readme_lines = shell_lines(README_KUBECTL)
    assert len(readme_lines) == 4
    for line in readme_lines:  # the README's short version
        out = await shell(line)
        assert NAME in out and (content_hash in out or "HASH" not in line), line

    # a pinned redeploy with a keep-hot time, then one that never scales to zero
    keep_hot = documented("kubectl get isvc gemma-3-12b-it -n llm", "scale-to-zero-pod-retention-period")
    max_replicas = isvc["spec"]["predictor"]["maxReplicas"]
    await shell(documented("kubectl stokehold deploy gemma-3-12b-it@1 --namespace llm", "--keep-hot 30m"))
    await eventually(lambda: live_annotations(kube).get(RETENTION_ANNOTATION) == "1800s", "the keep-hot redeploy", limit=30)
    assert await shell(keep_hot) == f"1800s 0-{max_replicas}"
    await shell(documented("kubectl stokehold deploy gemma-3-12b-it --namespace llm", "--min-replicas 1"))
    await eventually(lambda: live_min_replicas(kube) == 1, "the min-replicas redeploy", limit=30)
    assert await shell(keep_hot) == f" 1-{max_replicas}"  # no retention period: it never scales to zero
    kube.set_isvc_status(NAMESPACE, NAME, ready=True)
    assert (await wait_for_phase(shell, "Ready"))["url"] == "http://gemma-3-12b-it.llm.example.com"

    # stop and resume
    stopped = documented("kubectl get isvc -A -l app.kubernetes.io/managed-by=stokehold", "STOPPED")
    await shell(documented("kubectl stokehold stop gemma-3-12b-it --namespace llm"))
    await eventually(lambda: STOP_ANNOTATION in live_annotations(kube), "the stop", limit=30)
    assert columns(await shell(stopped)) == [{"NAMESPACE": NAMESPACE, "NAME": NAME, "STOPPED": "true"}]
    await shell(documented("kubectl stokehold resume gemma-3-12b-it --namespace llm"))
    await eventually(lambda: STOP_ANNOTATION not in live_annotations(kube), "the resume", limit=30)
    assert columns(await shell(stopped)) == [{"NAMESPACE": NAMESPACE, "NAME": NAME, "STOPPED": "<none>"}]

    # and gone
    await shell(documented("kubectl stokehold undeploy gemma-3-12b-it --namespace llm"))
    await eventually(lambda: live(kube) is None, "the undeploy", limit=30)
    assert "No resources found" in await shell(documented("kubectl get isvc -A -l app.kubernetes.io/managed-by=stokehold", exact=True))
