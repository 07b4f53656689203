"""Multi-node bootstrap on loopback: the launcher's Ray head, a worker started by `python -m runtimes worker`,
and the node-count wait (vLLM's Ray executor itself needs GPUs, so it is not started here)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtimes.local import free_port
from runtimes.ray_cluster import RayClusterError, RayHead, wait_for_cluster

pytestmark = pytest.mark.slow

RAY_WORKER_PORTS = range(10002, 20000)  # Ray's default worker port range: the GCS port must lie outside


def gcs_port() -> int:
    port = free_port()
    while port in RAY_WORKER_PORTS:
        port = free_port()
    return port


def worker_command(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "runtimes", "worker", "--head-address=127.0.0.1", f"--ray-port={port}", "--ray-node-ip=127.0.0.1", *extra]


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
