"""Lease-based leader election: two electors against the emulator, never two leaders at any moment."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from controller.leader import LeaderElector, micro_time
from tests.k8s_emulator import KubernetesEmulator
from tests.kube.helpers import eventually

TIMING = {"lease_duration": 2, "renew_deadline": 1.5, "retry_period": 0.2}


@dataclass
class Candidate:
    elector: LeaderElector
    task: asyncio.Task[None] | None = None
    terms: list[str] = field(default_factory=list)  # "started"/"stopped", as the callbacks saw them


@dataclass
class Referee:
    """Checks at every step that at most one candidate leads, by `is_leader` and by its callbacks."""

    candidates: list[Candidate]
    checks: int = 0
    violations: list[str] = field(default_factory=list)
    leading: set[str] = field(default_factory=set)

    def check(self) -> None:
        self.checks += 1
        leaders = [c.elector.identity for c in self.candidates if c.elector.is_leader]
        if len(leaders) > 1:
            self.violations.append(f"two leaders by is_leader: {leaders}")

    async def watch(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(0.005)

    def callbacks(self, candidate: Candidate) -> tuple[object, object]:
        identity = candidate.elector.identity

        async def started() -> None:
            if self.leading - {identity}:
                self.violations.append(f"{identity} started while {self.leading} lead")
            self.leading.add(identity)
            candidate.terms.append("started")

        async def stopped() -> None:
            self.leading.discard(identity)
            candidate.terms.append("stopped")

        return started, stopped


@contextlib.asynccontextmanager
async def election(kube: KubernetesEmulator, *identities: str) -> AsyncIterator[tuple[Referee, list[Candidate]]]:
    candidates = [
        Candidate(LeaderElector(kube.api_client(user_agent=f"elector/{i}"), "stokehold-system", "controller", i, **TIMING))
        for i in identities
    ]
    referee = Referee(candidates)
    watcher = asyncio.create_task(referee.watch())
    for candidate in candidates:
        started, stopped = referee.callbacks(candidate)
        candidate.task = asyncio.create_task(candidate.elector.run(started, stopped))  # type: ignore[arg-type]
    try:
        yield referee, candidates
    finally:
        for candidate in candidates:
            await candidate.elector.stop()
        await asyncio.gather(*(c.task for c in candidates if c.task is not None), return_exceptions=True)
        watcher.cancel()
        referee.check()
        assert referee.violations == []


def leader_of(candidates: list[Candidate]) -> Candidate | None:
    leaders = [c for c in candidates if c.elector.is_leader]
    assert len(leaders) <= 1
    return leaders[0] if leaders else None


def lease(kube: KubernetesEmulator) -> dict[str, object]:
    found = kube.get("leases", "stokehold-system", "controller")
    assert found is not None
    spec: dict[str, object] = found["spec"]
    return spec


async def test_exactly_one_leads_and_the_other_takes_over_when_it_stops(kube: KubernetesEmulator) -> None:
    async with election(kube, "a", "b") as (referee, candidates):
        first = await eventually(lambda: leader_of(candidates), "a leader")
        assert lease(kube)["holderIdentity"] == first.elector.identity
        assert lease(kube)["leaseTransitions"] == 0
        await asyncio.sleep(0.6)  # a few renewals: the leader keeps the lease, the other keeps waiting
        assert leader_of(candidates) is first and first.terms == ["started"]

        await first.elector.stop()
        assert first.task is not None
        await asyncio.wait_for(first.task, 10)
        assert first.terms == ["started", "stopped"] and not first.elector.is_leader
        second = await eventually(lambda: leader_of(candidates), "the other to take over")
        assert second is not first and lease(kube)["holderIdentity"] == second.elector.identity
        assert lease(kube)["leaseTransitions"] == 1
        assert referee.checks > 50


async def test_conflicting_writes_never_make_two_leaders(kube: KubernetesEmulator) -> None:
    """Leadership changes hands three times among three candidates while 40% of Lease writes also conflict."""
    kube.faults.clear(seed=11)
    kube.faults.add("conflict", 0.4, path=r"/leases")
    async with election(kube, "a", "b", "c") as (referee, candidates):
        holders = []
        for _ in range(3):
            leader = await eventually(lambda: leader_of(candidates), "a leader despite conflicts")
            holders.append(leader.elector.identity)
            await leader.elector.stop()  # it releases the lease: the others race for it
            assert leader.task is not None
            await asyncio.wait_for(leader.task, 10)
            await eventually(lambda: leader_of(candidates), "another leader")
            # back in the race as a fresh candidate, once someone else leads
            leader.elector = LeaderElector(
                leader.elector.api.api_client, "stokehold-system", "controller", leader.elector.identity, **TIMING
            )
            started, stopped = referee.callbacks(leader)
            leader.task = asyncio.create_task(leader.elector.run(started, stopped))  # type: ignore[arg-type]
        assert len(holders) == 3 and all(holders[i] != holders[i + 1] for i in range(2))
        assert kube.faults.injected["conflict"] >= 1 and kube.faults.responses[409] >= kube.faults.injected["conflict"]
        assert referee.violations == [] and referee.checks > 50


async def test_a_cut_off_leader_steps_down_before_the_other_takes_over(kube: KubernetesEmulator) -> None:
    async with election(kube, "a", "b") as (referee, candidates):
        first = await eventually(lambda: leader_of(candidates), "a leader")
        kube.faults.add("error", status=503, user_agent=f"^elector/{first.elector.identity}$")  # its API calls now fail
        await eventually(lambda: first.terms == ["started", "stopped"], "the cut-off leader to step down")
        second = await eventually(lambda: leader_of(candidates), "the other to take over after expiry")
        assert second is not first and lease(kube)["holderIdentity"] == second.elector.identity
        kube.faults.clear()
        await asyncio.sleep(0.5)  # back online, the old leader sees a valid lease and stands by
        assert leader_of(candidates) is second and first.terms == ["started", "stopped"]
        assert referee.violations == []


async def test_cancelling_the_leader_releases_the_lease(kube: KubernetesEmulator) -> None:
    async with election(kube, "solo") as (_, candidates):
        only = await eventually(lambda: leader_of(candidates), "the single candidate to lead")
        assert only.task is not None
        only.task.cancel()
        await asyncio.gather(only.task, return_exceptions=True)
        assert only.terms == ["started", "stopped"]
        assert not lease(kube).get("holderIdentity")


def test_micro_time_always_has_a_fraction_and_timing_is_checked() -> None:
    whole = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert micro_time(whole).isoformat() == "2025-01-01T12:00:00.000001+00:00"
    assert micro_time(whole.replace(microsecond=5)).microsecond == 5
    with pytest.raises(ValueError):
        LeaderElector(None, "ns", "lease", "me", lease_duration=5, renew_deadline=6)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LeaderElector(None, "ns", "lease", "", **TIMING)  # type: ignore[arg-type]
