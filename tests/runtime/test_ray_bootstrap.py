"""Multi-node bootstrap on loopback: the launcher's Ray head, a worker started by `python -m runtimes worker`,
and the node-count wait. vLLM's Ray executor itself needs GPUs: on the CPU the engine refuses it, which
the launcher must turn into a prompt exit with its Ray head stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtimes.local import free_port
from runtimes.ray_cluster import RayClusterError, RayHead, gcs_reachable, wait_for_cluster

pytestmark = pytest.mark.slow

RAY_WORKER_PORTS = range(10002, 20000)  # Ray's default worker port range: the GCS port must lie outside


def gcs_port() -> int:
    port = free_port()
    while port in RAY_WORKER_PORTS:
        port = free_port()
    return port


def worker_command(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "runtimes", "worker", "--head-address=127.0.0.1", f"--ray-port={port}", "--ray-node-ip=127.0.0.1", *extra]


def head_command(port: int, model: Path, wait: float) -> list[str]:
    """The head role as the multi-node ClusterServingRuntime starts it (the Ray executor forced)."""
    return [
        sys.executable, "-m", "runtimes", "head", "--executor=ray", f"--ray-port={port}", "--ray-node-ip=127.0.0.1",
        f"--ray-wait-timeout={wait:g}", f"--model={model}", "--served-model-name=tiny", "--dtype=float32", "--enforce-eager",
        "--max-model-len=512", "--host=127.0.0.1", f"--port={free_port()}",
    ]  # fmt: skip


TWO_NODES = {**os.environ, "RAY_NODE_COUNT": "2"}  # what KServe injects into the head of a two-node service


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    ray_head = RayHead(gcs_port(), node_ip="127.0.0.1", num_gpus=0, log=tmp_path_factory.mktemp("ray") / "head.log")
    with ray_head:
        yield ray_head
    import ray

    ray.shutdown()


def test_a_missing_worker_times_out_with_a_clear_message(head: RayHead) -> None:
    with pytest.raises(RayClusterError) as caught:
        wait_for_cluster(head.address, nodes=2, gpus=0, timeout=2, poll=0.5)
    message = str(caught.value)
    assert "incomplete after 2 s: 1 of 2 Ray nodes and 0 of 0 GPUs have joined" in message
    assert "HEAD_SVC" in message and "RAY_NODE_COUNT" in message


def test_a_worker_joins_and_the_node_count_wait_passes(head: RayHead, tmp_path: Path) -> None:
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(worker_command(head.port, "--wait-timeout=120"), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        state = wait_for_cluster(head.address, nodes=2, gpus=0, timeout=180, poll=0.5)
        assert state.nodes == 2
        assert worker.poll() is None  # the worker blocks as `ray start --block`
    finally:
        worker.terminate()  # SIGTERM: Ray drains and stops the node's processes
        worker.wait(60)


def test_worker_needs_the_head_address() -> None:
    done = subprocess.run([sys.executable, "-m", "runtimes", "worker"], capture_output=True, text=True, timeout=60, env={"PATH": ""})
    assert done.returncode == 2
    assert "the worker needs the head's address: --head-address or $HEAD_SVC" in done.stderr


def test_worker_gives_up_when_the_head_never_answers() -> None:
    done = subprocess.run(worker_command(gcs_port(), "--wait-timeout=1"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "did not answer within 1 s (is HEAD_SVC right, is the head pod up?)" in done.stderr


def test_launcher_head_without_its_worker_times_out_with_a_clear_message(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = gcs_port()
    done = subprocess.run(head_command(port, tiny_model_dir, wait=3), capture_output=True, text=True, timeout=300, env=TWO_NODES)
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"Ray cluster at 127.0.0.1:{port} incomplete after 3 s: 1 of 2 Ray nodes and 0 of 0 GPUs have joined" in done.stderr
    assert not gcs_reachable(f"127.0.0.1:{port}")  # the launcher stopped its Ray head


def test_launcher_head_and_worker_form_a_cluster_and_engine_failure_exits_promptly(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = gcs_port()
    head_log, worker_log = tmp_path / "head.log", tmp_path / "worker.log"
    with head_log.open("wb") as out:
        head = subprocess.Popen(head_command(port, tiny_model_dir, wait=180), stdout=out, stderr=subprocess.STDOUT, env=TWO_NODES)
    with worker_log.open("wb") as out:
        worker = subprocess.Popen(worker_command(port, "--wait-timeout=180"), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "Ray cluster ready" not in head_log.read_text(errors="replace") and head.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        log = head_log.read_text(errors="replace")
        assert "Ray cluster ready: 2 of 2 Ray nodes and 0 of 0 GPUs have joined" in log, log[-3000:]
        # vLLM then refuses its Ray executor on the CPU: the launcher exits with an error instead of hanging
        returncode = head.wait(240)
        log = head_log.read_text(errors="replace")
        assert returncode == 1 and "current platform cpu does not support ray" in log, log[-3000:]
        assert not gcs_reachable(f"127.0.0.1:{port}")
    finally:
        if head.poll() is None:
            head.kill()
            head.wait()
        worker.terminate()
        worker.wait(60)
