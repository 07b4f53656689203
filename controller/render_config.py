"""What rendering needs besides a version and a deployment: `RenderConfig` (pure, no I/O dependencies).

What the cluster looks like to rendered InferenceServices: runtimes, GPU node labels and
tolerations, the model cache, the cold-start deadline model. A plain model with defaults,
so golden files do not depend on the environment; `ControllerConfig.render` fills it from
flags and `STOKEHOLD_RENDER__*` variables.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from templates.schema import LABEL_VALUE_RE, SecretRef, check_dns_label

# Knative refuses a revision whose timeoutSeconds exceeds max-revision-timeout-seconds (600 by default):
# manifests/knative raises it to this, the most request_timeout_s may be.
MAX_REQUEST_TIMEOUT_S = 3600

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

    def size_gb(self, model_size_gb: float | None) -> float:
        return model_size_gb if model_size_gb is not None else self.default_model_size_gb

    def deadline_seconds(self, model_size_gb: float | None, local_source: bool = False) -> int:
        """The progress deadline (and startup budget). The download term stays for a cached version: its first
        replica fills the cache itself when the pre-download Job has not finished, and a deadline that kills that
        fill would kill every retry too; a generous deadline only delays noticing a broken start."""
        size = self.size_gb(model_size_gb)
        download = 0.0 if local_source else size / self.download_gb_per_s
        estimate = self.safety_factor * (self.base_s + download + size / self.load_gb_per_s)
        return int(min(self.cap_s, max(self.floor_s, round(estimate))))

    def download_seconds(self, model_size_gb: float | None) -> int:
        """How long a pre-download Job may run: `safety_factor x size/download`, at least `floor_s`, at most 4 x `cap_s`."""
        estimate = self.safety_factor * self.size_gb(model_size_gb) / self.download_gb_per_s
        return int(min(4 * self.cap_s, max(self.floor_s, round(estimate))))


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
    request_timeout_s: int = Field(default=600, ge=30, le=MAX_REQUEST_TIMEOUT_S)  # over 600: apply manifests/knative
    cold_start: ColdStart = Field(default_factory=ColdStart)
    template_label_prefix: str = "template.stokehold.dev"
    # KServe < 0.16 knows the deployment modes only as Serverless/RawDeployment; 0.16 renamed them Knative/Standard
    legacy_deployment_modes: bool = False
    # What a LoRA-enabled runtime needs to follow its deployment's adapter events on the bus (runtimes/adapters.py).
    # Credentials only as Secret references, rendered as env from secretKeyRef: the Secret lives in the model's namespace.
    runtime_nats_url: str = "nats://nats.nats.svc:4222"
    runtime_nats_user: str | None = None
    runtime_nats_password_secret: SecretRef | None = None
    runtime_nats_token_secret: SecretRef | None = None
    adapter_cache_mount: str = "/mnt/adapter-cache"  # an emptyDir when the template has no cache PVC
    # Render `stokehold.dev/adapters` (the desired adapter set) on the InferenceService. KServe copies every
    # InferenceService annotation onto the Knative revision, so a changed value would roll the pods, unless
    # KServe's inferenceservice-config lists the key in serviceAnnotationDisallowedList (controller/README.md).
    adapters_annotation: bool = False
    # The model cache (docs/cold-start.md). A version is cached when its storage.cache says so, or (left unset) when it is
    # always hot (priority >= 2) or at least `cache_min_size_gb`: at the documented 0.1 GB/s a 10 GB model downloads
    # for 100 s, as long as the rest of a start (base_s plus loading) takes, so from there on the download is at least
    # half of a cold start; smaller models (embedders, rerankers, the tiny demo) are not worth a Job per version.
    cache_min_size_gb: float = Field(default=10.0, gt=0)
    # "job": a pre-download Job fills the model-cache PVC (the version's storage.cache_pvc, else `model_cache_pvc`) in each
    # namespace the template is deployed to and in `cache_namespaces`; "localmodelcache": KServe's LocalModelCache
    # (serving.kserve.io/v1alpha1) keeps a node-local copy on `local_model_node_groups`; "off": nothing is cached.
    model_cache_mode: Literal["job", "localmodelcache", "off"] = "job"
    model_cache_pvc: str | None = None  # a PVC of that name in every served namespace, for versions that name none
    cache_namespaces: list[str] = Field(default_factory=list)  # warm these on publish too, before anything is deployed there
    local_model_node_groups: list[str] = Field(default_factory=list)  # LocalModelNodeGroups (KServe uses the first)
    # the pre-download Job: the runtime image (its `python -m runtimes cache-fill`) and what it may use
    cache_fill_image: str = "ghcr.io/stokehold/stokehold-runtime:0.1.0"
    cache_fill_cpu: str = "2"
    cache_fill_memory: str = "4Gi"
    cache_fill_backoff_limit: int = Field(default=3, ge=0, le=20)
    cache_fill_ttl_s: int = Field(default=86_400, ge=0)  # a finished Job goes after a day; the filled cache stays
    # Who downloads a cached version is the Job, or its first replica, not KServe's storage initializer, so they need the
    # object store's credentials themselves: a Secret of this name in the model's namespace holding the variables
    # kserve-storage reads (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, ...), rendered
    # as an optional envFrom. None: the pods rely on their node's or service account's identity (IRSA, workload identity).
    storage_secret: str | None = None
    # the runtime's startup probe (the ClusterServingRuntime's, rendered with a budget from the model's size)
    startup_probe_path: str = "/health"
    startup_probe_port: int = Field(default=8080, ge=1, le=65535)
    startup_probe_period_s: int = Field(default=10, ge=1, le=300)

    @field_validator("model_cache_pvc")
    @classmethod
    def _cache_pvc(cls, v: str | None) -> str | None:
        return None if v is None else check_dns_label(v, "model_cache_pvc")

    @field_validator("storage_secret")
    @classmethod
    def _storage_secret(cls, v: str | None) -> str | None:
        return None if v is None else check_dns_label(v, "storage_secret")

    @field_validator("cache_namespaces")
    @classmethod
    def _cache_namespaces(cls, v: list[str]) -> list[str]:
        return [check_dns_label(namespace, "cache_namespaces entry") for namespace in v]

    @field_validator("local_model_node_groups")
    @classmethod
    def _node_groups(cls, v: list[str]) -> list[str]:
        return [check_dns_label(group, "local_model_node_groups entry") for group in v]

    @model_validator(mode="after")
    def _local_model_cache(self) -> RenderConfig:
        if self.model_cache_mode == "localmodelcache" and not self.local_model_node_groups:
            raise ValueError("model_cache_mode 'localmodelcache' needs local_model_node_groups (the LocalModelNodeGroups to cache on)")
        return self

    @model_validator(mode="after")
    def _runtime_nats_credentials(self) -> RenderConfig:
        if self.runtime_nats_password_secret is not None and not self.runtime_nats_user:
            raise ValueError("runtime_nats_password_secret needs runtime_nats_user")
        if self.runtime_nats_token_secret is not None and self.runtime_nats_user:
            raise ValueError("use runtime_nats_user/runtime_nats_password_secret or runtime_nats_token_secret, not both")
        if "://" not in self.runtime_nats_url or "@" in self.runtime_nats_url:
            raise ValueError("runtime_nats_url is a server URL like nats://host:4222, without credentials (use the Secret references)")
        return self

    @field_validator("gpu_products")
    @classmethod
    def _label_values(cls, v: dict[str, str]) -> dict[str, str]:
        for gpu_type, product in v.items():
            if len(product) > 63 or not LABEL_VALUE_RE.match(product) or not product:
                raise ValueError(f"gpu_products[{gpu_type!r}] = {product!r} is not a Kubernetes label value (a nodeSelector value)")
        return v
