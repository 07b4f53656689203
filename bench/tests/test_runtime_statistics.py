"""The runtime benchmark's statistics: the headline figures, their bootstrap intervals and the verdicts.

Synthetic block pairs with a known effect: the interval must find a real 10 % loss, pass a real tie,
and refuse to decide when the blocks are as bimodal as on a two-core machine.
"""

from __future__ import annotations

import random

import pytest

from bench.runtime import Block, Pair, bootstrap_ci, headline, verdict


def pairs_from(plain: list[float], ours: list[float], ttft_plain: float = 100.0, ttft_ours: float = 100.0) -> list[Pair]:
    return [(Block(p, ttft_plain, 1.0), Block(o, ttft_ours, 1.0)) for p, o in zip(plain, ours, strict=True)]


def test_headline_is_the_ratio_of_medians_and_the_difference_of_medians() -> None:
    pairs = [(Block(100.0, 10.0, 1.0), Block(90.0, 13.0, 1.0)), (Block(300.0, 30.0, 1.0), Block(330.0, 31.0, 1.0))]
    pairs.append((Block(200.0, 20.0, 1.0), Block(150.0, 22.0, 1.0)))
    figures = headline(pairs)
    assert figures["throughput_ratio"] == pytest.approx(150.0 / 200.0)
    assert figures["ttft_p50_added_ms"] == pytest.approx(22.0 - 20.0)


def test_a_real_loss_is_found_and_a_tie_passes() -> None:
    rng = random.Random(1)
    plain = [rng.uniform(340, 360) for _ in range(24)]
    loss = bootstrap_ci(pairs_from(plain, [p * 0.9 for p in plain]))
    assert loss["throughput_ratio"][1] < 0.97
    assert verdict(loss["throughput_ratio"], 0.97, at_least=True) == "missed"
    tie = bootstrap_ci(pairs_from(plain, [rng.uniform(340, 360) for _ in plain], ttft_ours=101.0))
    assert tie["throughput_ratio"][0] <= 1.0 <= tie["throughput_ratio"][1]
    assert verdict(tie["throughput_ratio"], 0.95, at_least=True) == "met"
    assert verdict(tie["ttft_p50_added_ms"], 5.0, at_least=False) == "met"


def test_bimodal_blocks_are_inconclusive() -> None:
    rng = random.Random(2)

    def block() -> float:  # two modes, as when the engine's threads lose a core for a whole block
        return rng.choice((350.0, 700.0)) * rng.uniform(0.95, 1.05)

    intervals = bootstrap_ci(pairs_from([block() for _ in range(24)], [block() for _ in range(24)]))
    low, high = intervals["throughput_ratio"]
    assert high - low > 0.2
    assert verdict(intervals["throughput_ratio"], 0.97, at_least=True) == "inconclusive"


def test_the_bootstrap_is_reproducible() -> None:
    pairs = pairs_from([float(v) for v in range(300, 324)], [float(v) for v in range(310, 334)])
    assert bootstrap_ci(pairs, seed=3) == bootstrap_ci(pairs, seed=3)


@pytest.mark.parametrize(
    ("interval", "target", "at_least", "expected"),
    [
        ((0.98, 1.02), 0.97, True, "met"),
        ((0.90, 0.96), 0.97, True, "missed"),
        ((0.95, 1.02), 0.97, True, "inconclusive"),
        ((-3.0, 4.0), 5.0, False, "met"),
        ((6.0, 9.0), 5.0, False, "missed"),
        ((-8.0, 7.0), 5.0, False, "inconclusive"),
    ],
)
def test_verdict_needs_the_whole_interval_on_one_side(interval: tuple[float, float], target: float, at_least: bool, expected: str) -> None:
    assert verdict(interval, target, at_least=at_least) == expected
