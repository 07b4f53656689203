"""In-memory registry of template versions that enforces immutability (pure, no I/O)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from templates.schema import ModelTemplateVersion


class ImmutableVersionError(ValueError):
    """A version number was republished with different content."""


class AddOutcome(enum.Enum):
    NEW = "new"
    IDENTICAL = "identical"


@dataclass
class VersionRegistry:
    _versions: dict[str, dict[int, ModelTemplateVersion]] = field(default_factory=dict)

    def add(self, version: ModelTemplateVersion) -> AddOutcome:
        by_number = self._versions.setdefault(version.name, {})
        existing = by_number.get(version.version)
        if existing is not None:
            if existing.content_hash == version.content_hash:
                return AddOutcome.IDENTICAL
            raise ImmutableVersionError(
                f"{version.ref} already exists with content {existing.content_hash}; "
                f"versions are immutable, publish version {self.next_number(version.name)} instead"
            )
        by_number[version.version] = version
        return AddOutcome.NEW

    def remove(self, name: str, number: int) -> ModelTemplateVersion | None:
        removed = self._versions.get(name, {}).pop(number, None)
        if name in self._versions and not self._versions[name]:
            del self._versions[name]
        return removed

    def get(self, name: str, number: int | None = None) -> ModelTemplateVersion | None:
        by_number = self._versions.get(name)
        if not by_number:
            return None
        if number is None:
            return by_number[max(by_number)]
        return by_number.get(number)

    def latest(self, name: str) -> ModelTemplateVersion | None:
        return self.get(name)

    def next_number(self, name: str) -> int:
        by_number = self._versions.get(name)
        return max(by_number) + 1 if by_number else 1

    def names(self) -> list[str]:
        return sorted(self._versions)

    def versions(self, name: str) -> list[ModelTemplateVersion]:
        return [v for _, v in sorted(self._versions.get(name, {}).items())]

    def __len__(self) -> int:
        return sum(len(v) for v in self._versions.values())
