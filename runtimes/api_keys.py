"""The API keys a runtime accepts: one fixed key, or a key file from a mounted Secret, re-read when it changes.

The controller mounts the Secret that a template names as a volume and points `STOKEHOLD_API_KEY_FILE`
at the key's file. When the Secret is updated, the kubelet replaces the mounted file in place (an
atomic symlink swap, within about a minute), so the new key takes effect here on the next request,
without a restart. The file holds one key per line: during a rotation it can hold the old and the new
key, so that clients move over before the old key is removed.

A file that disappears, cannot be read or holds no key accepts nothing (fail closed).
"""

from __future__ import annotations

import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("stokehold.runtime")

MAX_KEY_FILE_BYTES = 64 * 1024


class ApiKeyFileError(ValueError):
    """The key file cannot be used at start (missing, unreadable, too large or empty)."""


def parse_keys(text: str) -> tuple[bytes, ...]:
    """The keys in a key file: one per line; surrounding whitespace and blank lines are ignored."""
    return tuple(line.strip().encode("utf-8") for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class _Snapshot:
    identity: tuple[int, int, int, int] | None  # (device, inode, size, mtime) of the file read
    keys: tuple[bytes, ...]
    problem: str | None = None


def _identity(status: os.stat_result) -> tuple[int, int, int, int]:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def _read(path: Path) -> _Snapshot:
    try:
        with path.open("rb") as handle:
            identity = _identity(os.fstat(handle.fileno()))
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        return _Snapshot(None, (), f"cannot be read ({exc.strerror or type(exc).__name__})")
    if len(data) > MAX_KEY_FILE_BYTES:
        return _Snapshot(identity, (), f"is larger than {MAX_KEY_FILE_BYTES} bytes")
    keys = parse_keys(data.decode("utf-8", errors="replace"))
    return _Snapshot(identity, keys, None if keys else "holds no key")


class ApiKeys:
    """`matches(token)`: whether `token` is one of the accepted keys."""

    def __init__(self, snapshot: _Snapshot, path: Path | None) -> None:
        self._snapshot = snapshot
        self._path = path

    @classmethod
    def fixed(cls, key: str) -> ApiKeys:
        return cls(_Snapshot(None, (key.encode("utf-8"),)), None)

    @classmethod
    def from_file(cls, path: Path) -> ApiKeys:
        """Keys from a file that holds at least one key now; raises `ApiKeyFileError` otherwise."""
        snapshot = _read(path)
        if snapshot.problem:
            raise ApiKeyFileError(f"API key file {path} {snapshot.problem}")
        return cls(snapshot, path)

    @property
    def count(self) -> int:
        return len(self._current().keys)

    def matches(self, token: bytes) -> bool:
        # every key is compared, so the time taken does not tell which one matched
        found = False
        for key in self._current().keys:
            found |= hmac.compare_digest(token, key)
        return found

    def _current(self) -> _Snapshot:
        if self._path is None:
            return self._snapshot
        try:
            identity: tuple[int, int, int, int] | None = _identity(os.stat(self._path))  # follows the swapped symlink
        except OSError:
            identity = None
        if identity is not None and identity == self._snapshot.identity:
            return self._snapshot
        previous, self._snapshot = self._snapshot, _read(self._path)
        if self._snapshot.problem and self._snapshot.problem != previous.problem:
            logger.error("API key file %s %s: every request is refused until it is fixed", self._path, self._snapshot.problem)
        elif not self._snapshot.problem and self._snapshot.keys != previous.keys:
            logger.info("API key file %s changed: %d key(s) accepted", self._path, len(self._snapshot.keys))
        return self._snapshot


def load_api_keys(key: str | None, path: Path | None) -> ApiKeys | None:
    """The keys the settings name (`STOKEHOLD_API_KEY` or `STOKEHOLD_API_KEY_FILE`); None: no key needed."""
    if path is not None:
        return ApiKeys.from_file(path)
    return ApiKeys.fixed(key) if key else None
