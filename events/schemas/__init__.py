"""JSON Schemas of every event's data, generated from the pydantic models.

`python -m events.schemas` (or `make schemas`) writes one file per event type, named after
the CloudEvents type, e.g. `dev.stokehold.deployment.requested.json`; `--check` only
reports drift (exit status 1). A test fails when the committed files differ from the models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from events.types import DATA_MODELS, EventKind

SCHEMA_DIR = Path(__file__).resolve().parent
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_BASE_URI = "https://stokehold.dev/schemas/events/"


def file_name(kind: EventKind) -> str:
    return f"{kind.ce_type}.json"


def schema_of(kind: EventKind) -> dict[str, Any]:
    """The schema of `kind`'s data, as validated on input (aliases such as `apiVersion` included)."""
    schema = DATA_MODELS[kind].model_json_schema(by_alias=True, mode="validation")
    header = {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_BASE_URI + file_name(kind),
        "title": schema.pop("title", kind.value),
        "description": f"Data of the CloudEvent type {kind.ce_type}. " + schema.pop("description", "").strip(),
    }
    header["description"] = header["description"].strip()
    return header | schema


def render(kind: EventKind) -> str:
    return json.dumps(schema_of(kind), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """File name → file content for every event type."""
    return {file_name(kind): render(kind) for kind in EventKind}


def drift(directory: Path = SCHEMA_DIR) -> list[str]:
    """File names whose committed content differs from the models (missing or stale), plus strays."""
    wanted = generate()
    stale = [name for name, text in wanted.items() if not (directory / name).is_file() or (directory / name).read_text("utf-8") != text]
    strays = [path.name for path in directory.glob("dev.stokehold.*.json") if path.name not in wanted]
    return sorted(stale + strays)


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    wanted = generate()
    for stray in directory.glob("dev.stokehold.*.json"):
        if stray.name not in wanted:
            stray.unlink()
    paths = []
    for name, text in wanted.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


__all__ = ["SCHEMA_DIR", "drift", "file_name", "generate", "schema_of", "write"]
