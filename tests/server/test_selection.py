"""Selectors: random, Oort, TiFL."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from fleetsim.server.selection import (
    SELECTORS,
    DeviceReport,
    FleetView,
    OortOptions,
    OortSelector,
    RandomOptions,
    RandomSelector,
    TiFLOptions,
    TiFLSelector,
    permutation,
)


def view(n: int, classes: list[int] | None = None) -> FleetView:
    return FleetView(n, np.asarray(classes or [0] * n), np.full(n, 100))


def report(d: int, r: int, dur: float, loss: float = 1.0, status: str = "completed",
           steps: int = 10) -> DeviceReport:
    return DeviceReport(d, r, status, dur, loss, steps, 100)


def test_registered() -> None:
    assert {"random", "oort", "tifl"} <= set(SELECTORS.names())


# ----------------------------------------------------------------------- random


def test_random_selects_n_distinct_online_devices() -> None:
    s = RandomSelector(RandomOptions(), view(20))
    rng = np.random.default_rng(0)
    picks = [s.select(r, 0.0, 5, lambda d: d % 2 == 0, rng) for r in range(50)]
    assert all(len(p) == len(set(p)) == 5 and all(d % 2 == 0 for d in p) for p in picks)
    assert len({d for p in picks for d in p}) == 10  # every online device gets a turn
    assert len(s.select(0, 0.0, 5, lambda d: d == 3, rng)) == 1


def test_random_draws_takes_the_first_online_of_8k_random_ids() -> None:
    s = RandomSelector(RandomOptions(candidates="draws"), view(1000))
    online = lambda d: d % 3 != 0  # noqa: E731
    for r in range(20):
        got = s.select(r, 0.0, 10, online, np.random.default_rng(r))
        want: list[int] = []
        for d in np.random.default_rng(r).integers(0, 1000, size=80).tolist():
            if d not in want and online(d) and len(want) < 10:
                want.append(d)
        assert got == want
    # uniform among the online devices: over many rounds each is picked about as often
    counts = Counter(d for r in range(300)
                     for d in s.select(r, 0.0, 10, online, np.random.default_rng(r)))
    assert set(counts) <= {d for d in range(1000) if online(d)}
    assert len(counts) > 600 and max(counts.values()) < 15  # mean 4.5 of 666


def test_random_draws_falls_back_to_a_permutation_when_few_are_online() -> None:
    s = RandomSelector(RandomOptions(candidates="draws"), view(1000))
    got = s.select(0, 0.0, 3, lambda d: d in (5, 500, 999), np.random.default_rng(0))
    assert sorted(got) == [5, 500, 999]


# ----------------------------------------------------------------------- Oort


def oort_with_history(**opts: float) -> OortSelector:
    """30 explored devices (0-9 high loss + fast, 10-19 high loss + slow, 20-29 low loss +
    fast) and 10 unexplored ones (30-39)."""
    s = OortSelector(OortOptions(preferred_duration_s=20.0, **opts), view(40))
    s.feedback([report(d, 0, 10.0 if d < 10 or d >= 20 else 100.0,
                       3.0 if d < 20 else 0.1) for d in range(30)])
    return s


def test_oort_prefers_high_loss_fast_devices() -> None:
    s = oort_with_history()
    rng = np.random.default_rng(0)
    count: Counter[str] = Counter()
    for r in range(100, 160):  # epsilon is at its floor
        for d in s.select(r, 0.0, 10, lambda d: True, rng):
            count["good" if d < 10 else "slow" if d < 20 else "low" if d < 30 else "new"] += 1
    assert count["good"] > 3 * max(count["slow"], count["low"])


def test_oort_still_explores() -> None:
    s = oort_with_history()
    rng = np.random.default_rng(1)
    early = s.select(1, 0.0, 10, lambda d: True, rng)
    assert sum(d >= 30 for d in early) >= 8  # epsilon ~0.88: mostly exploration
    for r in range(100, 120):  # epsilon at its floor 0.2: still 2 of 10 unexplored
        assert sum(d >= 30 for d in s.select(r, 0.0, 10, lambda d: True, rng)) == 2


def test_oort_epsilon_decays_to_its_floor() -> None:
    s = OortSelector(OortOptions(), view(5))
    assert s.epsilon(0) == pytest.approx(0.9)
    assert s.epsilon(1) == pytest.approx(0.9 * 0.98)
    assert s.epsilon(1000) == pytest.approx(0.2)


def test_oort_speed_penalty_and_staleness() -> None:
    s = oort_with_history(alpha=2.0)
    sc = s.scores(5, np.arange(30))
    # same loss, 10x slower than T=20 s... (100 s is 5x T): penalty (20/100)^2
    assert sc[10] == pytest.approx(sc[0] * (20 / 100) ** 2)
    s.last_round[0] = 4  # device 0 took part recently: a smaller staleness bonus
    sc2 = s.scores(5, np.arange(30))
    assert sc2[0] < sc2[1]
    assert sc2[1] - sc[1] == pytest.approx(0.0)


def test_oort_timing_only_stand_in_uses_work_done() -> None:
    s = OortSelector(OortOptions(), view(3))
    s.feedback([report(0, 0, 5.0, math.nan, steps=10), report(1, 0, 5.0, math.nan, steps=4),
                report(2, 0, 5.0, math.nan, status="dropped", steps=0)])
    assert list(s.utility) == [10.0, 4.0, 0.0]
    assert math.isnan(s.duration_s[2])  # going offline says nothing about speed
    assert s.explored.all()


def test_oort_pacer_relaxes_t_when_utility_stalls() -> None:
    s = OortSelector(OortOptions(pacer_step=2, epsilon=0.0, epsilon_min=0.0), view(10))
    s.feedback([report(d, 0, float(d + 1)) for d in range(10)])
    t0 = s.preferred_s()
    rng = np.random.default_rng(0)
    for r in range(1, 9):
        s.select(r, 0.0, 3, lambda d: True, rng)
    assert s.threshold > 30.0 and s.preferred_s() > t0


def test_oort_copes_with_few_online_devices() -> None:
    s = oort_with_history()
    rng = np.random.default_rng(0)
    assert sorted(s.select(50, 0.0, 10, lambda d: d in (3, 31), rng)) == [3, 31]
    assert s.select(50, 0.0, 10, lambda d: False, rng) == []


# ----------------------------------------------------------------------- TiFL


def tifl(**opts: object) -> TiFLSelector:
    s = TiFLSelector(TiFLOptions(tiers=3, profile_rounds=0, **opts), view(30))  # type: ignore[arg-type]
    s.feedback([report(d, 0, float(d + 1)) for d in range(30)])  # latency grows with id
    return s


def test_tifl_tiers_by_latency() -> None:
    tiers = tifl().tiers()
    assert [t.tolist() for t in tiers] == [list(range(10)), list(range(10, 20)),
                                           list(range(20, 30))]


def test_tifl_selects_within_one_tier() -> None:
    s = tifl()
    rng = np.random.default_rng(0)
    chosen = Counter()
    for r in range(60):
        picks = s.select(r, 0.0, 5, lambda d: True, rng)
        assert len(picks) == 5 and len({d // 10 for d in picks}) == 1
        assert s.last_tier == picks[0] // 10
        chosen[s.last_tier] += 1
    assert set(chosen) == {0, 1, 2}


def test_tifl_tier_probabilities() -> None:
    s = tifl(probabilities=(0.0, 1.0, 0.0))
    rng = np.random.default_rng(0)
    for r in range(20):
        assert all(10 <= d < 20 for d in s.select(r, 0.0, 5, lambda d: True, rng))


def test_tifl_fills_from_the_nearest_tier_when_short() -> None:
    s = tifl(probabilities=(1.0, 0.0, 0.0))
    picks = s.select(0, 0.0, 5, lambda d: d in (1, 2, 12, 13, 14, 25), np.random.default_rng())
    assert sorted(picks) == [1, 2, 12, 13, 14]


def test_tifl_profiles_first_and_uses_class_means_for_unseen() -> None:
    s = TiFLSelector(TiFLOptions(tiers=2, profile_rounds=1), view(6, [0, 0, 0, 1, 1, 1]))
    s.select(0, 0.0, 2, lambda d: True, np.random.default_rng())
    assert s.last_tier is None  # profiling: random
    s.feedback([report(0, 0, 1.0), report(3, 0, 50.0), report(4, 0, 9.0, status="dropped")])
    est = s.estimates()
    assert est.tolist() == [1.0, 1.0, 1.0, 50.0, 50.0, 50.0]
    assert [t.tolist() for t in s.tiers()] == [[0, 1, 2], [3, 4, 5]]


def test_tifl_options_are_checked() -> None:
    with pytest.raises(ValidationError):
        TiFLOptions(tiers=3, probabilities=(0.5, 0.5))
    with pytest.raises(ValidationError):
        TiFLOptions(tiers=2, probabilities=(0.7, 0.7))


def test_oort_checks_only_a_window_of_a_huge_fleet() -> None:
    s = OortSelector(OortOptions(), view(100_000))
    calls: list[int] = []

    def online(d: int) -> bool:
        calls.append(d)
        return True

    picks = s.select(0, 0.0, 10, online, np.random.default_rng(0))
    assert len(picks) == 10 and len(calls) <= 5 * 10


@pytest.mark.parametrize("n", [1, 2, 1000, 100_003])
def test_permutation_is_numpys_with_the_same_draws(n: int) -> None:
    ours, numpys = np.random.default_rng(n), np.random.default_rng(n)
    got = permutation(ours, n)
    assert got.tolist() == numpys.permutation(n).tolist()
    assert ours.random() == numpys.random()  # the streams go on alike
