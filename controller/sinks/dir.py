"""The GitOps sink: one deterministic YAML file per InferenceService, `<dir>/<namespace>/<name>.yaml`.

Files have sorted keys and are replaced atomically (temporary file in the same
directory, fsync, rename), so a reader — or `git add` — never sees half a file. A
file whose content hash matches is left alone; a file that is not labelled as managed
by stokehold (or cannot be read as one) is never overwritten or removed.

The directory is shared with people and tools, so nothing in it is trusted:

- only regular files are read, never through a symbolic link, and at most
  `MAX_FILE_BYTES`; a file that is not UTF-8 YAML holding a mapping (binary junk, a
  5,000-digit number, 20,000 nested `[`) is skipped and reported (a warning and the
  `stokehold_controller_sink_unreadable_files` gauge), never a crash;
- an I/O error (EACCES, EPERM, EROFS, ENOSPC, a file where a directory should be…) is
  transient: the write is retried until the directory is usable again;
- the temporary files of writes cut short (SIGKILL between create and rename) carry a
  name the sink recognises, `.<name>.yaml.<random>.tmp`, and its first listing removes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml

from controller.labels import Object, content_hash_of, is_managed
from controller.metrics import ControllerMetrics
from controller.sinks.base import ApplyAction, NotManagedError, PermanentSinkError, SinkError, TransientSinkError
from templates.naming import is_dns1123_label

log = logging.getLogger(__name__)

SUFFIX = ".yaml"
TEMP_SUFFIX = ".tmp"
MAX_FILE_BYTES = 1024 * 1024  # a rendered InferenceService is a few KiB
# mkstemp(prefix=".<name>.yaml.", suffix=".tmp"): what `_write` leaves behind when killed before its rename
TEMP_NAME = re.compile(r"\.[a-z0-9]([-a-z0-9]*[a-z0-9])?\.yaml\.[A-Za-z0-9_]+\.tmp")


def to_yaml(obj: Object) -> str:
    return yaml.safe_dump(obj, sort_keys=True, default_flow_style=False, allow_unicode=True, width=1_000_000)


class DirSink:
    def __init__(
        self, root: Path, namespaces: Iterable[str] | None = None, *, fsync: bool = True, metrics: ControllerMetrics | None = None
    ) -> None:
        self.root = Path(root)
        self.namespaces = frozenset(namespaces) if namespaces else None
        self.fsync = fsync
        self.metrics = metrics
        self.skipped: dict[Path, str] = {}  # files the last listing could not read, and why
        self.removed_temporaries = 0
        self._swept = False

    def path_of(self, namespace: str, name: str) -> Path:
        for part, what in ((namespace, "namespace"), (name, "name")):
            if not is_dns1123_label(part):  # never let a name walk out of the directory
                raise PermanentSinkError(f"{what} {part!r} is not a valid Kubernetes name")
        if self.namespaces is not None and namespace not in self.namespaces:
            raise PermanentSinkError(f"namespace {namespace!r} is not one this sink covers")
        return self.root / namespace / f"{name}{SUFFIX}"

    async def apply(self, isvc: Object) -> ApplyAction:
        if not is_managed(isvc):
            raise PermanentSinkError("refusing to write an object that is not labelled as managed by stokehold")
        metadata = isvc.get("metadata") or {}
        path = self.path_of(str(metadata.get("namespace", "")), str(metadata.get("name", "")))
        return await asyncio.to_thread(self._apply, path, isvc)

    def _apply(self, path: Path, isvc: Object) -> ApplyAction:
        existing = self._read(path)
        if existing is not None:
            if not is_managed(existing):
                raise NotManagedError(f"{path} exists and is not managed by stokehold")
            if content_hash_of(existing) == content_hash_of(isvc):
                return ApplyAction.UNCHANGED
        self._write(path, to_yaml(isvc))
        return ApplyAction.CREATED if existing is None else ApplyAction.UPDATED

    async def delete(self, namespace: str, name: str) -> bool:
        path = self.path_of(namespace, name)
        return await asyncio.to_thread(self._delete, path)

    def _delete(self, path: Path) -> bool:
        existing = self._read(path)
        if existing is None:
            return False
        if not is_managed(existing):
            raise NotManagedError(f"{path} is not managed by stokehold")
        with _errors(path):
            path.unlink(missing_ok=True)
        return True

    async def get(self, namespace: str, name: str) -> Object | None:
        path = self.path_of(namespace, name)
        return await asyncio.to_thread(self._read, path)

    async def list_managed(self) -> list[Object]:
        return await asyncio.to_thread(self._list_managed)

    def _list_managed(self) -> list[Object]:
        """Every managed object; unreadable files are skipped and reported, stale temporary files removed (first listing)."""
        if not self.root.is_dir():
            return []
        found: list[Object] = []
        skipped: dict[Path, str] = {}
        with _errors(self.root):
            directories = sorted(self.root.iterdir())
        for directory in directories:
            if self.namespaces is not None and directory.name not in self.namespaces:
                continue
            if directory.is_symlink():
                skipped[directory] = f"{directory} is a symbolic link: not followed"
                continue
            if not directory.is_dir():
                continue  # e.g. a README next to the namespace directories
            try:
                entries = sorted(directory.iterdir())
            except OSError as exc:
                skipped[directory] = f"{directory}: {exc.strerror or exc}"
                continue
            for path in entries:
                if TEMP_NAME.fullmatch(path.name):
                    self._remove_stale(path)
                    continue
                if not path.name.endswith(SUFFIX):
                    continue
                try:
                    obj = self._read(path)
                except SinkError as exc:
                    skipped[path] = str(exc)
                    continue
                if obj is not None and is_managed(obj):
                    found.append(obj)
        self._swept = True
        self._report(skipped)
        return found

    def _remove_stale(self, path: Path) -> None:
        """A temporary file of a write that never finished: only before this sink's first write can none be its own."""
        if self._swept:
            return
        with contextlib.suppress(OSError):
            path.unlink()
            self.removed_temporaries += 1
            log.info("removed a temporary file left by an interrupted write", extra={"path": str(path)})

    def _report(self, skipped: dict[Path, str]) -> None:
        for path, reason in skipped.items():
            if self.skipped.get(path) != reason:  # once per file and reason, not at every resync
                log.warning("skipped a file of the GitOps directory: %s", reason, extra={"path": str(path)})
        self.skipped = skipped
        if self.metrics is not None:
            self.metrics.unreadable_files.set(len(skipped))

    async def close(self) -> None:
        return None

    def _read(self, path: Path) -> Object | None:
        """The object in `path`, None when there is no file; `NotManagedError` for anything that is not one of ours."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _sink_error(path, exc) from None
        if stat.S_ISLNK(info.st_mode):
            raise NotManagedError(f"{path} is a symbolic link: not followed")
        if not stat.S_ISREG(info.st_mode):
            raise NotManagedError(f"{path} is not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise NotManagedError(f"{path} is {info.st_size} bytes, more than an InferenceService written by stokehold")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _sink_error(path, exc) from None
        try:
            obj = yaml.safe_load(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise NotManagedError(f"{path} is not UTF-8 text") from None
        # PyYAML raises more than YAMLError on hostile input: ValueError for a number over Python's
        # digit limit, RecursionError for deep nesting
        except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError, MemoryError):
            raise NotManagedError(f"{path} is not a YAML document stokehold can read") from None
        if not isinstance(obj, dict):
            raise NotManagedError(f"{path} is not a YAML object written by stokehold")
        return obj

    def _write(self, path: Path, text: str) -> None:
        if path.parent.is_symlink():
            raise NotManagedError(f"{path.parent} is a symbolic link: not followed")
        with _errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(text)
                    if self.fsync:
                        handle.flush()
                        os.fsync(handle.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise


def _sink_error(path: Path, exc: OSError) -> TransientSinkError:
    """Every I/O error is transient: permissions, a read-only or full file system, a file where a
    directory should be are all repaired by someone, and the write must happen then."""
    return TransientSinkError(f"{path}: {exc.strerror or exc}")


@contextlib.contextmanager
def _errors(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise _sink_error(path, exc) from None
