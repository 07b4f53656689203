"""Controller configuration: flags and `STOKEHOLD_*` environment variables.

`ControllerConfig` holds connections, the sink, leader election, operations and the
`RenderConfig` (`controller/render_config.py`: what rendering needs, a plain model with
defaults so golden files do not depend on the environment). Nested fields read
`STOKEHOLD_<FIELD>__<SUB>`, e.g. `STOKEHOLD_RENDER__RUNTIME=my-runtime`; dict/list fields take JSON.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from controller.render_config import RenderConfig
from controller.state import DEFAULT_RESERVED_NAMESPACES
from events.options import NatsOptions
from events.types import STREAM_NAME, SUBJECT_ROOT
from templates.schema import check_dns_label


class ControllerConfig(BaseSettings):
    """All settings of `stokehold controller run`; every field is also `STOKEHOLD_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="STOKEHOLD_", env_nested_delimiter="__", extra="ignore", frozen=True)

    nats: NatsOptions = Field(default_factory=NatsOptions)  # its own STOKEHOLD_NATS_* variables (URL, credentials, TLS)
    stream: str = STREAM_NAME
    subject_root: str = SUBJECT_ROOT
    durable: str = "stokehold-controller"
    source: str = "/stokehold/controller"  # CloudEvents source of the events the controller publishes

    sink: Literal["kube", "dir"] = "kube"
    dir: Path | None = None  # the GitOps directory of the `dir` sink
    # The namespaces served: opt-in, at least one. A request for any other is dead-lettered.
    namespaces: list[str] = Field(default_factory=list, validate_default=True)
    # More namespaces never to serve, on top of DEFAULT_RESERVED_NAMESPACES (which cannot be shortened).
    reserved_namespaces: list[str] = Field(default_factory=list)
    # Platform policy: may a template version set engine.trust_remote_code (run its model repository's code)?
    allow_trust_remote_code: bool = False
    kubeconfig: Path | None = None  # None: in-cluster, then ~/.kube/config

    render: RenderConfig = Field(default_factory=RenderConfig)

    leader_election: bool = False
    lease_namespace: str = "stokehold-system"
    lease_name: str = "stokehold-controller"
    identity: str = Field(default_factory=socket.gethostname)

    fetch_batch: int = Field(default=1000, ge=1, le=10_000)  # a backlog coalesces into one write per template per batch
    fetch_timeout_s: float = Field(default=1.0, gt=0)
    concurrency: int = Field(default=16, ge=1, le=256)  # templates reconciled at the same time
    ack_wait_s: float = Field(default=60.0, gt=0)
    retry_backoff_s: float = Field(default=0.5, gt=0)  # first nak delay; doubles per delivery
    retry_backoff_max_s: float = Field(default=30.0, gt=0)
    # An event whose handling keeps failing is terminated at this delivery (about 8 minutes of retries at
    # the default backoff) with a log line and stokehold_controller_gave_up; the desired state it carried
    # is kept, and the controller retries the sink by itself until it recovers.
    max_deliveries: int = Field(default=20, ge=2, le=1000)
    resync_interval_s: float = Field(default=600.0, ge=0)  # 0: never re-list the sink

    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(default=9090, ge=0, le=65535)  # 0: any free port
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _sink_needs(self) -> ControllerConfig:
        if self.sink == "dir" and self.dir is None:
            raise ValueError("the dir sink needs --dir (STOKEHOLD_DIR)")
        return self

    @property
    def allowed_namespaces(self) -> frozenset[str]:
        return frozenset(self.namespaces)

    @property
    def reserved(self) -> frozenset[str]:
        return frozenset(DEFAULT_RESERVED_NAMESPACES) | frozenset(self.reserved_namespaces)

    @field_validator("namespaces")
    @classmethod
    def _some_namespaces(cls, namespaces: list[str]) -> list[str]:
        if not namespaces:
            raise ValueError(
                "the controller serves only the namespaces it is given, and none is given: "
                "list them with --namespace NS (repeat) or STOKEHOLD_NAMESPACES='[\"llm\"]'"
            )
        return [check_dns_label(namespace, "namespace") for namespace in namespaces]

    @model_validator(mode="after")
    def _served_namespaces_are_not_reserved(self) -> ControllerConfig:
        clash = sorted(set(self.namespaces) & self.reserved)
        if clash:
            raise ValueError(
                f"namespaces {clash} are reserved (the cluster's, the serving stack's or stokehold's own): models never run there"
            )
        return self

    def retry_delay(self, deliveries: int) -> float:
        """Nak delay before the next delivery of a message delivered `deliveries` times."""
        return float(min(self.retry_backoff_max_s, self.retry_backoff_s * 2 ** max(0, deliveries - 1)))
