"""Load template-version documents from YAML files (the built-in catalog or user files).

A file named on a command line may be anything: `read_template_text` reads regular files
only, never follows a symbolic link, stops at `MAX_FILE_BYTES`, and every way a file can be
unreadable or not YAML becomes a `TemplateValidationError` whose message never quotes the
file's content (a file that is not a template may hold secrets).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

import yaml

from templates.registry import VersionRegistry
from templates.schema import ModelTemplateVersion, TemplateValidationError, parse_version

CATALOG_DIR = Path(__file__).resolve().parent / "catalog"
MAX_FILE_BYTES = 1 << 20  # a template is a few KiB; the chat template, at most 64 KiB, is the largest part
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # O_NONBLOCK: opening a FIFO never waits


def _unreadable(path: Path, message: str) -> TemplateValidationError:
    return TemplateValidationError([("", message)], str(path))


def read_template_text(path: Path) -> str:
    """The text of a regular file; raises `TemplateValidationError` for anything else."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _unreadable(path, "is a symbolic link: not followed (name the file itself)") from None
        raise _unreadable(path, f"cannot open: {exc.strerror or type(exc).__name__}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO, socket or device)"
            raise _unreadable(path, f"is {kind}: only regular files are read")
        if info.st_size > MAX_FILE_BYTES:
            raise _unreadable(path, f"is larger than {MAX_FILE_BYTES // 1024} KiB: not a template file")
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise _unreadable(path, f"cannot read: {exc.strerror or type(exc).__name__}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise _unreadable(path, f"is larger than {MAX_FILE_BYTES // 1024} KiB: not a template file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _unreadable(path, "is not UTF-8 text") from None


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_TOKEN = re.compile(r"'(<[a-z ]+>|[\[\]{},:?-])'")


def _yaml_problem(exc: Exception) -> str:
    """Why a text is not YAML, without the snippet of the text that PyYAML's own message carries."""
    if isinstance(exc, RecursionError):
        return "not valid YAML: nested too deeply"
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        # PyYAML quotes what it found (an alias, a tag, a character): keep only its own token names
        problem = _QUOTED.sub(lambda m: m[0] if _TOKEN.fullmatch(m[0]) else "…", exc.problem or "")
        return f"not valid YAML{where}" + (f": {problem}" if problem else "")
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return "not valid YAML: a number has more digits than can be read"
    return "not valid YAML: a value cannot be read"


def load_text(text: str, source: str) -> ModelTemplateVersion:
    """Parse one YAML document into a validated version; errors name `source` and the field."""
    try:
        document = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise TemplateValidationError([("", _yaml_problem(exc))], source) from None
    return parse_version(document, source=source)


def load_file(path: Path) -> ModelTemplateVersion:
    """Parse one YAML file into a validated version; errors name the file and the field."""
    return load_text(read_template_text(path), str(path))


def catalog_files(directory: Path = CATALOG_DIR) -> list[Path]:
    return sorted(p for p in directory.glob("*.yaml") if p.is_file())


def load_catalog(directory: Path = CATALOG_DIR) -> list[ModelTemplateVersion]:
    return [load_file(p) for p in catalog_files(directory)]


def registry_of(versions: Iterable[ModelTemplateVersion]) -> VersionRegistry:
    registry = VersionRegistry()
    for version in versions:
        registry.add(version)
    return registry


def to_yaml(version: ModelTemplateVersion) -> str:
    return yaml.safe_dump(version.to_document(), sort_keys=False, allow_unicode=True)
