"""API errors as the API server reports them: an HTTP status plus a `Status` body."""

from __future__ import annotations

from typing import Any

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    504: "Timeout",
}


class ApiError(Exception):
    """Raised by the store and the HTTP layer; rendered as a `Status` object."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def not_found(qualified: str, name: str, group: str, plural: str) -> ApiError:
    return ApiError(404, f'{qualified} "{name}" not found', details={"name": name, "group": group, "kind": plural})


def already_exists(qualified: str, name: str, group: str, plural: str) -> ApiError:
    return ApiError(
        409, f'{qualified} "{name}" already exists', reason="AlreadyExists", details={"name": name, "group": group, "kind": plural}
    )


def conflict(qualified: str, name: str, group: str, plural: str, why: str) -> ApiError:
    return ApiError(
        409, f'Operation cannot be fulfilled on {qualified} "{name}": {why}', details={"name": name, "group": group, "kind": plural}
    )


def invalid(kind: str, name: str, group: str, causes: list[tuple[str, str]] | list[tuple[str, str, str]]) -> ApiError:
    """422 Invalid; a cause is (field, message) or (field, message, reason), reason FieldValueInvalid by default."""
    full = [(cause[0], cause[1], cause[2] if len(cause) > 2 else "FieldValueInvalid") for cause in causes]
    parts = [f"{field}: {message}" if field else message for field, message, _ in full]
    text = parts[0] if len(parts) == 1 else f"[{', '.join(parts)}]"
    details = {
        "name": name,
        "group": group,
        "kind": kind,
        "causes": [{"reason": reason, "message": message, "field": field} for field, message, reason in full],
    }
    return ApiError(422, f'{kind}.{group or "core"} "{name}" is invalid: {text}', details=details)


def strict_decoding(kind: str, version: str, unknown: list[str]) -> ApiError:
    """400 for unknown fields under `fieldValidation=Strict` (what kubectl sends unless told otherwise)."""
    fields = ", ".join(f'unknown field "{path}"' for path in unknown)
    return ApiError(400, f'{kind} in version "{version}" cannot be handled as a {kind}: strict decoding error: {fields}')


def success_status(name: str, group: str, plural: str, uid: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": group, "kind": plural, "uid": uid},
    }
