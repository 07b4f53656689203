"""The Ray cluster of a multi-GPU or multi-node service: the head starts it, workers join it.

Follows KServe's multi-node contract: the head runs `ray start --head` on port 6379 (no
dashboard, no usage stats) and waits until RAY_NODE_COUNT nodes with the expected GPUs
have joined; each worker waits for the head (`ray health-check`) and then runs
`ray start --address=<HEAD_SVC>:6379 --block`. Ray is imported only on this path.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

logger = logging.getLogger("stokehold.runtime")

RAY_PORT = 6379
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
# on one host (tests) several nodes would collide on the agent's fixed default port
NODE_FLAGS = ("--dashboard-agent-listen-port=0",)


class RayClusterError(RuntimeError):
    """The Ray cluster did not form; the message says what is missing."""


@dataclass(frozen=True)
class ClusterState:
    nodes: int
    gpus: float

    def satisfies(self, nodes: int, gpus: int) -> bool:
        return self.nodes >= nodes and self.gpus >= gpus

    def shortfall(self, nodes: int, gpus: int) -> str:
        return f"{self.nodes} of {nodes} Ray nodes and {self.gpus:g} of {gpus} GPUs have joined"


def ray_executable() -> str:
    beside = Path(sys.executable).with_name("ray")
    found = str(beside) if beside.exists() else shutil.which("ray")
    if not found:
        raise RayClusterError("the `ray` command is not installed (pip install 'ray[default]')")
    return found


def _ray_env() -> dict[str, str]:
    return {**os.environ, **RAY_ENV}


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def gcs_reachable(address: str, timeout: float = 1.0) -> bool:
    """The head's GCS port accepts connections (cheap: no Ray import, no subprocess)."""
    try:
        with socket.create_connection(_split(address), timeout=timeout):
            return True
    except OSError:
        return False


def head_is_healthy(address: str, timeout: float = 30.0) -> bool:
    """KServe's check: the port is open and `ray health-check` passes."""
    if not gcs_reachable(address):
        return False
    try:
        done = subprocess.run(
            [ray_executable(), "health-check", "--address", address], capture_output=True, env=_ray_env(), timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def wait_for_head(address: str, timeout: float, poll: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not head_is_healthy(address, timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            raise RayClusterError(f"the Ray head at {address} did not answer within {timeout:g} s (is HEAD_SVC right, is the head pod up?)")
        time.sleep(poll)


class RayHead:
    """`ray start --head --block` as a child process; stopping it stops the node's Ray processes."""

    def __init__(self, port: int = RAY_PORT, *, node_ip: str | None = None, num_gpus: int | None = None, log: Path | None = None) -> None:
        self.port = port
        self.node_ip = node_ip
        self.num_gpus = num_gpus
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.node_ip or '127.0.0.1'}:{self.port}"

    def command(self) -> list[str]:
        command = [
            ray_executable(),
            "start",
            "--head",
            f"--port={self.port}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            *NODE_FLAGS,
        ]
        if self.node_ip:
            command.append(f"--node-ip-address={self.node_ip}")
        if self.num_gpus is not None:
            command.append(f"--num-gpus={self.num_gpus}")
        return [*command, "--block"]

    def start(self, timeout: float = 120.0) -> RayHead:
        output = self.log.open("ab") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(self.command(), stdout=output, stderr=subprocess.STDOUT, env=_ray_env(), start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while not head_is_healthy(self.address):
                if self.process.poll() is not None:
                    raise RayClusterError(
                        f"`ray start --head` exited with {self.process.returncode}" + (f"; see {self.log}" if self.log else "")
                    )
                if time.monotonic() >= deadline:
                    raise RayClusterError(f"the Ray head did not become healthy within {timeout:g} s")
                time.sleep(0.5)
        except BaseException:  # a timeout, or SIGTERM while starting: no Ray processes left behind
            self.stop()
            raise
        logger.info("Ray head started at %s", self.address)
        return self

    def stop(self, grace: float = 30.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)  # `ray start --block` stops the node's processes on SIGTERM
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> RayHead:
        return self.start() if self.process is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def cluster_state() -> ClusterState:
    import ray

    alive = [node for node in ray.nodes() if node.get("Alive")]  # type: ignore[no-untyped-call]
    return ClusterState(nodes=len(alive), gpus=sum(float(node.get("Resources", {}).get("GPU", 0)) for node in alive))


def wait_for_cluster(address: str, *, nodes: int, gpus: int, timeout: float, poll: float = 1.0) -> ClusterState:
    """Connect as a driver (vLLM's Ray executor reuses the connection) and wait for every node and GPU."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    deadline = time.monotonic() + timeout
    while True:
        state = cluster_state()
        if state.satisfies(nodes, gpus):
            logger.info("Ray cluster ready: %s", state.shortfall(nodes, gpus))
            return state
        if time.monotonic() >= deadline:
            raise RayClusterError(
                f"Ray cluster at {address} incomplete after {timeout:g} s: {state.shortfall(nodes, gpus)} "
                "(check the worker pods: they join HEAD_SVC; RAY_NODE_COUNT and REQUEST_GPU_COUNT set the expectation)"
            )
        time.sleep(poll)


def disconnect() -> None:
    """Leave the cluster as a driver. Before the head stops: with the GCS gone, Ray's excepthook (installed by
    `ray.init`) would wait for it forever when an error such as a failed engine start ends the launcher."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def worker_command(address: str, *, node_ip: str | None = None, num_gpus: int | None = None) -> list[str]:
    command = [ray_executable(), "start", f"--address={address}", "--disable-usage-stats", *NODE_FLAGS]
    if node_ip:
        command.append(f"--node-ip-address={node_ip}")
    if num_gpus is not None:
        command.append(f"--num-gpus={num_gpus}")
    return [*command, "--block"]


def run_worker(address: str, *, timeout: float, node_ip: str | None = None, num_gpus: int | None = None) -> None:
    """Wait for the head, then become `ray start --block` (signals reach Ray directly)."""
    wait_for_head(address, timeout)
    command: Sequence[str] = worker_command(address, node_ip=node_ip, num_gpus=num_gpus)
    logger.info("joining the Ray cluster at %s", address)
    os.environ.update(RAY_ENV)
    os.execv(command[0], list(command))
