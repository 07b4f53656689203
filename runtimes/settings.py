"""The runtime's own settings, read from the environment the controller renders (pure).

`runtimes.engine_args.runtime_env` writes these variables; this module reads them back,
so a typo or a bad value stops the launcher with a message that names the variable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from runtimes.engine_args import ENV_API_KEY, ENV_API_KEY_FILE, ENV_GENERATION_DEFAULTS, ENV_MAX_CONCURRENCY, ENV_TASK
from templates.schema import POOLING_KINDS, GenerationDefaults, Task, error_text, errors_from

ENV_DRAIN_SECONDS = "STOKEHOLD_DRAIN_SECONDS"
ENV_READY_CACHE_SECONDS = "STOKEHOLD_READY_CACHE_SECONDS"
ENV_MAX_BODY_BYTES = "STOKEHOLD_MAX_BODY_BYTES"
ENV_BODY_TIMEOUT_SECONDS = "STOKEHOLD_BODY_TIMEOUT_SECONDS"
DEFAULT_DRAIN_SECONDS = 30.0
DEFAULT_READY_CACHE_SECONDS = 5.0
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_BODY_TIMEOUT_SECONDS = 30.0  # for the whole body, so a client that trickles bytes is cut off too


class RuntimeConfigError(ValueError):
    """The runtime's environment is invalid; the message names the variable."""


class RuntimeSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    task: Task = "generate"
    max_concurrency: int | None = Field(default=None, ge=1, description="None: no limit")
    generation: GenerationDefaults = Field(default_factory=GenerationDefaults)
    api_key: SecretStr | None = None
    api_key_file: Path | None = Field(default=None, description="a mounted Secret's file, re-read when it changes")
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1)
    body_timeout_seconds: float = Field(default=DEFAULT_BODY_TIMEOUT_SECONDS, gt=0)
    drain_seconds: float = Field(default=DEFAULT_DRAIN_SECONDS, ge=0)
    ready_cache_seconds: float = Field(default=DEFAULT_READY_CACHE_SECONDS, ge=0)

    @model_validator(mode="after")
    def _one_key_source(self) -> RuntimeSettings:
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError(f"set {ENV_API_KEY} or {ENV_API_KEY_FILE}, not both")
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RuntimeSettings:
        """Settings from `STOKEHOLD_*` variables; raises `RuntimeConfigError` naming the bad one."""
        values: dict[str, object] = {}
        sources = {
            "task": ENV_TASK,
            "max_concurrency": ENV_MAX_CONCURRENCY,
            "api_key": ENV_API_KEY,
            "api_key_file": ENV_API_KEY_FILE,
            "max_body_bytes": ENV_MAX_BODY_BYTES,
            "body_timeout_seconds": ENV_BODY_TIMEOUT_SECONDS,
            "drain_seconds": ENV_DRAIN_SECONDS,
            "ready_cache_seconds": ENV_READY_CACHE_SECONDS,
        }
        for field, variable in sources.items():
            raw = env.get(variable, "").strip()
            if raw:
                values[field] = raw
        raw_defaults = env.get(ENV_GENERATION_DEFAULTS, "").strip()
        if raw_defaults:
            try:
                values["generation"] = json.loads(raw_defaults)
            except json.JSONDecodeError as exc:
                raise RuntimeConfigError(f"{ENV_GENERATION_DEFAULTS} is not valid JSON: {exc}") from None
        try:
            settings = cls.model_validate(values)
        except ValidationError as exc:
            variables = {**sources, "generation": ENV_GENERATION_DEFAULTS}
            problems = []
            for location, message in errors_from(exc):
                field, _, rest = location.partition(".")
                problems.append((f"{variables.get(field, field)}{'.' + rest if rest else ''}", message))
            raise RuntimeConfigError(f"invalid runtime environment: {error_text(problems)}") from None
        if settings.task != "generate" and settings.generation != GenerationDefaults():
            kind = POOLING_KINDS[settings.task]
            raise RuntimeConfigError(f"{ENV_GENERATION_DEFAULTS} does not apply to {kind} model ({ENV_TASK}={settings.task})")
        return settings
