"""The GitOps sink: one deterministic YAML file per InferenceService, `<dir>/<namespace>/<name>.yaml`.

Files have sorted keys and are replaced atomically (temporary file in the same
directory, fsync, rename), so a reader — or `git add` — never sees half a file. A
file whose content hash matches is left alone; a file that is not labelled as managed
by stokehold (or cannot be read as one) is never overwritten or removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml

from controller.sinks.base import (
    ApplyAction,
    NotManagedError,
    Object,
    PermanentSinkError,
    TransientSinkError,
    content_hash_of,
    is_managed,
)
from templates.naming import is_dns1123_label

SUFFIX = ".yaml"


def to_yaml(obj: Object) -> str:
    return yaml.safe_dump(obj, sort_keys=True, default_flow_style=False, allow_unicode=True, width=1_000_000)


class DirSink:
    def __init__(self, root: Path, namespaces: Iterable[str] | None = None, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.namespaces = frozenset(namespaces) if namespaces else None
        self.fsync = fsync

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
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.glob(f"*/*{SUFFIX}")):
            namespace = path.parent.name
            if self.namespaces is not None and namespace not in self.namespaces:
                continue
            try:
                obj = self._read(path)
            except NotManagedError:
                continue
            if obj is not None and is_managed(obj):
                found.append(obj)
        return found

    async def close(self) -> None:
        return None

    def _read(self, path: Path) -> Object | None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _sink_error(path, exc) from None
        try:
            obj = yaml.safe_load(text)
        except yaml.YAMLError:
            obj = None
        if not isinstance(obj, dict):
            raise NotManagedError(f"{path} is not a YAML object written by stokehold")
        return obj

    def _write(self, path: Path, text: str) -> None:
        with _errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def _sink_error(path: Path, exc: OSError) -> PermanentSinkError | TransientSinkError:
    if isinstance(exc, PermissionError | IsADirectoryError | NotADirectoryError):
        return PermanentSinkError(f"{path}: {exc}")
    return TransientSinkError(f"{path}: {exc}")  # e.g. disk full, I/O error: may pass


@contextlib.contextmanager
def _errors(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise _sink_error(path, exc) from None
