"""A CRD's structural OpenAPI v3 schema applied as the API server applies it to a custom resource.

On every create, update and patch (apiextensions-apiserver, for a structural schema):

1. **prune**: fields the schema does not declare are dropped, unless a node says
   `x-kubernetes-preserve-unknown-fields`; a `null` of a non-nullable field without a default
   is dropped too. The dropped paths are what `fieldValidation` reports: `Warn` (the server's
   default when a client sends none) answers with a `Warning: unknown field "<path>"` header,
   `Strict` (what kubectl sends by default) refuses the request with 400, `Ignore` says nothing.
2. **default**: a missing field with a `default` gets it wherever its parent object exists.
3. **validate**: types (`x-kubernetes-int-or-string` included), `enum`, `pattern`, lengths,
   bounds, `required`, string formats, `anyOf`/`allOf`/`oneOf`/`not`, and the uniqueness of
   `x-kubernetes-list-type: map|set` lists; each failure is a cause with its field path, and the
   request is refused with 422 `Invalid`.

Pure functions over JSON values. Nothing is changed in place: a transformed object shares the
subtrees that did not change with its input (the store never changes a stored object).
Integer formats (`int32`, `int64`) are not checked, as the API server does not check them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

Schema = dict[str, Any]

# metav1.ObjectMeta: what survives in `metadata` (an unknown key there is pruned like any other)
OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)
_ROOT_KEPT = ("apiVersion", "kind")
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True)
class Cause:
    """One validation failure, as a `Status` cause: field path, message and reason."""

    field: str
    message: str
    reason: str = "FieldValueInvalid"


# ------------------------------------------------------------------ paths


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _item(path: str, index: int | str) -> str:
    return f"{path}[{index}]"


def _nullable(schema: Schema) -> bool:
    return bool(schema.get("nullable"))


def _preserves(schema: Schema) -> bool:
    return bool(schema.get("x-kubernetes-preserve-unknown-fields"))


# ------------------------------------------------------------------ prune


def prune(obj: Any, schema: Schema) -> tuple[Any, list[str]]:
    """`obj` without the fields `schema` does not declare, and the paths of the unknown ones (root object)."""
    unknown: list[str] = []
    if not isinstance(obj, dict):
        return obj, unknown
    properties = schema.get("properties") or {}
    out: dict[str, Any] = {}
    changed = False
    for key, value in obj.items():
        if key in _ROOT_KEPT:
            out[key] = value
        elif key == "metadata" and isinstance(value, dict):
            kept = {k: v for k, v in value.items() if k in OBJECT_META_FIELDS}
            unknown += [_child("metadata", k) for k in value if k not in OBJECT_META_FIELDS]
            changed |= len(kept) != len(value)
            out[key] = kept if len(kept) != len(value) else value
        elif key in properties:
            pruned = _prune_field(value, properties[key], key, unknown)
            if pruned is _DROP:
                changed = True
            else:
                changed |= pruned is not value
                out[key] = pruned
        elif _preserves(schema):
            out[key] = value
        else:
            unknown.append(key)
            changed = True
    return (out if changed else obj), unknown


class _Drop:
    pass


_DROP = _Drop()


def _prune_field(value: Any, schema: Schema, path: str, unknown: list[str]) -> Any:
    """The pruned value of one field, or `_DROP` for a null the field may not hold (and has no default for)."""
    if value is None:
        return value if _nullable(schema) or "default" in schema else _DROP
    return _prune(value, schema, path, unknown)


def _prune(value: Any, schema: Schema, path: str, unknown: list[str]) -> Any:
    if schema.get("x-kubernetes-int-or-string"):
        return value
    if isinstance(value, dict):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        if properties is None and not isinstance(additional, dict):
            if _preserves(schema):
                return value
            if not value:
                return value
            unknown += [_child(path, key) for key in value]
            return {}
        out: dict[str, Any] = {}
        changed = False
        for key, sub in value.items():
            # a structural schema has either properties or additionalProperties, never both
            sub_schema = properties.get(key) if properties is not None else additional
            sub_path = _child(path, key) if properties is not None else _item(path, key)
            if sub_schema is None:
                if _preserves(schema):
                    out[key] = sub
                    continue
                unknown.append(_child(path, key))
                changed = True
                continue
            pruned = _prune_field(sub, sub_schema, sub_path, unknown)
            if pruned is _DROP:
                changed = True
                continue
            changed |= pruned is not sub
            out[key] = pruned
        return out if changed else value
    if isinstance(value, list):
        items = schema.get("items")
        if not isinstance(items, dict):
            return value
        pruned_items = [item if item is None else _prune(item, items, _item(path, i), unknown) for i, item in enumerate(value)]
        return pruned_items if any(a is not b for a, b in zip(pruned_items, value, strict=True)) else value
    return value


# ----------------------------------------------------------------- default


def default(obj: Any, schema: Schema) -> Any:
    """`obj` with every missing field that has a `default` filled in, where its parent object exists."""
    if isinstance(obj, dict):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        out: dict[str, Any] | None = None
        if properties is not None:
            for key, sub in properties.items():
                if "default" in sub and (key not in obj or (obj[key] is None and not _nullable(sub))):
                    out = dict(obj) if out is None else out
                    out[key] = json.loads(json.dumps(sub["default"]))
        current = obj if out is None else out
        for key, value in current.items():
            sub_schema = properties.get(key) if properties is not None else additional
            if not isinstance(sub_schema, dict) or value is None:
                continue
            defaulted = default(value, sub_schema)
            if defaulted is not value:
                out = dict(obj) if out is None else out
                out[key] = defaulted
        return obj if out is None else out
    if isinstance(obj, list):
        items = schema.get("items")
        if not isinstance(items, dict):
            return obj
        defaulted_items = [default(item, items) for item in obj]
        return defaulted_items if any(a is not b for a, b in zip(defaulted_items, obj, strict=True)) else obj
    return obj


# ---------------------------------------------------------------- validate


def validate(obj: Any, schema: Schema) -> list[Cause]:
    """Every way `obj` breaks `schema` (root object: `metadata`, `apiVersion` and `kind` are the server's business)."""
    causes: list[Cause] = []
    if not isinstance(obj, dict):
        return [Cause("", f"Invalid value: {_type_name(obj)!r}: must be of type object", "FieldValueTypeInvalid")]
    properties = schema.get("properties") or {}
    for key in schema.get("required") or []:
        if key not in obj and key not in ("metadata", "apiVersion", "kind"):
            causes.append(Cause(key, "Required value", "FieldValueRequired"))
    for key, value in obj.items():
        if key in ("metadata", "apiVersion", "kind") or key not in properties:
            continue
        _validate(value, properties[key], key, causes)
    return causes


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _has_type(value: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return True


def _shown(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _validate(value: Any, schema: Schema, path: str, causes: list[Cause]) -> None:
    if value is None:
        if not _nullable(schema) and "type" in schema:
            causes.append(_type_error(path, schema["type"], value))
        return
    if schema.get("x-kubernetes-int-or-string"):
        if not (_has_type(value, "integer") or isinstance(value, str)):
            causes.append(_type_error(path, "integer,string", value))
            return
    elif "type" in schema and not _has_type(value, schema["type"]):
        causes.append(_type_error(path, schema["type"], value))
        return
    before = len(causes)
    _values(value, schema, path, causes)
    for sub in schema.get("allOf") or []:
        _values(value, sub, path, causes)
    if "anyOf" in schema and not any(_passes(value, sub, path) for sub in schema["anyOf"]):
        causes.append(Cause(path, f"Invalid value: {_shown(value)}: {path} in body must validate at least one schema (anyOf)"))
    if "oneOf" in schema and sum(_passes(value, sub, path) for sub in schema["oneOf"]) != 1:
        causes.append(Cause(path, f"Invalid value: {_shown(value)}: {path} in body must validate one and only one schema (oneOf)"))
    if "not" in schema and _passes(value, schema["not"], path):
        causes.append(Cause(path, f"Invalid value: {_shown(value)}: {path} in body must not validate the schema (not)"))
    if len(causes) > before:
        return
    if isinstance(value, dict):
        _object(value, schema, path, causes)
    elif isinstance(value, list):
        _array(value, schema, path, causes)


def _type_error(path: str, expected: str, value: Any) -> Cause:
    name = _type_name(value)
    return Cause(path, f'Invalid value: "{name}": {path} in body must be of type {expected}: "{name}"', "FieldValueTypeInvalid")


def _passes(value: Any, schema: Schema, path: str) -> bool:
    found: list[Cause] = []
    _validate(value, schema, path, found)
    return not found


def _values(value: Any, schema: Schema, path: str, causes: list[Cause]) -> None:
    """The value validations of one schema node (not its type, not its children)."""
    if "enum" in schema and _shown(value) not in {_shown(option) for option in schema["enum"]}:
        supported = ", ".join(_shown(option) for option in schema["enum"])
        causes.append(Cause(path, f"Unsupported value: {_shown(value)}: supported values: {supported}", "FieldValueNotSupported"))
    if isinstance(value, str):
        _string(value, schema, path, causes)
    elif _has_type(value, "number"):
        _number(value, schema, path, causes)
    elif isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            causes.append(Cause(path, f"Too many: {len(value)}: must have at most {schema['maxItems']} items", "FieldValueTooMany"))
        if "minItems" in schema and len(value) < schema["minItems"]:
            causes.append(Cause(path, f"Invalid value: {len(value)}: {path} in body should have at least {schema['minItems']} items"))
    elif isinstance(value, dict):
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            causes.append(Cause(path, f"Too many: {len(value)}: must have at most {schema['maxProperties']} items", "FieldValueTooMany"))
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            least = schema["minProperties"]
            causes.append(Cause(path, f"Invalid value: {len(value)}: {path} in body should have at least {least} properties"))


def _string(value: str, schema: Schema, path: str, causes: list[Cause]) -> None:
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        causes.append(Cause(path, f"Too long: may not be more than {schema['maxLength']} bytes", "FieldValueTooLong"))
    if "minLength" in schema and len(value) < schema["minLength"]:
        causes.append(Cause(path, f"Invalid value: {_shown(value)}: {path} in body should be at least {schema['minLength']} chars long"))
    pattern = schema.get("pattern")
    if pattern is not None and re.search(pattern, value) is None:
        causes.append(Cause(path, f"Invalid value: {_shown(value)}: {path} in body should match '{pattern}'"))
    problem = _format_problem(value, schema.get("format"))
    if problem:
        causes.append(Cause(path, f"Invalid value: {_shown(value)}: {path} in body must be of type {schema['format']}: {_shown(value)}"))


def _format_problem(value: str, fmt: str | None) -> bool:
    if fmt == "date-time":
        if not _DATE_TIME.match(value):
            return True
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return True
    if fmt == "byte":
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return True
    return False


def _number(value: float, schema: Schema, path: str, causes: list[Cause]) -> None:
    if "minimum" in schema:
        low = schema["minimum"]
        if value < low or (schema.get("exclusiveMinimum") and value == low):
            relation = "greater than" if schema.get("exclusiveMinimum") else "greater than or equal to"
            causes.append(Cause(path, f"Invalid value: {_shown(value)}: {path} in body should be {relation} {low}"))
    if "maximum" in schema:
        high = schema["maximum"]
        if value > high or (schema.get("exclusiveMaximum") and value == high):
            relation = "less than" if schema.get("exclusiveMaximum") else "less than or equal to"
            causes.append(Cause(path, f"Invalid value: {_shown(value)}: {path} in body should be {relation} {high}"))
    if "multipleOf" in schema and schema["multipleOf"] and (value / schema["multipleOf"]) % 1:
        causes.append(Cause(path, f"Invalid value: {_shown(value)}: {path} in body should be a multiple of {schema['multipleOf']}"))


def _object(value: dict[str, Any], schema: Schema, path: str, causes: list[Cause]) -> None:
    properties = schema.get("properties")
    for key in schema.get("required") or []:
        if key not in value:
            causes.append(Cause(_child(path, key), "Required value", "FieldValueRequired"))
    additional = schema.get("additionalProperties")
    for key, sub in value.items():
        if properties is not None and key in properties:
            _validate(sub, properties[key], _child(path, key), causes)
        elif isinstance(additional, dict):
            _validate(sub, additional, _item(path, key), causes)


def _array(value: list[Any], schema: Schema, path: str, causes: list[Cause]) -> None:
    items = schema.get("items")
    if isinstance(items, dict):
        for index, item in enumerate(value):
            _validate(item, items, _item(path, index), causes)
    list_type = schema.get("x-kubernetes-list-type")
    unique = schema.get("uniqueItems") or list_type == "set"
    keys = schema.get("x-kubernetes-list-map-keys") if list_type == "map" else None
    if not unique and not keys:
        return
    seen: set[str] = set()
    for index, item in enumerate(value):
        identity = {key: item.get(key) for key in keys} if keys and isinstance(item, dict) else item
        shown = _shown(identity)
        if shown in seen:
            causes.append(Cause(_item(path, index), f"Duplicate value: {shown}", "FieldValueDuplicate"))
        seen.add(shown)
