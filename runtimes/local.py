"""An OpenAI server (our runtime or plain vLLM) as a local subprocess: for tests, benchmarks and demos."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

TINY_ENGINE_ARGS = ("--dtype=float32", "--enforce-eager")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def runtime_command(model_dir: str | Path, served_model_name: str, port: int, *extra: str) -> list[str]:
    """`python -m runtimes head` for a local model directory on loopback."""
    return [
        sys.executable, "-m", "runtimes", "head", f"--model={model_dir}", f"--served-model-name={served_model_name}",
        "--host=127.0.0.1", f"--port={port}", *extra,
    ]  # fmt: skip


def plain_vllm_command(model_dir: str | Path, served_model_name: str, port: int, *extra: str) -> list[str]:
    """vLLM's own OpenAI server with the same arguments (the baseline)."""
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", f"--model={model_dir}",
        f"--served-model-name={served_model_name}", "--host=127.0.0.1", f"--port={port}", *extra,
    ]  # fmt: skip


class ServerExited(RuntimeError):
    pass


class LocalServer:
    """A server subprocess in its own session, its output in a log file."""

    def __init__(self, command: Sequence[str], port: int, log_path: Path, env: Mapping[str, str] | None = None) -> None:
        self.command = list(command)
        self.port = port
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> LocalServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.spawned_at = time.perf_counter()
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_until(self, path: str, timeout: float, headers: Mapping[str, str] | None = None) -> float:
        """Poll `path` until it answers 200; returns seconds since spawn."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=5, headers=dict(headers or {})) as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise ServerExited(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    if client.get(path).status_code == 200:
                        return time.perf_counter() - self.spawned_at
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"{path} not ready within {timeout:g} s:\n{self.log_tail()}")

    def terminate(self) -> None:
        """SIGTERM to the server process only (as Kubernetes does), not to its process group."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, grace: float = 60.0) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(grace)
        # whatever is left of the session (engine and worker processes): no orphans
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
