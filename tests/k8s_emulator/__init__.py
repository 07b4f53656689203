"""A small, honest Kubernetes API server emulator for tests (see README.md)."""

from tests.k8s_emulator.errors import ApiError
from tests.k8s_emulator.faults import FaultInjector, FaultRule
from tests.k8s_emulator.kserve import isvc_status
from tests.k8s_emulator.resources import INFERENCE_SERVICES, LEASES, ResourceType
from tests.k8s_emulator.server import KubernetesEmulator, running_emulator
from tests.k8s_emulator.store import ObjectStore

__all__ = [
    "INFERENCE_SERVICES",
    "LEASES",
    "ApiError",
    "FaultInjector",
    "FaultRule",
    "KubernetesEmulator",
    "ObjectStore",
    "ResourceType",
    "isvc_status",
    "running_emulator",
]
