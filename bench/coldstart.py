"""Cold start from zero: plain vLLM downloading at start against stokehold warmed on publish (`make bench-coldstart`).

Every start is made as in a fresh pod: an empty home, /tmp (TMPDIR) and XDG caches in a new temp
folder, no inherited cache variable (VLLM_CACHE_ROOT, TORCHINDUCTOR_CACHE_DIR, ...), the same fixed
KV cache and no `--enforce-eager` on either side, so that compilation counts as it does on a GPU.
The weights start in a local S3 (moto's server on loopback, tests/fixtures/s3.py).

- baseline: plain vLLM (`python -m vllm.entrypoints.openai.api_server`) whose weights are downloaded
  at start the way KServe's storage initializer does it (`kserve_storage.Storage.download` from the S3
  into a fresh /mnt/models-like folder, in its own process), default loader. Timed from the start of
  the download to the first streamed token of a real completion.
- stokehold: a version warmed on publish (its weights filled into the "volume", a folder that outlives
  the pods, by `python -m runtimes cache-fill`, the pre-download Job's command) whose compile cache
  is on the volume too (a first, unmeasured start of the same version compiled it), served by `python -m runtimes head` with
  STOKEHOLD_COMPILE_CACHE and STOKEHOLD_CONTENT_HASH. Timed from the process start to the first token.
  The volume's files are evicted from the page cache before each start (a new node reads them cold).

The two alternate in pairs (`--pairs`, 2 by default; 1 only to try it out); medians are compared. Phases: the runtime's own
`stokehold_runtime_start_phase_seconds{phase}` where it reports them, and for both sides the arrival
times of vLLM's log lines as the benchmark saw them (followed live) plus the durations vLLM logs.
Weights loading with `--load-format runai_streamer` is compared with the default loader on the same
files, in the same run (`streamer_vs_default_load_ratio`).
Results: bench/results/coldstart.json. Everything started is stopped (process groups), also on failure
and Ctrl-C, and the temp folders are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.common import console, print_table, stopped_by_sigterm, write_results
from runtimes.engine_args import (
    ENV_COMPILE_CACHE,
    ENV_CONTENT_HASH,
    ENV_MODEL_SOURCE,
    ENV_TEMPLATE,
    ENV_TEMPLATE_VERSION,
    MODEL_CACHE_MARKER,
)
from runtimes.local import LocalServer, free_port, plain_vllm_command, runtime_command
from runtimes.model_cache import cached_dir
from runtimes.tiny_model import build_tiny_model, file_hashes
from tests.fixtures.s3 import S3Server

TEMPLATE = "coldstart"
VERSION = 1
SERVED = "tiny"
BUCKET = "models"
# The tiny model's tokenizer with a larger body, so that the weights take a visible time to download and load.
MODEL_SHAPE = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 6, "num_attention_heads": 16, "num_key_value_heads": 16}
# no --enforce-eager: compilation counts for both; the same KV cache for both (VLLM_CPU_KVCACHE_SPACE)
ENGINE_ARGS = ("--dtype=float32", "--max-model-len=512")
COMMON_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}  # unbuffered: log lines arrive when written
# what a fresh pod does not inherit: every cache location comes from HOME/TMPDIR/XDG_* or is set explicitly
POD_LOCAL_VARIABLES = (
    "HOME", "TMPDIR", "TMP", "TEMP", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR",
    "VLLM_CACHE_ROOT", "VLLM_CONFIG_ROOT", "VLLM_ASSETS_CACHE", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR",
    "TORCH_HOME", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE", "HUGGINGFACE_HUB_CACHE",
    "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "S3_VERIFY_SSL",
)  # fmt: skip
STOKEHOLD_PREFIX = "STOKEHOLD_"
TARGET_RATIO = 0.5
START_TIMEOUT = 1200.0
PROMPT = "Hello from a cold start"
PHASES = ("download", "imports", "weights_loaded", "engine_ready", "first_generation")
PHASE_METRIC = "stokehold_runtime_start_phase_seconds"
# KServe's storage initializer: `Storage.download(uri, out_dir)` in its own (init) container
DOWNLOAD_SCRIPT = "import sys\nfrom kserve_storage import Storage\nStorage.download(sys.argv[1], sys.argv[2])\n"
LOADERS = {"default": "auto", "runai_streamer": "runai_streamer"}  # name → --load-format ("auto": vLLM's default loader)

# Where a start is, from vLLM's log lines (first arrival, seconds since the server process was spawned).
MARKERS = {
    "imports": r"non-default args|\[stokehold\] model ",  # the API process has imported vLLM's entrypoint and parsed its arguments
    "engine_process_up": r"Initializing a V1 LLM engine",  # the engine-core process has imported vLLM (a second time)
    "worker_process_up": r"^\((?:Worker|VllmWorker)[^)]*\) ",  # the model worker has imported vLLM (a third time)
    "load_started": r"Starting to load model",
    "weights_loaded": r"Loading weights took|Runai Model Streamer: +100%",
    "compile_started": r"Warming up model for the compilation",  # on the CPU, compilation happens in this warm-up run
    "compile_done": r"Warming up done|torch\.compile took",
    "kv_cache_sized": r"KV cache size: ",
    "engine_ready": r"init engine \(profile, create kv cache, warmup model\) took",
    "server_up": r"Application startup complete|Starting vLLM (?:API )?server|\[stokehold\] serving ",
}
# Durations vLLM logs itself (seconds).
LOGGED = {
    "initialize_model_s": r"Initializing model took ([\d.]+) seconds",
    "load_weights_s": r"Loading weights took ([\d.]+) seconds",
    "dynamo_transform_s": r"Dynamo bytecode transform time: ([\d.]+) s",
    "torch_compile_s": r"torch\.compile took ([\d.]+) s in total",
    "warmup_run_s": r"Initial profiling/warmup run took ([\d.]+) s",
    "init_engine_s": r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s",
}
# How the compile cache was used, from vLLM's lines: graphs compiled, graphs loaded from the cache, AOT load failures.
COUNTED = {
    "graphs_compiled": r"Compiling a graph for compile range",
    "graphs_loaded_from_cache": r"Directly load the compiled graph",
    "aot_load_failures": r"Compiling model again due to a load failure",
    "aot_saved": r"saved AOT compiled function to",
    "aot_loaded": r"Directly load AOT compilation from path",
    "inductor_hits": r"fx graph cache hit",  # torch's own lines, which our runtime turns on (runtimes/start_phases.py)
    "inductor_misses": r"fx graph cache miss",
}
COMPILE_VERDICT = r"\[stokehold\] compile cache \S+: (hit|miss|corrupt)"  # the runtime's own verdict on its kept compile cache
LOAD_WINDOW_START = r"Initializing model took"  # create_model done: the loader starts reading the weights
LOAD_WINDOW_END = r"Loading weights took|100% Completed"  # both loaders' progress bar closes when every tensor was read and copied


@dataclass
class Start:
    """One measured start: total seconds to the first token and where the time went."""

    side: str
    total_s: float
    download_s: float  # before the server process (baseline: the storage initializer), 0 for stokehold
    markers: dict[str, float]  # seconds since the start (download included) when each log marker arrived
    logged: dict[str, float]
    counted: dict[str, int]
    runtime_phases: dict[str, float] = field(default_factory=dict)  # the runtime's own metric, seconds since process start
    compile_cache: str | None = None  # the runtime's verdict: hit, miss or corrupt


# ---------------------------------------------------------------------------- pure helpers


def pod_env(base: Mapping[str, str], pod: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a fresh pod: `base` without anything cache-, home- or S3-related or stokehold's
    own, HOME/TMPDIR/XDG_* in the pod's folder, then `extra`."""
    env = {k: v for k, v in base.items() if k not in POD_LOCAL_VARIABLES and not k.startswith(STOKEHOLD_PREFIX)}
    home = pod / "home"
    env |= {
        "HOME": str(home),
        "TMPDIR": str(pod / "tmp"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
    }
    return env | dict(extra)


def content_hash(files: Mapping[str, str]) -> str:
    """A version's content hash, here of its files' hashes (the template's own hash covers more; any stable key will do)."""
    return "sha256:" + hashlib.sha256(json.dumps(dict(sorted(files.items()))).encode()).hexdigest()


def first_arrivals(lines: Sequence[tuple[float, str]], patterns: Mapping[str, str]) -> dict[str, float]:
    """For each pattern, when the first line matching it arrived."""
    found: dict[str, float] = {}
    for name, pattern in patterns.items():
        regex = re.compile(pattern)
        for at, line in lines:
            if regex.search(line):
                found[name] = at
                break
    return found


def logged_durations(lines: Sequence[tuple[float, str]]) -> dict[str, float]:
    """The durations vLLM logged (the first of each)."""
    found: dict[str, float] = {}
    for name, pattern in LOGGED.items():
        regex = re.compile(pattern)
        for _, line in lines:
            if match := regex.search(line):
                found[name] = float(match[1])
                break
    return found


def counted_lines(lines: Sequence[tuple[float, str]]) -> dict[str, int]:
    return {name: sum(1 for _, line in lines if re.search(pattern, line)) for name, pattern in COUNTED.items()}


def compile_verdict(lines: Sequence[tuple[float, str]]) -> str | None:
    return next((match[1] for _, line in lines if (match := re.search(COMPILE_VERDICT, line))), None)


def load_window(lines: Sequence[tuple[float, str]]) -> float | None:
    """Seconds between the loader starting to read the weights and its progress bar closing (None: not seen)."""
    start = first_arrivals(lines, {"start": LOAD_WINDOW_START}).get("start")
    if start is None:
        return None
    end = first_arrivals([(at, line) for at, line in lines if at >= start], {"end": LOAD_WINDOW_END}).get("end")
    return None if end is None else end - start


def phase_ends(start: Start) -> dict[str, float]:
    """Seconds from the start to the end of each canonical phase: the runtime's metric where it reported
    the phase (shifted by the download before the process, if any), else the log markers."""
    log_based = {
        "download": start.download_s,
        "imports": start.markers.get("imports"),
        "weights_loaded": start.markers.get("weights_loaded"),
        "engine_ready": start.markers.get("engine_ready"),
        "first_generation": start.total_s,
    }
    ends: dict[str, float] = {}
    for phase in PHASES:
        if phase in start.runtime_phases and phase != "first_generation":
            ends[phase] = start.download_s + start.runtime_phases[phase]
        elif (value := log_based[phase]) is not None:
            ends[phase] = value
    return ends


def phase_durations(ends: Mapping[str, float]) -> dict[str, float]:
    """Seconds spent in each phase: the end of each minus the end of the phase before it that was seen."""
    durations: dict[str, float] = {}
    previous = 0.0
    for phase in PHASES:
        if phase in ends:
            durations[phase] = max(ends[phase] - previous, 0.0)
            previous = ends[phase]
    return durations


def medians(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    keys = sorted({key for row in rows for key in row})
    return {key: statistics.median(row[key] for row in rows if key in row) for key in keys}


def runtime_phases(metrics_text: str) -> dict[str, float]:
    """`stokehold_runtime_start_phase_seconds{phase}` from a /metrics page (empty if the runtime does not report it)."""
    phases: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == PHASE_METRIC:
            phases |= {sample.labels["phase"]: sample.value for sample in family.samples if "phase" in sample.labels}
    return phases


def pair_orders(pairs: int) -> list[tuple[str, str]]:
    """Alternating order, pair by pair: whatever else runs on the machine weighs on both sides alike."""
    return [("baseline", "stokehold") if index % 2 == 0 else ("stokehold", "baseline") for index in range(pairs)]


# ---------------------------------------------------------------------------- I/O


class LogTimeline:
    """Follows a log file while a process writes it and stamps each line with its arrival time (seconds since `origin`)."""

    POLL_S = 0.02

    def __init__(self, path: Path, origin: float) -> None:
        self.path = path
        self.origin = origin
        self.lines: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"log {path.name}", daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> LogTimeline:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def snapshot(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self.lines)

    def _follow(self) -> None:
        offset, partial = 0, ""
        while True:
            stopping = self._stop.is_set()
            with contextlib.suppress(FileNotFoundError), self.path.open("rb") as log:
                log.seek(offset)
                data = log.read()
                offset += len(data)
                now = time.perf_counter() - self.origin
                *complete, partial = re.split(r"[\r\n]", partial + data.decode(errors="replace"))
                with self._lock:
                    self.lines += [(now, line) for line in complete if line.strip()]
            if stopping:
                return
            self._stop.wait(self.POLL_S)


def build_model(out: Path) -> Path:
    """The tiny model's tokenizer and chat template with a larger random Llama body (MODEL_SHAPE)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    build_tiny_model(out)
    config = json.loads((out / "config.json").read_text()) | MODEL_SHAPE
    for stale in out.glob("*.safetensors*"):
        stale.unlink()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()  # type: ignore[no-untyped-call]
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def describe_shape() -> str:
    shape = MODEL_SHAPE
    return f"random Llama, {shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, MLP {shape['intermediate_size']}, float32"


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def evict_page_cache(folder: Path) -> None:
    """Drop these files' pages from the page cache (only theirs): the next read comes from the disk, as on a new node."""
    for path in (p for p in folder.rglob("*") if p.is_file()):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


@contextlib.contextmanager
def fresh_pod(work: Path, name: str) -> Iterator[Path]:
    pod = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    for sub in ("home", "tmp"):
        (pod / sub).mkdir()
    try:
        yield pod
    finally:
        shutil.rmtree(pod, ignore_errors=True)


def run_stopped(command: Sequence[str], env: Mapping[str, str], log: Path, timeout: float) -> None:
    """Run a process in its own session to the end; on failure, timeout or Ctrl-C its whole group is killed."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if process.wait(timeout) != 0:
            raise RuntimeError(f"{command[:3]} exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def first_token(server: LocalServer, timeout: float) -> float:
    """Wait until the server answers, stream one completion; perf_counter() when its first token arrived."""
    server.wait_until("/v1/models", timeout)
    body = {"model": SERVED, "prompt": PROMPT, "max_tokens": 4, "temperature": 0.0, "stream": True, "ignore_eos": True}
    with httpx.Client(base_url=server.base_url, timeout=timeout) as client, client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]" and json.loads(line[6:]).get("choices"):
                return time.perf_counter()
    raise RuntimeError("the stream ended without a token")


def measure_server(side: str, server: LocalServer, started: float, download_s: float, *, scrape: bool) -> Start:
    """Start `server`, follow its log, wait for the first token; the Start (times since `started`)."""
    with LogTimeline(server.log_path, started) as timeline:
        server.start()
        try:
            token_at = first_token(server, START_TIMEOUT)
            metrics_text = httpx.get(server.base_url + "/metrics", timeout=30).text if scrape else ""
        finally:
            server.stop()
    lines = timeline.snapshot()
    return Start(
        side=side,
        total_s=token_at - started,
        download_s=download_s,
        markers=first_arrivals(lines, MARKERS),
        logged=logged_durations(lines),
        counted=counted_lines(lines),
        runtime_phases=runtime_phases(metrics_text),
        compile_cache=compile_verdict(lines),
    )


@dataclass
class Setup:
    work: Path
    model_uri: str
    s3_env: dict[str, str]
    volume: Path
    model_on_volume: Path
    content_hash: str


def start_baseline(setup: Setup, logs: Path) -> Start:
    with fresh_pod(setup.work, "baseline") as pod:
        env = pod_env(os.environ, pod, COMMON_ENV)
        models = pod / "mnt" / "models"  # KServe's storage initializer writes to /mnt/models
        started = time.perf_counter()
        run_stopped([sys.executable, "-c", DOWNLOAD_SCRIPT, setup.model_uri, str(models)], env | setup.s3_env, pod / "download.log", 600)
        download_s = time.perf_counter() - started
        port = free_port()
        server = LocalServer(plain_vllm_command(models, SERVED, port, *ENGINE_ARGS), port, logs / f"baseline-{port}.log")
        server.env = env
        return measure_server("baseline", server, started, download_s, scrape=False)


def start_stokehold(setup: Setup, logs: Path, label: str = "stokehold") -> Start:
    evict_page_cache(setup.volume)
    with fresh_pod(setup.work, label) as pod:
        stokehold = {
            ENV_COMPILE_CACHE: str(setup.volume / "compile"),
            ENV_CONTENT_HASH: setup.content_hash,
            ENV_MODEL_SOURCE: setup.model_uri,  # only read if the cache were not filled
            ENV_TEMPLATE: TEMPLATE,
            ENV_TEMPLATE_VERSION: str(VERSION),
        }
        env = pod_env(os.environ, pod, COMMON_ENV | setup.s3_env | stokehold)
        port = free_port()
        server = LocalServer(runtime_command(setup.model_on_volume, SERVED, port, *ENGINE_ARGS), port, logs / f"{label}-{port}.log")
        server.env = env
        return measure_server("stokehold", server, time.perf_counter(), 0.0, scrape=True)


def warm_on_publish(setup: Setup, logs: Path) -> tuple[float, str]:
    """Fill the volume with the version's weights as publishing does: the pre-download Job's command, in its own pod."""
    command = [
        sys.executable, "-m", "runtimes", "cache-fill", f"--source={setup.model_uri}", f"--dest={setup.model_on_volume}",
        f"--content-hash={setup.content_hash}", f"--template={TEMPLATE}", f"--version={VERSION}",
    ]  # fmt: skip
    started = time.perf_counter()
    with fresh_pod(setup.work, "cache-fill") as pod:
        run_stopped(command, pod_env(os.environ, pod, setup.s3_env), logs / "cache-fill.log", 600)
    if not (setup.model_on_volume / MODEL_CACHE_MARKER).is_file():
        raise RuntimeError(f"cache-fill left no {MODEL_CACHE_MARKER} in {setup.model_on_volume}")
    return time.perf_counter() - started, "python -m runtimes cache-fill (the pre-download Job's command)"


def load_seconds(model_dir: Path, loader: str, work: Path, logs: Path) -> float | str:
    """Weights loading of one plain vLLM start with `loader`, read from the log (stopped once loaded); or why it failed."""
    evict_page_cache(model_dir)
    with fresh_pod(work, f"load-{loader}") as pod:
        port = free_port()
        command = plain_vllm_command(model_dir, SERVED, port, *ENGINE_ARGS, "--enforce-eager", f"--load-format={LOADERS[loader]}")
        server = LocalServer(command, port, logs / f"load-{loader}-{port}.log")
        server.env = pod_env(os.environ, pod, COMMON_ENV)
        started = time.perf_counter()
        with LogTimeline(server.log_path, started) as timeline:
            server.start()
            try:
                deadline = time.monotonic() + START_TIMEOUT
                while (seconds := load_window(timeline.snapshot())) is None:
                    if server.process is not None and server.process.poll() is not None:
                        errors = [line for line in server.log_tail(80).splitlines() if "Error" in line]
                        return f"vLLM exited before the weights were loaded: {errors[-1] if errors else server.log_tail(3)}"
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{loader}: weights not loaded within {START_TIMEOUT:.0f} s")
                    time.sleep(0.1)
            finally:
                server.stop(grace=5)  # only the loading was wanted: a start in progress may ignore SIGTERM
        return seconds


def compare_loaders(model_dir: Path, pairs: int, work: Path, logs: Path) -> dict[str, Any]:
    names = tuple(LOADERS)
    seconds: dict[str, list[float]] = {loader: [] for loader in names}
    failures: dict[str, str] = {}
    for index in range(pairs):
        for loader in names if index % 2 == 0 else names[::-1]:
            value = load_seconds(model_dir, loader, work, logs)
            if isinstance(value, str):
                failures[loader] = value
                console.print(f"  load {loader}: {value}")
            else:
                seconds[loader].append(value)
                console.print(f"  load {loader}: {value:.2f} s")
    if failures or not all(seconds.values()):
        return {"ratio": None, "reason": "; ".join(f"{k}: {v}" for k, v in failures.items()) or "no load seen", "samples_s": seconds}
    medians_s = {loader: statistics.median(values) for loader, values in seconds.items()}
    return {"ratio": medians_s["runai_streamer"] / medians_s["default"], "median_s": medians_s, "samples_s": seconds, "reason": None}


# ---------------------------------------------------------------------------- main


def summarise(starts: Sequence[Start]) -> dict[str, Any]:
    ends = [phase_ends(start) for start in starts]
    return {
        "median_s": statistics.median(start.total_s for start in starts),
        "samples_s": [start.total_s for start in starts],
        "phase_ends_s": medians(ends),
        "phases_s": medians([phase_durations(end) for end in ends]),
        "log_markers_s": medians([start.markers for start in starts]),
        "logged_s": medians([start.logged for start in starts]),
        "compile_cache_lines": [start.counted for start in starts],
        "compile_cache_verdicts": [start.compile_cache for start in starts],
        "runtime_phase_metric_s": medians([start.runtime_phases for start in starts]) if any(s.runtime_phases for s in starts) else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="pairs of starts (baseline and stokehold, order alternating)")
    parser.add_argument("--load-pairs", type=int, default=2, help="pairs of starts comparing runai_streamer with the default loader")
    parser.add_argument("--logs", type=Path, default=None, help="keep every process's log in this folder (default: removed with the rest)")
    options = parser.parse_args(argv)
    if options.pairs < 1 or options.load_pairs < 0:
        parser.error("--pairs must be at least 1 and --load-pairs at least 0")
    load_before = os.getloadavg()
    with stopped_by_sigterm(), tempfile.TemporaryDirectory(prefix="bench-coldstart-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        logs = options.logs.resolve() if options.logs else work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        source = build_model(work / "source")
        model_bytes = folder_bytes(source)
        console.print(f"model: {describe_shape()}, {model_bytes / 1e6:.0f} MB of files")
        s3 = stack.enter_context(S3Server(logs))
        uri = s3.upload_dir(BUCKET, f"{TEMPLATE}/{VERSION}", source)
        hash_ = content_hash(file_hashes(source))
        volume = work / "volume"
        setup = Setup(work, uri, s3.env, volume, cached_dir(volume, TEMPLATE, VERSION, hash_), hash_)
        fill_s, filled_by = warm_on_publish(setup, logs)
        console.print(f"warmed on publish in {fill_s:.1f} s ({filled_by}) -> {setup.model_on_volume}")
        first = start_stokehold(setup, logs, label="first-replica")
        console.print(f"first replica (compiles, not measured): {first.total_s:.1f} s, compile cache {first.compile_cache}")
        starts: dict[str, list[Start]] = {"baseline": [], "stokehold": []}
        for index, order in enumerate(pair_orders(options.pairs)):
            for side in order:
                start = start_baseline(setup, logs) if side == "baseline" else start_stokehold(setup, logs)
                starts[side].append(start)
                verdict = f", compile cache {start.compile_cache}" if start.compile_cache else ""
                console.print(f"pair {index + 1}/{options.pairs} {side}: {start.total_s:.1f} s to the first token{verdict}")
        loaders = compare_loaders(setup.model_on_volume, options.load_pairs, work, logs) if options.load_pairs else None
    load_after = os.getloadavg()
    baseline, stokehold = summarise(starts["baseline"]), summarise(starts["stokehold"])
    ratio = stokehold["median_s"] / baseline["median_s"]
    met = ratio <= TARGET_RATIO
    streamer_ratio = loaders["ratio"] if loaders else None
    streamer_reason = (loaders["reason"] if loaders else "not measured (--load-pairs 0)") if streamer_ratio is None else None
    rows: list[tuple[str, object, object, object]] = [
        ("start → first token, median (s)", baseline["median_s"], stokehold["median_s"], ratio),
        ("samples (s)", _samples(baseline), _samples(stokehold), ""),
    ]
    for phase in PHASES:
        rows.append((f"phase {phase} (s)", baseline["phases_s"].get(phase, "-"), stokehold["phases_s"].get(phase, "-"), ""))
    for marker in MARKERS:
        rows.append((f"log: {marker} at (s)", baseline["log_markers_s"].get(marker, "-"), stokehold["log_markers_s"].get(marker, "-"), ""))
    for name in LOGGED:
        rows.append((f"vLLM logged {name}", baseline["logged_s"].get(name, "-"), stokehold["logged_s"].get(name, "-"), ""))
    console.print(
        f"cold start from zero: {describe_shape()} ({model_bytes / 1e6:.0f} MB), {options.pairs} pairs, order alternating; "
        "baseline = KServe's download + plain vLLM, stokehold = warmed on publish + compile cache kept on the volume"
    )
    print_table(
        "seconds since the start (download included); phases: time spent in each",
        ["figure", "baseline", "stokehold", "ratio"],
        rows,
    )
    console.print(
        f"ratio stokehold/baseline {ratio:.3f}: target ≤ {TARGET_RATIO} {'met' if met else 'MISSED'}; "
        f"first replica (compiling) {first.total_s:.1f} s; warm on publish {fill_s:.1f} s"
    )
    console.print(
        f"runai_streamer / default weights load: {streamer_ratio:.3f} {loaders['median_s'] if loaders else ''}"
        if streamer_ratio is not None
        else f"runai_streamer / default weights load: not measured: {streamer_reason}"
    )
    console.print(f"load average (1, 5, 15 min) before {_load(load_before)}, after {_load(load_after)}")
    path = write_results(
        "coldstart",
        {
            "baseline_s": baseline["median_s"],
            "stokehold_s": stokehold["median_s"],
            "ratio": ratio,
            "target_ratio": TARGET_RATIO,
            "met": met,
            "phases": {"baseline": baseline["phases_s"], "stokehold": stokehold["phases_s"]},
            "phase_ends": {"baseline": baseline["phase_ends_s"], "stokehold": stokehold["phase_ends_s"]},
            "streamer_vs_default_load_ratio": streamer_ratio,
            "streamer_vs_default_load": loaders or {"reason": streamer_reason},
            "baseline": baseline,
            "stokehold": stokehold,
            "first_replica_s": first.total_s,
            "first_replica": {
                "compile_cache": first.compile_cache,
                "compile_cache_lines": first.counted,
                "logged_s": first.logged,
                "runtime_phase_metric_s": first.runtime_phases,
            },
            "warm_on_publish": {"seconds": fill_s, "by": filled_by},
            "model": {
                "description": describe_shape(),
                "bytes": model_bytes,
                "shape": MODEL_SHAPE,
                "engine_args": list(ENGINE_ARGS),
                "env": COMMON_ENV,
            },
            "pairs": options.pairs,
            "load_average": {"before": list(load_before), "after": list(load_after)},
            "note": NOTE,
        },
    )
    console.print(f"results: {path}")
    return 0


NOTE = (
    "Times are from the start of the download (baseline) or the process start (stokehold) to the first streamed token, "
    "medians over the pairs. phases: seconds spent in each phase (the runtime's stokehold_runtime_start_phase_seconds where it "
    "reported the phase, else the arrival of vLLM's log lines as the benchmark followed them); logged_s: durations vLLM logs itself. "
    "The streamer ratio compares the loaders' reading of the weights (from the loader's start to its progress bar's end in the log, "
    "page cache evicted, --enforce-eager since compilation does not touch the loading). The machine was shared: see load_average."
)


def _samples(summary: dict[str, Any]) -> str:
    return " ".join(f"{value:.1f}" for value in summary["samples_s"])


def _load(values: tuple[float, float, float]) -> str:
    return " ".join(f"{value:.1f}" for value in values)


if __name__ == "__main__":
    raise SystemExit(main())
