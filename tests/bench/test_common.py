"""bench/_common.py: contenders timed in interleaved rounds, compared by the median ratio."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

# Loaded from its file, not through sys.path: bench/ holds modules (search, serving, ...) whose
# names must not shadow anything for the tests that run after these.
_spec = importlib.util.spec_from_file_location(
    "tunesmith_bench_common", Path(__file__).resolve().parents[2] / "bench" / "_common.py"
)
assert _spec is not None and _spec.loader is not None
_common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_common)
cpu_seconds, interleaved = _common.cpu_seconds, _common.interleaved


class FakeClock:
    """A wall clock that each contender advances by its own duration (a fast one, a slow one)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rounds_alternate_and_the_median_ratio_drops_a_slow_spell() -> None:
    clock, cpu = FakeClock(), FakeClock()
    calls: list[str] = []
    # Round 2's "ours" run is hit by a slow spell (5x slower): the median of the three rounds
    # still says 2x, the mean would not.
    ours_seconds = iter([1.0, 5.0, 1.0])

    def ours() -> float:
        calls.append("ours")
        clock.now += next(ours_seconds)
        cpu.now += 1.8  # two cores busy: processor time is measured beside wall time
        return 100

    def peer() -> float:
        calls.append("peer")
        clock.now += 2.0
        cpu.now += 2.0
        return 100

    out = interleaved({"ours": ours, "peer": peer}, baseline="peer", rounds=3, clock=clock, cpu_clock=cpu)
    assert calls == ["ours", "peer", "peer", "ours", "ours", "peer"]  # A B, B A, A B
    ratio = out["ratios"]["ours"]
    assert ratio["per_round"] == pytest.approx([2.0, 0.4, 2.0])
    assert ratio["median"] == pytest.approx(2.0) and (ratio["low"], ratio["high"]) == pytest.approx((0.4, 2.0))
    assert ratio["spread"] == pytest.approx((2.0 - 0.4) / 2.0)
    assert out["contenders"]["ours"]["median_rate"] == pytest.approx(100.0)
    assert out["contenders"]["ours"]["median_cpu_seconds"] == pytest.approx(1.8)
    assert out["contenders"]["peer"]["median_wall_seconds"] == pytest.approx(2.0)
    assert "peer" not in out["ratios"] and out["baseline"] == "peer"


def test_real_clocks_measure_work_and_bad_calls_are_refused() -> None:
    def busy() -> float:
        total = 0
        for i in range(200_000):
            total += i * i
        return 1.0

    out = interleaved({"a": busy, "b": busy}, baseline="a", rounds=2)
    assert out["contenders"]["a"]["median_cpu_seconds"] > 0 and 0.2 < out["ratios"]["b"]["median"] < 5
    assert cpu_seconds() > 0
    with pytest.raises(ValueError, match="baseline 'c' is not among"):
        interleaved({"a": busy}, baseline="c")
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        interleaved({"a": busy}, baseline="a", rounds=0)
    with pytest.raises(ValueError, match="a round 1: 0.0 units"):
        interleaved({"a": lambda: 0.0}, baseline="a")


def test_a_contender_may_time_its_own_work_without_start_up() -> None:
    clock = FakeClock()

    def child() -> tuple[float, float]:
        clock.now += 10.0  # start-up and loading (8 s) around 2 s of measured training
        return 100.0, 2.0

    def peer() -> float:
        clock.now += 4.0
        return 100.0

    out = interleaved({"child": child, "peer": peer}, baseline="peer", rounds=1, clock=clock, cpu_clock=FakeClock())
    mine = out["contenders"]["child"]
    assert mine["median_rate"] == pytest.approx(50.0) and mine["timed_seconds"] == [2.0]
    assert mine["wall_seconds"] == [10.0] and out["ratios"]["child"]["median"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="child round 1: 100.0 units in 0.0 s"):
        interleaved({"child": lambda: (100.0, 0.0)}, baseline="child", clock=clock, cpu_clock=FakeClock())
