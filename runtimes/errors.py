"""OpenAI-style error bodies: `{"error": {"message", "type", "param", "code"}}` (pure)."""

from __future__ import annotations

import json
from typing import Any


def error_body(message: str, type_: str, code: str | int | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_bytes(message: str, type_: str, code: str | int | None = None, param: str | None = None) -> bytes:
    return json.dumps(error_body(message, type_, code, param), separators=(",", ":")).encode("utf-8")
