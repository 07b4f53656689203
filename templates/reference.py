"""The template-field reference (docs/template-fields.md), generated from the schema so that it cannot drift.

`stokehold templates fields > docs/template-fields.md` writes it; a test fails when the
committed file differs from what the schema gives. Pure: the JSON Schema in, Markdown out.
"""

from __future__ import annotations

import json
from typing import Any

from templates.schema import ModelTemplateVersion

HEADER = """# Template fields

Every field of a template version (`kind: ModelTemplateVersion`), generated from the schema
(`templates/schema.py`) by `stokehold templates fields > docs/template-fields.md`; a test fails
when this file and the schema disagree. Unknown fields are refused. `stokehold templates validate
FILE` checks a file against exactly these rules, plus the cross-field ones the schema's models
state (e.g. `min_replicas` ≤ `max_replicas`, `keep_hot` at most `1h`). Examples:
[`templates/catalog/`](../templates/catalog).
"""


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return schema["$defs"][ref.rsplit("/", 1)[1]] if isinstance(ref, str) else node


def _variants(schema: dict[str, Any], node: dict[str, Any]) -> list[dict[str, Any]]:
    """The non-null alternatives of a field (`X | None` is X, optional)."""
    options = node.get("anyOf") or [node]
    return [_resolve(schema, option) for option in options if option.get("type") != "null"]


def _type(schema: dict[str, Any], node: dict[str, Any]) -> str:
    parts = []
    for variant in _variants(schema, node):
        if "enum" in variant:
            parts.append(" \\| ".join(f"`{value}`" for value in variant["enum"]))
        elif variant.get("type") == "array":
            parts.append(f"list of {_type(schema, variant.get('items', {}))}")
        elif variant.get("type") == "object" and "properties" not in variant:
            values = variant.get("additionalProperties")
            parts.append(f"map of {_type(schema, values)}" if isinstance(values, dict) else "map")
        elif "properties" in variant:
            parts.append("object (below)")
        else:
            parts.append(str(variant.get("type", "any")))
    optional = any(option.get("type") == "null" for option in node.get("anyOf", []))
    return " or ".join(parts) + (" (or null)" if optional else "")


_BOUNDS = (
    ("minimum", "≥ {}"),
    ("exclusiveMinimum", "> {}"),
    ("maximum", "≤ {}"),
    ("exclusiveMaximum", "< {}"),
    ("minLength", "at least {} characters"),
    ("maxLength", "at most {} characters"),
    ("minItems", "at least {} items"),
    ("maxItems", "at most {} items"),
    ("maxProperties", "at most {} entries"),
    ("pattern", "matches `{}`"),
)


def _rules(schema: dict[str, Any], node: dict[str, Any]) -> str:
    found = []
    for variant in [node, *_variants(schema, node)]:
        for key, text in _BOUNDS:
            if key in variant and text.format(variant[key]) not in found:
                found.append(text.format(variant[key]))
    return "; ".join(found)


def _default(node: dict[str, Any], required: bool) -> str:
    if required:
        return "**required**"
    if "default" not in node:
        return ""
    return f"`{json.dumps(node['default'])}`"


def _rows(schema: dict[str, Any], model: dict[str, Any], prefix: str, sections: list[tuple[str, dict[str, Any]]]) -> list[str]:
    rows = []
    required = set(model.get("required", []))
    for name, node in model.get("properties", {}).items():
        path = f"{prefix}{name}"
        nested = [variant for variant in _variants(schema, node) if "properties" in variant]
        rows.append(f"| `{path}` | {_type(schema, node)} | {_default(node, name in required)} | {_rules(schema, node)} |")
        if nested:
            sections.append((path, nested[0]))
    return rows


def render_reference() -> str:
    """The whole reference as Markdown: one table per object, in document order."""
    schema = ModelTemplateVersion.model_json_schema(by_alias=True, mode="validation")
    out = [HEADER]
    sections: list[tuple[str, dict[str, Any]]] = [("", schema)]
    while sections:
        path, model = sections.pop(0)
        out.append(f"## `{path}`" if path else "## The document")
        description = " ".join(str(model.get("description", "")).split())
        if description and path:
            out.append(description)
        rows = _rows(schema, model, f"{path}." if path else "", sections)
        out.append("\n".join(["| field | type | default | rules |", "|---|---|---|---|", *rows]))
    return "\n\n".join(out) + "\n"


__all__ = ["render_reference"]
