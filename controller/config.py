"""Controller configuration: flags and `STOKEHOLD_*` environment variables.

`RenderConfig` is everything rendering needs (a plain model with defaults, so golden
files do not depend on the environment); `ControllerConfig` adds connections, the
sink, leader election and operations. Nested fields read `STOKEHOLD_<FIELD>__<SUB>`,
e.g. `STOKEHOLD_RENDER__RUNTIME=my-runtime`; dict/list fields take JSON.
"""

from __future__ import annotations

import functools
import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from controller.state import DEFAULT_RESERVED_NAMESPACES
from events.options import NatsOptions
from events.types import STREAM_NAME, SUBJECT_ROOT
from templates.schema import SecretRef

# gpu_type in templates → the node label value NVIDIA's GPU feature discovery sets (nvidia.com/gpu.product)
DEFAULT_GPU_PRODUCTS: dict[str, str] = {
    "nvidia-t4": "Tesla-T4",
    "nvidia-l4": "NVIDIA-L4",
    "nvidia-l40s": "NVIDIA-L40S",
    "nvidia-a10g": "NVIDIA-A10G",
    "nvidia-a100-40gb": "NVIDIA-A100-SXM4-40GB",
    "nvidia-a100-80gb": "NVIDIA-A100-SXM4-80GB",
    "nvidia-h100-80gb": "NVIDIA-H100-80GB-HBM3",
}


class Toleration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"


class ColdStart(BaseModel):
    """How long a first start may take: image pull and start, model download, load into GPU memory.

    Knative kills a revision that is not ready within its progress deadline (10 min by
    default), which a big model's first start easily exceeds. The deadline is
    `safety_factor x (base + size/download + size/load)`, clamped to [floor, cap].
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_s: int = Field(default=180, ge=0)
    download_gb_per_s: float = Field(default=0.1, gt=0)  # ~800 Mbit/s from the hub or object storage
    load_gb_per_s: float = Field(default=1.0, gt=0)
    safety_factor: float = Field(default=1.5, ge=1)
    default_model_size_gb: float = Field(default=15.0, gt=0)  # when a template does not say
    floor_s: int = Field(default=600, ge=60)
    cap_s: int = Field(default=3600, ge=60)

    @model_validator(mode="after")
    def _bounds(self) -> ColdStart:
        if self.floor_s > self.cap_s:
            raise ValueError(f"floor_s ({self.floor_s}) exceeds cap_s ({self.cap_s})")
        return self

    @functools.lru_cache(maxsize=256)  # noqa: B019 - configurations live as long as the process; asked on every render
    def deadline_seconds(self, model_size_gb: float | None, local_source: bool = False) -> int:
        size = model_size_gb if model_size_gb is not None else self.default_model_size_gb
        download = 0.0 if local_source else size / self.download_gb_per_s
        estimate = self.safety_factor * (self.base_s + download + size / self.load_gb_per_s)
        return int(min(self.cap_s, max(self.floor_s, round(estimate))))


class RenderConfig(BaseModel):
    """What the cluster looks like to rendered InferenceServices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    runtime: str = "stokehold-vllm-ray"
    multinode_runtime: str = "stokehold-vllm-ray-multinode"
    model_format: str = "vllm"
    gpu_resource: str = "nvidia.com/gpu"
    gpu_node_selector_key: str = "nvidia.com/gpu.product"
    gpu_products: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_GPU_PRODUCTS))
    gpu_tolerations: list[Toleration] = Field(default_factory=lambda: [Toleration(key="nvidia.com/gpu")])
    hf_token_secret: SecretRef | None = None  # used when a template names none
    model_cache_mount: str = "/mnt/model-cache"
    request_timeout_s: int = Field(default=600, ge=30, le=3600)  # Knative's default max-revision-timeout is 600 s
    cold_start: ColdStart = Field(default_factory=ColdStart)
    template_label_prefix: str = "template.stokehold.dev"


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
    namespaces: list[str] | None = None  # None: every namespace but the reserved ones
    # Never serve models here, even when every namespace is managed: the cluster's own, and the controller's.
    reserved_namespaces: list[str] = Field(default_factory=lambda: list(DEFAULT_RESERVED_NAMESPACES))
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
    def allowed_namespaces(self) -> frozenset[str] | None:
        return frozenset(self.namespaces) if self.namespaces else None

    @model_validator(mode="after")
    def _managed_namespaces_are_not_reserved(self) -> ControllerConfig:
        clash = sorted(set(self.namespaces or ()) & set(self.reserved_namespaces))
        if clash:
            raise ValueError(f"namespaces {clash} are reserved (reserved_namespaces): models never run there")
        return self

    def retry_delay(self, deliveries: int) -> float:
        """Nak delay before the next delivery of a message delivered `deliveries` times."""
        return float(min(self.retry_backoff_max_s, self.retry_backoff_s * 2 ** max(0, deliveries - 1)))
