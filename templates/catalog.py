"""Load template-version documents from YAML files (the built-in catalog or user files)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

from templates.registry import VersionRegistry
from templates.schema import ModelTemplateVersion, TemplateValidationError, parse_version

CATALOG_DIR = Path(__file__).resolve().parent / "catalog"


def load_file(path: Path) -> ModelTemplateVersion:
    """Parse one YAML file into a validated version; errors name the file and the field."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateValidationError([("", f"cannot read: {exc}")], str(path)) from None
    except yaml.YAMLError as exc:
        raise TemplateValidationError([("", f"not valid YAML: {exc}")], str(path)) from None
    return parse_version(document, source=str(path))


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
