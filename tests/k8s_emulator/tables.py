"""The `Table` (meta.k8s.io/v1) answer that `kubectl get` asks for, with server-rendered cells."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from tests.k8s_emulator.resources import Object, ResourceType, parse_time

IncludeObject = Literal["None", "Metadata", "Object"]


def human_duration(seconds: float) -> str:
    """apimachinery's `duration.HumanDuration`, the AGE kubectl prints."""
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years, rest = divmod(days, 365)
    if years < 8:
        return f"{years}y{rest}d" if rest else f"{years}y"
    return f"{years}y"


def _cell(value: Any, column_type: str) -> Any:
    if value is None:
        return None  # kubectl prints an empty cell, as for a CRD column whose JSONPath finds nothing
    if column_type == "date" and isinstance(value, str):
        try:
            return human_duration((datetime.now(UTC) - parse_time(value)).total_seconds())
        except ValueError:
            return "<invalid>"
    return value


def _row_object(rt: ResourceType, obj: Object, include: IncludeObject) -> Object | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata", {})}


def to_table(
    rt: ResourceType,
    objects: list[Object],
    *,
    include: IncludeObject = "Metadata",
    with_columns: bool = True,
    list_meta: Object | None = None,
) -> Object:
    columns = rt.columns
    table: Object = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta or {}}
    if with_columns:
        table["columnDefinitions"] = [
            {
                "name": c.name,
                "type": "string" if c.type == "date" else c.type,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            }
            for c in columns
        ]
    rows = []
    for obj in objects:
        row: Object = {"cells": [_cell(c.cell(obj), c.type) for c in columns]}
        row_object = _row_object(rt, obj, include)
        if row_object is not None:
            row["object"] = row_object
        rows.append(row)
    table["rows"] = rows
    return table


def wants_table(accept: str) -> bool:
    """True when the first acceptable media type the client lists is a meta.k8s.io Table."""
    for media in accept.split(","):
        params = {p.strip().split("=", 1)[0]: p.strip().split("=", 1)[1] for p in media.split(";")[1:] if "=" in p}
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", "v1beta1"):
            return True
        if media.split(";")[0].strip() in ("application/json", "*/*") and "as" not in params:
            return False
    return False
