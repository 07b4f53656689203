"""The kept compile cache without vLLM: the key, the folder's states under the lock, the engine's env
(test_compile_cache_vllm.py starts the real engine)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from runtimes.compile_cache import COMPLETE_MARKER, CompileKey, CompileLease, Found, KeptCompileCache, acquire, cache_env

KEY = CompileKey(content_hash="sha256:" + "a" * 64, vllm_version="0.32.0", device="cpu", tensor_parallel=1, pipeline_parallel=1)


@pytest.fixture(autouse=True)
def private_folders_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica that waited too long compiles into a private temporary folder: keep those out of /tmp."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))


def compiled(lease: CompileLease) -> CompileLease:
    """What an engine start leaves in the folder: a compiled artefact."""
    (lease.folder / "inductor").mkdir(parents=True, exist_ok=True)
    (lease.folder / "inductor" / "graph.bin").write_text("compiled")
    return lease


@pytest.mark.parametrize(
    "change",
    [
        {"content_hash": "sha256:" + "b" * 64},
        {"vllm_version": "0.33.0"},
        {"device": "NVIDIA H100"},
        {"tensor_parallel": 2},
        {"pipeline_parallel": 2},
    ],
)
def test_every_part_of_the_key_changes_the_folder(change: dict[str, object]) -> None:
    assert KEY.model_copy(update=change).key16 != KEY.key16
    assert len(KEY.key16) == 16 and KEY.key16 == KEY.model_copy().key16


def test_the_first_start_compiles_under_the_lock_and_the_next_reuses(tmp_path: Path) -> None:
    first = acquire(tmp_path, KEY)
    assert first.found is Found.MISSING and first.folder == tmp_path / KEY.key16 and first.lock_fd is not None

    waiting = acquire(tmp_path, KEY, wait_s=0.0)  # the lock is held: never a second writer in the shared folder
    assert waiting.found is Found.PRIVATE and waiting.folder != first.folder

    compiled(first).complete()
    assert (first.folder / COMPLETE_MARKER).exists()
    again = acquire(tmp_path, KEY, wait_s=0.0)
    assert again.found is Found.COMPLETE and again.folder == first.folder and again.lock_fd is None


def test_a_replica_waiting_for_the_lock_finds_the_folder_complete(tmp_path: Path) -> None:
    first = acquire(tmp_path, KEY)
    polls: list[float] = []

    def sleep(seconds: float) -> None:  # the compiling replica finishes while the other one waits
        polls.append(seconds)
        compiled(first).complete()

    second = acquire(tmp_path, KEY, wait_s=60.0, sleep=sleep)
    assert polls and second.found is Found.COMPLETE and second.lock_fd is None


def test_a_start_that_compiled_nothing_does_not_mark_the_folder_complete(tmp_path: Path) -> None:
    """An empty folder marked complete made the next replica skip the compile and then miss every graph."""
    first = acquire(tmp_path, KEY)
    first.complete()
    assert not (first.folder / COMPLETE_MARKER).exists()
    again = acquire(tmp_path, KEY, wait_s=0.0)
    assert again.found in (Found.MISSING, Found.INCOMPLETE) and again.lock_fd is not None
    again.release()


def test_a_folder_without_the_marker_is_moved_aside_and_compiled_again(tmp_path: Path) -> None:
    folder = tmp_path / KEY.key16
    (folder / "vllm").mkdir(parents=True)
    (folder / "vllm" / "half-written").write_text("x")

    lease = acquire(tmp_path, KEY)

    assert lease.found is Found.INCOMPLETE and lease.folder == folder
    assert list(folder.iterdir()) == []
    lease.release()


def test_a_marker_for_another_key_is_not_complete(tmp_path: Path) -> None:
    other = KEY.model_copy(update={"device": "gpu"})
    folder = tmp_path / KEY.key16
    folder.mkdir()
    (folder / COMPLETE_MARKER).write_text(json.dumps({"key": other.model_dump(), "completed_at": 1.0}))
    lease = acquire(tmp_path, KEY)
    assert lease.found is Found.INCOMPLETE
    lease.release()


def test_a_start_that_failed_on_a_complete_folder_retries_once_without_it(tmp_path: Path) -> None:
    first = acquire(tmp_path, KEY)
    (first.folder / "vllm").mkdir()
    (first.folder / "vllm" / "artefact").write_text("broken")
    first.complete()

    cache = KeptCompileCache.open(tmp_path, KEY, {}, on_gpu=False)
    assert cache.found is Found.COMPLETE
    assert cache.retry_fresh()
    assert cache.found is Found.INCOMPLETE and not (cache.lease.folder / "vllm" / "artefact").exists()
    assert not cache.retry_fresh()  # once
    cache.lease.complete()


def test_the_engine_env_points_at_the_folder_and_the_users_values_win(tmp_path: Path) -> None:
    env = cache_env(tmp_path, {"TRITON_CACHE_DIR": "/mine"}, on_gpu=False)
    assert env == {
        "VLLM_CACHE_ROOT": str(tmp_path / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
        "VLLM_USE_AOT_COMPILE": "0",  # vLLM 0.32's AOT load always fails on the CPU (compile_cache's docstring)
    }
    assert "VLLM_USE_AOT_COMPILE" not in cache_env(tmp_path, {}, on_gpu=True)
    assert "VLLM_USE_AOT_COMPILE" not in cache_env(tmp_path, {"VLLM_USE_AOT_COMPILE": "1"}, on_gpu=False)

    cache = KeptCompileCache.open(tmp_path / "root", KEY, {"VLLM_CACHE_ROOT": "/mine"}, on_gpu=True)
    assert "VLLM_CACHE_ROOT" not in cache.env()  # still the user's after a retry
    cache.lease.release()
