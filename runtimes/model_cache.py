"""A version's weights on the model-cache volume, filled once from its source (docs/cold-start.md).

Layout under the cache root (the `model-cache` volume, /mnt/model-cache in a pod):

    models/<template>/<version>-<hash16>/           the weights, and last the marker .stokehold-cache.json
    models/<template>/.<version>-<hash16>.lock      flock: concurrent fillers (the Job, replicas) download once
    models/<template>/.partial-<uuid>/              staging: downloaded here, renamed into place when complete

The download is KServe's own storage library (`kserve_storage.Storage.download`, what KServe's
storage initializer runs), so every source KServe accepts works here. A folder is complete
only when it holds the marker with the version's content hash: the marker is written inside
the staging folder after every file, then the folder is renamed into place, so no reader
ever sees half a model. A folder without a valid marker (a filler killed mid-way, before
the rename existed) is moved aside and filled again.

    python -m runtimes cache-fill --source S --dest D --content-hash H --template T --version V
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from events.types import EventKind, LoadStatus, VersionLoadStatus
from runtimes.engine_args import MODEL_CACHE_MARKER
from runtimes.status import StatusBus

logger = logging.getLogger("stokehold.runtime")

DEFAULT_CACHE_ROOT = Path("/mnt/model-cache")
MODELS_DIR = "models"
HASH_CHARS = 16
STAGING_PREFIX = ".partial-"
MAX_REASON_CHARS = 1000
_TEMPLATE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HASH = re.compile(r"^(sha256:)?(?P<hex>[0-9a-f]{16,64})$")


class CacheRefused(ValueError):
    """Bad arguments: a destination outside the cache, a malformed hash or name. Nothing was touched."""


class CacheFillError(RuntimeError):
    """The download failed; nothing was left in the cache but the staging folder, removed."""


class CacheMarker(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    source: str
    content_hash: str
    bytes: int
    files: int
    seconds: float


@dataclass(frozen=True)
class FillResult:
    path: Path
    downloaded: bool  # False: the marker was there with the same content hash, nothing was fetched
    bytes: int
    files: int
    seconds: float  # the download's, or the first filler's (from its marker) when nothing was downloaded


def hash16(content_hash: str) -> str:
    match = _HASH.match(content_hash.strip())
    if match is None:
        raise CacheRefused(f"content hash {content_hash!r} is not a sha256 hex digest (sha256:<hex>)")
    return match["hex"][:HASH_CHARS]


def cached_dir(cache_root: Path, template: str, version: int, content_hash: str) -> Path:
    """Where a version's weights live on the volume: <root>/models/<template>/<version>-<hash16>."""
    if not _TEMPLATE.match(template):
        raise CacheRefused(f"template name {template!r} is not a DNS label")
    if version < 0:
        raise CacheRefused(f"version {version} is negative")
    return cache_root / MODELS_DIR / template / f"{version}-{hash16(content_hash)}"


def check_dest(dest: Path, template: str, version: int, content_hash: str, cache_root: Path | None = None) -> Path:
    """The destination, absolute, if it is exactly the version's folder inside the cache; else CacheRefused.

    Without `cache_root` the root is the folder above `models/` in `dest` (the rendered `--model`)."""
    if ".." in dest.parts:
        raise CacheRefused(f"destination {dest} leaves the model cache ('..')")
    dest = Path(os.path.abspath(dest))
    root = Path(os.path.abspath(cache_root)) if cache_root is not None else dest.parents[2] if len(dest.parents) >= 3 else dest
    expected = cached_dir(root, template, version, content_hash)
    if dest != expected:
        raise CacheRefused(f"destination {dest} is not this version's cache folder {expected}")
    if not dest.resolve().is_relative_to(root.resolve()):  # a symlinked template folder pointing elsewhere
        raise CacheRefused(f"destination {dest} leaves the model cache {root} (through a link)")
    return dest


def read_marker(folder: Path) -> CacheMarker | None:
    try:
        return CacheMarker.model_validate_json((folder / MODEL_CACHE_MARKER).read_bytes())
    except (OSError, ValidationError):
        return None


def is_cached(folder: Path, content_hash: str) -> bool:
    marker = read_marker(folder)
    return marker is not None and marker.content_hash == content_hash


def _tree_size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and p.name != MODEL_CACHE_MARKER]
    return sum(p.stat().st_size for p in files), len(files)


def _materialize_links(folder: Path) -> None:
    """kserve_storage links a local source's files instead of copying them: the cache keeps real copies,
    since the source (an image's folder, another mount) is not there for the next pod."""
    for path in list(folder.iterdir()):
        if path.is_symlink():
            target = path.resolve()
            path.unlink()
            if target.is_dir():
                shutil.copytree(target, path, symlinks=False)
            else:
                shutil.copy2(target, path)


def _write_marker(folder: Path, marker: CacheMarker) -> None:
    tmp = folder / f"{MODEL_CACHE_MARKER}.tmp"
    with tmp.open("w") as out:
        out.write(marker.model_dump_json())
        out.flush()
        os.fsync(out.fileno())
    os.rename(tmp, folder / MODEL_CACHE_MARKER)


def _move_aside(folder: Path) -> None:
    """Out of the way at once (one rename), then removed; a removal that fails leaves only a staging folder."""
    aside = folder.with_name(f"{STAGING_PREFIX}{uuid.uuid4().hex}")
    os.rename(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel if the holder dies
        yield
    finally:
        os.close(fd)


def _download(source: str, staging: Path) -> None:
    from kserve_storage import Storage

    try:
        Storage.download(source, str(staging))
    except Exception as exc:  # the library raises bare Exceptions: name the source, keep its message
        raise CacheFillError(f"download of {source} failed: {type(exc).__name__}: {exc}") from exc
    if not any(staging.iterdir()):
        raise CacheFillError(f"download of {source} gave no files")
    _materialize_links(staging)


def fill(
    source: str,
    dest: Path,
    *,
    content_hash: str,
    template: str,
    version: int,
    cache_root: Path | None = None,
    on_download: Callable[[], None] | None = None,
) -> FillResult:
    """Make `dest` hold the version's weights from `source`; download only if no complete copy is there.

    `on_download` runs once this filler holds the lock and is about to download (DOWNLOADING)."""
    dest = check_dest(dest, template, version, content_hash, cache_root)
    if (marker := read_marker(dest)) is not None and marker.content_hash == content_hash:
        return FillResult(dest, False, marker.bytes, marker.files, marker.seconds)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest.parent / f".{dest.name}.lock"):
        if (marker := read_marker(dest)) is not None and marker.content_hash == content_hash:
            return FillResult(dest, False, marker.bytes, marker.files, marker.seconds)  # another filler finished first
        if dest.exists():
            logger.warning("model cache %s has no complete marker: filling it again", dest)
            _move_aside(dest)
        if on_download is not None:
            on_download()
        staging = dest.with_name(f"{STAGING_PREFIX}{uuid.uuid4().hex}")
        started = time.monotonic()
        try:
            _download(source, staging)
            size, files = _tree_size(staging)
            seconds = round(time.monotonic() - started, 3)
            _write_marker(staging, CacheMarker(source=source, content_hash=content_hash, bytes=size, files=files, seconds=seconds))
            os.rename(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone after the rename; what is left of a failure otherwise
    logger.info("model cache %s filled from %s: %d files, %d bytes in %.1f s", dest, source, files, size, seconds)
    return FillResult(dest, True, size, files, seconds)


def _capped(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"


async def fill_reporting(
    source: str,
    dest: Path,
    *,
    content_hash: str,
    template: str,
    version: int,
    bus: StatusBus,
    cache_root: Path | None = None,
) -> FillResult:
    """`fill` with its VersionLoadStatus on the bus: DOWNLOADING → CACHED (bytes, seconds, folder) | FAILED (reason)."""
    loop = asyncio.get_running_loop()

    def status(state: LoadStatus, **fields: object) -> VersionLoadStatus:
        return VersionLoadStatus(template=template, version=version, content_hash=content_hash, status=state, **fields)

    def downloading() -> None:  # runs in the filling thread
        asyncio.run_coroutine_threadsafe(
            bus.publish(template, EventKind.VERSION_LOAD_STATUS, status(LoadStatus.DOWNLOADING, cache=str(dest))), loop
        ).result()

    try:
        result = await asyncio.to_thread(
            fill,
            source,
            dest,
            content_hash=content_hash,
            template=template,
            version=version,
            cache_root=cache_root,
            on_download=downloading,
        )
    except (CacheRefused, CacheFillError, OSError) as exc:
        reason = _capped(str(exc) if not isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}")
        await bus.publish(template, EventKind.VERSION_LOAD_STATUS, status(LoadStatus.FAILED, reason=reason, cache=str(dest)))
        raise
    await bus.publish(
        template,
        EventKind.VERSION_LOAD_STATUS,
        status(LoadStatus.CACHED, cache=str(result.path), bytes=result.bytes, seconds=result.seconds),
    )
    return result


def fill_with_status(
    source: str, dest: Path, *, content_hash: str, template: str, version: int, env: Mapping[str, str], cache_root: Path | None = None
) -> FillResult:
    """`fill_reporting` on the bus the environment names (none: no status), from synchronous code."""

    async def run() -> FillResult:
        async with StatusBus.from_env(env) as bus:
            return await fill_reporting(
                source, dest, content_hash=content_hash, template=template, version=version, bus=bus, cache_root=cache_root
            )

    return asyncio.run(run())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source", required=True, help="where the weights are (s3://, gs://, hf://, a local path: what kserve-storage reads)"
    )
    parser.add_argument("--dest", required=True, type=Path, help="the version's folder: <cache root>/models/<template>/<version>-<hash16>")
    parser.add_argument("--content-hash", required=True, help="the version's content hash (sha256:<hex>)")
    parser.add_argument("--template", required=True)
    parser.add_argument("--version", required=True, type=int)
    parser.add_argument("--cache-root", type=Path, default=None, help="the volume's mount (default: the folder above models/ in --dest)")


def run_cache_fill(options: argparse.Namespace, env: Mapping[str, str]) -> int:
    """The pre-download Job's command. 0: cached (now or already), 1: the download failed, 2: refused."""
    try:
        result = fill_with_status(
            options.source,
            options.dest,
            content_hash=options.content_hash,
            template=options.template,
            version=options.version,
            env=env,
            cache_root=options.cache_root,
        )
    except CacheRefused as exc:
        print(f"stokehold cache-fill: refused: {exc}", file=sys.stderr)
        return 2
    except (CacheFillError, OSError) as exc:
        print(f"stokehold cache-fill: error: {exc}", file=sys.stderr)
        return 1
    what = "downloaded" if result.downloaded else "already cached, nothing downloaded"
    print(json.dumps({"path": str(result.path), "downloaded": result.downloaded, "bytes": result.bytes, "files": result.files}), flush=True)
    logger.info("%s: %s", result.path, what)
    return 0


def cli_main(argv: Sequence[str], env: Mapping[str, str]) -> int:
    parser = argparse.ArgumentParser(prog="stokehold runtime cache-fill", description="Fill a version's model cache folder once.")
    add_arguments(parser)
    return run_cache_fill(parser.parse_args(list(argv)), env)
