"""`kube`: the module's Kubernetes emulator, emptied before each test."""

from __future__ import annotations

import pytest

from tests.k8s_emulator import KubernetesEmulator


@pytest.fixture
def kube(k8s_emulator: KubernetesEmulator) -> KubernetesEmulator:
    k8s_emulator.reset()
    return k8s_emulator
