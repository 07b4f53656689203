"""Label and field selectors with the API server's grammar and matching rules.

Label selectors: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma-separated
(ANDed). `!=` and `notin` also match objects without the key, as on a real server.
Field selectors: `metadata.name` and `metadata.namespace` with `=`, `==`, `!=`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tests.k8s_emulator.errors import ApiError
from tests.k8s_emulator.resources import LABEL_VALUE, valid_qualified_name

Operator = Literal["=", "!=", "in", "notin", "exists", "!"]

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_SET = re.compile(rf"^(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_EQUALITY = re.compile(rf"^(?P<key>{_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>[^=!\s,]*)$")
_EXISTS = re.compile(rf"^(?P<key>{_KEY})$")
_NOT_EXISTS = re.compile(rf"^!\s*(?P<key>{_KEY})$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        return not present or value not in self.values  # "!=", "notin"


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r.matches(labels) for r in self.requirements)


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _bad(text: str, why: str) -> ApiError:
    return ApiError(400, f"unable to parse requirement: {why} in label selector {text!r}")


def _checked_key(key: str, text: str) -> str:
    if not valid_qualified_name(key):
        raise _bad(text, f"invalid label key {key!r}")
    return key


def _checked_value(value: str, text: str) -> str:
    if len(value) > 63 or not LABEL_VALUE.match(value):
        raise _bad(text, f"invalid label value {value!r}")
    return value


def parse_label_selector(text: str | None) -> LabelSelector:
    if text is None or not text.strip():
        return LabelSelector()
    requirements = []
    for raw in _split_top_level(text):
        part = raw.strip()
        if not part:
            raise _bad(text, "empty requirement")
        if match := _SET.match(part):
            values = [v.strip() for v in match["values"].split(",")]
            if not any(values):
                raise _bad(text, "for 'in', 'notin' operators, values set can't be empty")
            op: Operator = "in" if match["op"] == "in" else "notin"
            checked = frozenset(_checked_value(v, text) for v in values)
            requirements.append(Requirement(_checked_key(match["key"], text), op, checked))
        elif match := _EQUALITY.match(part):
            op = "!=" if match["op"] == "!=" else "="
            value = _checked_value(match["value"], text)
            requirements.append(Requirement(_checked_key(match["key"], text), op, frozenset({value})))
        elif match := _NOT_EXISTS.match(part):
            requirements.append(Requirement(_checked_key(match["key"], text), "!"))
        elif match := _EXISTS.match(part):
            requirements.append(Requirement(_checked_key(match["key"], text), "exists"))
        else:
            raise _bad(text, f"cannot parse {part!r}")
    return LabelSelector(tuple(requirements))


FIELDS = ("metadata.name", "metadata.namespace")


@dataclass(frozen=True)
class FieldSelector:
    terms: tuple[tuple[str, bool, str], ...] = ()  # (field, equal?, value)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        metadata = obj.get("metadata") or {}
        for field_path, equal, value in self.terms:
            actual = metadata.get(field_path.split(".", 1)[1]) or ""
            if (actual == value) != equal:
                return False
        return True


def parse_field_selector(text: str | None) -> FieldSelector:
    if text is None or not text.strip():
        return FieldSelector()
    terms = []
    for raw in text.split(","):
        match = re.match(r"^\s*([A-Za-z.]+)\s*(==|=|!=)\s*(.*?)\s*$", raw)
        if not match:
            raise ApiError(400, f"invalid field selector: {raw!r}")
        field_path, op, value = match.groups()
        if field_path not in FIELDS:
            raise ApiError(400, f"field label not supported: {field_path}")
        terms.append((field_path, op != "!=", value))
    return FieldSelector(tuple(terms))
