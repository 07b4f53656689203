"""The runtime benchmark's core split (`bench.runtime.isolate_engine`) on a stand-in process tree."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from bench.runtime import isolate_engine

CORES = sorted(os.sched_getaffinity(0))
pytestmark = pytest.mark.skipif(len(CORES) < 2, reason="needs two cores")

# a "server" whose child (the "engine") pins itself to some cores, as vLLM pins its model worker
ENGINE = "import os, sys, time\nif sys.argv[1:]: os.sched_setaffinity(0, {int(c) for c in sys.argv[1:]})\ntime.sleep(60)"
SERVER = "import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', sys.argv[1], *sys.argv[2:]])\ntime.sleep(60)"


@contextlib.contextmanager
def stand_in_server(engine_cores: set[int]) -> Iterator[psutil.Process]:
    process = subprocess.Popen([sys.executable, "-c", SERVER, ENGINE, *map(str, sorted(engine_cores))])
    server = psutil.Process(process.pid)
    try:
        deadline = time.monotonic() + 10
        while not server.children() or (engine_cores and set(server.children()[0].cpu_affinity()) != engine_cores):
            assert time.monotonic() < deadline, "the stand-in server did not start"
            time.sleep(0.05)
        yield server
    finally:
        for child in server.children(recursive=True):
            child.kill()
        process.kill()
        process.wait()


def test_the_engine_keeps_its_core_and_the_http_process_gets_the_rest() -> None:
    engine_cores = {CORES[0]}
    with stand_in_server(engine_cores) as server:
        http_cores = isolate_engine(server.pid)
        assert http_cores == set(CORES) - engine_cores
        assert {frozenset(os.sched_getaffinity(thread.id)) for thread in server.threads()} == {frozenset(http_cores)}
        assert set(server.children()[0].cpu_affinity()) == engine_cores


def test_nothing_moves_where_vllm_bound_nothing() -> None:
    with stand_in_server(set()) as server:
        assert isolate_engine(server.pid) == set(CORES)
        assert set(server.cpu_affinity()) == set(CORES)
        assert set(server.children()[0].cpu_affinity()) == set(CORES)
