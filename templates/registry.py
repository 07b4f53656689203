"""In-memory registry of template versions that enforces immutability (pure, no I/O)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from templates.schema import VERSION_MAX, ModelTemplateVersion, canonical_json


class ImmutableVersionError(ValueError):
    """A version number was republished with different content."""


def next_version_hint(name: str, number: int) -> str:
    """What to publish instead of a number that is taken: `number`, unless it is past the cap."""
    if number > VERSION_MAX:
        return f"and {name} has used every version number up to {VERSION_MAX}: publish under a new template name"
    return f"publish version {number} instead"


class AddOutcome(enum.Enum):
    NEW = "new"
    IDENTICAL = "identical"


@dataclass
class VersionRegistry:
    """Every published version of every template, by name and number.

    The latest version of each template is kept as a model: every render of a deployment that
    follows the latest reads it. Every version is also kept as its canonical JSON (what the content
    hash hashes), and an older one is validated from it again when asked for (a deployment pinned
    to it). JSON takes a sixth of a model's memory and gives the garbage collector nothing to
    trace: 100,000 versions of 1,000 templates, as a restarted controller holds them, need about
    150 MB instead of about 900 MB as models (bench/controller.py, restart at fleet scale).
    """

    _documents: dict[str, dict[int, bytes]] = field(default_factory=dict)  # template → number → canonical JSON
    _latest: dict[str, ModelTemplateVersion] = field(default_factory=dict)  # template → its highest number

    def add(self, version: ModelTemplateVersion) -> AddOutcome:
        by_number = self._documents.setdefault(version.name, {})
        document = canonical_json(version)
        existing = by_number.get(version.version)
        if existing is not None:
            if existing == document:
                return AddOutcome.IDENTICAL
            raise ImmutableVersionError(
                f"{version.ref} already exists with content {_read(existing).content_hash}; "
                f"versions are immutable, {next_version_hint(version.name, self.next_number(version.name))}"
            )
        by_number[version.version] = document
        latest = self._latest.get(version.name)
        if latest is None or version.version > latest.version:
            self._latest[version.name] = version
        return AddOutcome.NEW

    def remove(self, name: str, number: int) -> ModelTemplateVersion | None:
        by_number = self._documents.get(name, {})
        if number not in by_number:
            return None
        removed = self.get(name, number)
        del by_number[number]
        if not by_number:
            del self._documents[name]
            del self._latest[name]
        elif self._latest[name].version == number:
            self._latest[name] = _read(by_number[max(by_number)])
        return removed

    def get(self, name: str, number: int | None = None) -> ModelTemplateVersion | None:
        latest = self._latest.get(name)
        if latest is None or number is None or number == latest.version:
            return latest
        document = self._documents[name].get(number)
        return None if document is None else _read(document)

    def latest(self, name: str) -> ModelTemplateVersion | None:
        return self._latest.get(name)

    def numbers(self, name: str) -> list[int]:
        return sorted(self._documents.get(name, ()))

    def next_number(self, name: str) -> int:
        by_number = self._documents.get(name)
        return max(by_number) + 1 if by_number else 1

    def names(self) -> list[str]:
        return sorted(self._documents)

    def versions(self, name: str) -> list[ModelTemplateVersion]:
        found = (self.get(name, number) for number in self.numbers(name))
        return [version for version in found if version is not None]

    def __len__(self) -> int:
        return sum(len(by_number) for by_number in self._documents.values())


def _read(document: bytes) -> ModelTemplateVersion:
    return ModelTemplateVersion.model_validate_json(document)
