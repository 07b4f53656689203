"""The cold-start benchmark's pure parts: the fresh pod's environment, reading vLLM's log lines, the phases."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.coldstart import (
    Start,
    first_arrivals,
    load_window,
    logged_durations,
    pair_orders,
    phase_durations,
    phase_ends,
    pod_env,
    runtime_phases,
)

# vLLM's lines as a start of plain vLLM writes them, with the seconds they arrived at
LOG = [
    (4.0, "(APIServer pid=1) INFO 12-02 10:13:14 [api_utils.py:286] non-default args: {'host': '127.0.0.1'}"),
    (9.0, "(EngineCore pid=2) INFO 12-02 10:14:15 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: model='/m'"),
    (12.0, "(Worker pid=3) INFO 12-02 10:14:52 [cpu_model_runner.py:68] Starting to load model /m..."),
    (12.5, "(Worker pid=3) INFO 12-02 10:14:52 [base_loader.py:82] Initializing model took 0.193856 seconds"),
    (13.0, "Loading safetensors checkpoint shards:   0% Completed | 0/1 [00:00<?, ?it/s]"),
    (14.0, "Loading safetensors checkpoint shards: 100% Completed | 1/1 [00:01<00:00,  1.00it/s]"),
    (14.1, "(Worker pid=3) INFO 12-02 10:14:54 [default_loader.py:502] Loading weights took 1.52 seconds"),
    (30.0, "(Worker pid=3) INFO 12-02 10:15:10 [monitor.py:40] torch.compile took 14.20 s in total"),
    (40.0, "(EngineCore pid=2) INFO 12-02 10:15:16 [core.py:402] init engine (profile, create kv cache, warmup model) took 26.84 s"),
    (41.0, "INFO:     Application startup complete."),
]


def test_a_fresh_pod_inherits_no_cache_home_or_stokehold_variable(tmp_path: Path) -> None:
    base = {"PATH": "/bin", "HOME": "/root", "VLLM_CACHE_ROOT": "/old", "TORCHINDUCTOR_CACHE_DIR": "/old", "STOKEHOLD_API_KEY": "k"}
    env = pod_env(base, tmp_path, {"VLLM_CPU_KVCACHE_SPACE": "1"})
    assert env["PATH"] == "/bin"
    assert env["HOME"] == str(tmp_path / "home") and env["TMPDIR"] == str(tmp_path / "tmp")
    assert env["XDG_CACHE_HOME"].startswith(str(tmp_path))
    assert not {"VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "STOKEHOLD_API_KEY"} & env.keys()
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_markers_and_logged_durations_come_from_the_first_matching_line() -> None:
    markers = first_arrivals(LOG, {"imports": r"non-default args", "engine_ready": r"init engine", "absent": r"never logged"})
    assert markers == {"imports": 4.0, "engine_ready": 40.0}
    logged = logged_durations(LOG)
    assert logged == {"initialize_model_s": 0.193856, "load_weights_s": 1.52, "torch_compile_s": 14.2, "init_engine_s": 26.84}


def test_the_load_window_runs_from_the_loader_start_to_its_progress_bar_end() -> None:
    assert load_window(LOG) == pytest.approx(14.0 - 12.5)
    assert load_window(LOG[:5]) is None  # still loading


def test_phases_prefer_the_runtimes_metric_and_fall_back_to_the_log() -> None:
    start = Start(
        "stokehold", 50.0, 0.0, markers={"imports": 4.0, "weights_loaded": 14.1, "engine_ready": 40.0}, logged={}, counted={},
        runtime_phases={"imports": 3.0, "engine_ready": 38.0, "first_generation": 49.0},
    )  # fmt: skip
    ends = phase_ends(start)
    assert ends == {"download": 0.0, "imports": 3.0, "weights_loaded": 14.1, "engine_ready": 38.0, "first_generation": 50.0}
    expected = {"download": 0.0, "imports": 3.0, "weights_loaded": 11.1, "engine_ready": 23.9, "first_generation": 12.0}
    assert phase_durations(ends) == pytest.approx(expected)


def test_a_download_before_the_process_shifts_the_runtime_phases() -> None:
    start = Start("baseline", 60.0, 10.0, markers={"imports": 14.0}, logged={}, counted={}, runtime_phases={"imports": 4.0})
    assert phase_ends(start) == {"download": 10.0, "imports": 14.0, "first_generation": 60.0}


def test_runtime_phases_are_read_from_a_metrics_page() -> None:
    page = (
        "# HELP stokehold_runtime_start_phase_seconds Seconds from process start to the end of each start phase\n"
        "# TYPE stokehold_runtime_start_phase_seconds gauge\n"
        'stokehold_runtime_start_phase_seconds{phase="imports"} 3.5\n'
        'stokehold_runtime_start_phase_seconds{phase="engine_ready"} 20.0\n'
        "vllm:num_requests_running 0.0\n"
    )
    assert runtime_phases(page) == {"imports": 3.5, "engine_ready": 20.0}
    assert runtime_phases("vllm:num_requests_running 0.0\n") == {}


def test_pairs_alternate_which_side_starts_first() -> None:
    assert pair_orders(3) == [("baseline", "stokehold"), ("stokehold", "baseline"), ("baseline", "stokehold")]
