"""Sizes of the reliability tests: bounded in `make test`, larger under `make soak` (STOKEHOLD_SOAK=1)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.controller_process import ControllerProcess
from tests.k8s_emulator import KubernetesEmulator

SOAK = os.environ.get("STOKEHOLD_SOAK") == "1"


@dataclass(frozen=True)
class Sizes:
    events: int
    templates: int
    trials: int
    kills_per_trial: int
    fuzz_examples: int


SIZES = (
    Sizes(events=5000, templates=100, trials=10, kills_per_trial=5, fuzz_examples=6000)
    if SOAK
    else Sizes(events=1000, templates=20, trials=3, kills_per_trial=2, fuzz_examples=2000)
)
SEED = int(os.environ.get("STOKEHOLD_RELIABILITY_SEED", "20261130"))

# Quick redelivery after a kill (ack wait) and short retry delays, so a trial takes seconds, not minutes.
FAST_RETRIES = {
    "STOKEHOLD_ACK_WAIT_S": "5",
    "STOKEHOLD_RETRY_BACKOFF_S": "0.1",
    "STOKEHOLD_RETRY_BACKOFF_MAX_S": "2",
}


def kube_controller(emulator: KubernetesEmulator, nats_url: str, *, root: str, namespace: str, log: Path, **env: str) -> ControllerProcess:
    """The controller process with the kube sink against the emulator, on its own stream and subjects."""
    assert emulator.kubeconfig is not None
    args = ["--sink", "kube", "--kubeconfig", str(emulator.kubeconfig), "--nats-url", nats_url, "--namespace", namespace]
    env = {**FAST_RETRIES, "STOKEHOLD_STREAM": root.upper(), "STOKEHOLD_SUBJECT_ROOT": root, "STOKEHOLD_LOG_LEVEL": "WARNING", **env}
    return ControllerProcess(args, log, env)
