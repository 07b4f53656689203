"""vLLM's compile artefacts kept on the model-cache volume, one folder per key (docs/cold-start.md).

    <STOKEHOLD_COMPILE_CACHE>/<key16>/              vllm/ (VLLM_CACHE_ROOT), inductor/, triton/, then the marker
    <STOKEHOLD_COMPILE_CACHE>/.<key16>.lock         flock held by the replica that compiles

key16: the first 16 hex characters of the sha256 of {content_hash, vllm_version, device, tensor_parallel,
pipeline_parallel}, what invalidates compiled code. A folder counts as complete only once it holds the
marker, written after the engine that filled it became ready. So:

- complete: every replica uses it (vLLM loads its AOT artefact, inductor its graph cache);
- missing: the first replica takes the lock and compiles into it; replicas starting meanwhile wait for
  the lock (up to `wait_s`), then find it complete; one that waits longer compiles into a private
  folder instead (never a second writer in the shared one);
- incomplete (a start that died while compiling, or one whose engine failed on it): moved aside under
  the lock and compiled again. An engine that fails to start on a complete folder moves it aside
  too, and the launcher retries once without it: a stale or corrupt cache never fails the start.

On the CPU, vLLM 0.32 compiles in DYNAMO_TRACE_ONCE mode with torch's stock inductor backend, and
its AOT loader then always fails ("'function' object has no attribute 'finalize_loading'": only its
own VllmBackend's artefacts have it) and compiles again. `cache_env` therefore turns vLLM's AOT
compile off on the CPU (unless set), so the kept inductor/AOTAutograd caches are what is reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

logger = logging.getLogger("stokehold.runtime")

COMPLETE_MARKER = ".stokehold-compiled.json"
KEY_CHARS = 16
DEFAULT_WAIT_S = 900.0
ASIDE_PREFIX = ".stale-"
# each variable → its folder inside the key's folder; a value the user set wins
CACHE_DIRS = {"VLLM_CACHE_ROOT": "vllm", "TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton"}
ENV_AOT_COMPILE = "VLLM_USE_AOT_COMPILE"


class CompileKey(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    content_hash: str
    vllm_version: str
    device: str  # the GPU's name, or "cpu"
    tensor_parallel: int
    pipeline_parallel: int

    def digest(self) -> str:
        canonical = json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def key16(self) -> str:
        return self.digest()[:KEY_CHARS]


class Found(StrEnum):
    COMPLETE = "complete"  # the marker was there: reuse
    MISSING = "missing"  # no folder: compile
    INCOMPLETE = "incomplete"  # a folder without the marker (or one a failed start used): moved aside, compile
    PRIVATE = "private"  # the lock holder took too long: compile into a private folder, keep nothing


def cache_env(folder: Path, env: Mapping[str, str], on_gpu: bool) -> dict[str, str]:
    """The variables that point vLLM, inductor and Triton at `folder` (those the user set are left out)."""
    out = {name: str(folder / sub) for name, sub in CACHE_DIRS.items() if name not in env}
    if not on_gpu and ENV_AOT_COMPILE not in env:
        out[ENV_AOT_COMPILE] = "0"  # see the module's docstring
    return out


class CompileMarker(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    key: CompileKey
    completed_at: float


def read_marker(folder: Path) -> CompileMarker | None:
    try:
        return CompileMarker.model_validate_json((folder / COMPLETE_MARKER).read_bytes())
    except (OSError, ValidationError):
        return None


def _complete(folder: Path, key: CompileKey) -> bool:
    marker = read_marker(folder)
    return marker is not None and marker.key == key


def _holds_artefacts(folder: Path) -> bool:
    """A marker over an empty folder would make every later replica skip a compile that was never saved."""
    return folder.is_dir() and any(path.is_file() for path in folder.rglob("*"))


def move_aside(folder: Path) -> None:
    """One rename takes it out of use; the removal after it may fail without harm."""
    if not folder.exists():
        return
    aside = folder.with_name(f"{ASIDE_PREFIX}{folder.name}-{uuid.uuid4().hex[:8]}")
    os.rename(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


@dataclass
class CompileLease:
    """The folder this start uses, how it was found, and (while compiling into the shared folder) the lock."""

    folder: Path
    found: Found
    key: CompileKey
    lock_fd: int | None = None

    def complete(self) -> None:
        """The engine is ready: mark the folder complete (if this start filled it) and let waiting replicas in."""
        try:
            if self.found in (Found.MISSING, Found.INCOMPLETE) and self.lock_fd is not None:
                if not _holds_artefacts(self.folder):  # e.g. --enforce-eager, or an engine that wrote elsewhere
                    logger.info("nothing was compiled into %s: not marked complete", self.folder)
                    return
                tmp = self.folder / f"{COMPLETE_MARKER}.tmp"
                tmp.write_text(CompileMarker(key=self.key, completed_at=time.time()).model_dump_json())
                os.rename(tmp, self.folder / COMPLETE_MARKER)
        except OSError as exc:  # a volume that cannot take the marker: the next start compiles again
            logger.warning("compile cache %s not marked complete: %s", self.folder, exc)
        finally:
            self.release()

    def discard(self) -> None:
        """The engine failed on this folder: move it aside so no start uses it again."""
        try:
            if self.found is not Found.PRIVATE:
                move_aside(self.folder)
        except OSError as exc:
            logger.warning("compile cache %s could not be moved aside: %s", self.folder, exc)
        finally:
            self.release()

    def release(self) -> None:
        if self.lock_fd is not None:
            fd, self.lock_fd = self.lock_fd, None
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor drops the flock


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def acquire(
    root: Path,
    key: CompileKey,
    *,
    wait_s: float = DEFAULT_WAIT_S,
    poll_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    force_fresh: bool = False,
) -> CompileLease:
    """The folder for this start. `force_fresh`: the last start failed on the cache, compile anew."""
    folder = root / key.key16
    if not force_fresh and _complete(folder, key):
        return CompileLease(folder, Found.COMPLETE, key)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / f".{key.key16}.lock", os.O_RDWR | os.O_CREAT, 0o664)
    deadline = time.monotonic() + wait_s
    waited = False
    while not _try_lock(fd):
        if not waited:
            logger.info("another replica is compiling into %s: waiting up to %.0f s for it", folder, wait_s)
            waited = True
        if time.monotonic() >= deadline:
            os.close(fd)
            private = Path(tempfile.mkdtemp(prefix=f"stokehold-compile-{key.key16}-"))
            logger.warning("compile cache %s still locked after %.0f s: compiling into %s", folder, wait_s, private)
            return CompileLease(private, Found.PRIVATE, key)
        sleep(poll_s)
    try:
        if not force_fresh and _complete(folder, key):
            os.close(fd)
            return CompileLease(folder, Found.COMPLETE, key)  # the replica we waited for finished it
        found = Found.MISSING
        if folder.exists():
            logger.warning("compile cache %s is incomplete or failed a start: compiling again", folder)
            move_aside(folder)
            found = Found.INCOMPLETE
        folder.mkdir(parents=True)
    except BaseException:
        os.close(fd)
        raise
    return CompileLease(folder, found, key, lock_fd=fd)


def vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vllm")
    except PackageNotFoundError:
        import vllm

        return str(vllm.__version__)


def device_name(on_gpu: bool) -> str:
    if not on_gpu:
        return "cpu"
    from vllm.platforms import current_platform

    try:
        return str(current_platform.get_device_name(0))
    except Exception:  # a platform that cannot name its device: still a key, only coarser
        return str(current_platform.device_name)


@dataclass
class KeptCompileCache:
    """This start's use of the kept compile cache: the env for the engine, one fresh retry, the outcome."""

    root: Path
    key: CompileKey
    on_gpu: bool
    user_set: frozenset[str]  # variables the user set: never overridden
    lease: CompileLease
    wait_s: float = DEFAULT_WAIT_S
    retried: bool = False

    @classmethod
    def open(cls, root: Path, key: CompileKey, env: Mapping[str, str], on_gpu: bool, wait_s: float = DEFAULT_WAIT_S) -> KeptCompileCache:
        user_set = frozenset(name for name in (*CACHE_DIRS, ENV_AOT_COMPILE) if name in env)
        return cls(root, key, on_gpu, user_set, acquire(root, key, wait_s=wait_s), wait_s)

    def env(self) -> dict[str, str]:
        return cache_env(self.lease.folder, dict.fromkeys(self.user_set, ""), self.on_gpu)

    def retry_fresh(self) -> bool:
        """The engine failed on a complete folder: move it aside and compile anew (once). False: nothing to retry."""
        if self.retried or self.lease.found is not Found.COMPLETE:
            return False
        self.lease.discard()
        self.lease = acquire(self.root, self.key, wait_s=self.wait_s, force_fresh=True)
        self.retried = True
        return True

    @property
    def found(self) -> Found:
        return Found.INCOMPLETE if self.retried else self.lease.found
