"""``DeviceTrace.advance`` ends each step where ``finish_time`` does, step after step,
and stops before the first step that would end after the limit (or never)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fleetsim.traces.device import DeviceTrace

INF = math.inf


def step_by_step(tr: DeviceTrace, t: float, w: float, n: int, limit: float
                 ) -> tuple[float, int, float]:
    """The engine's loop as it was: one finish_time call per step."""
    done = 0
    while done < n:
        t_next = tr.finish_time(t, w)
        if t_next > limit or t_next == INF:
            return t, done, t_next
        t, done = t_next, done + 1
    return t, done, t


def traces(seed: int) -> list[DeviceTrace]:
    rng = np.random.default_rng(seed)
    out = []
    for period in (None, 1000.1, 3600.0):
        k = int(rng.integers(1, 30))
        t = np.concatenate([[0.0], np.sort(rng.uniform(0, 999.0, k - 1))])
        t = np.unique(t)
        v = rng.choice([0.0, 0.05, 0.3, 1.0], len(t))
        if period is None:
            v[-1] = max(v[-1], 0.1)  # a non-periodic trace's last value holds for ever
        out.append(DeviceTrace(t, v, np.zeros(1), np.ones(1, np.uint8), period))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_advance_equals_finish_time_step_by_step(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    for tr in traces(seed):
        for _ in range(20):
            t0 = float(rng.choice([0.0, rng.uniform(0, 5000), 1000.1 * 3]))
            w = float(rng.choice([1e-3, rng.uniform(0.1, 50), 400.0]))
            n = int(rng.integers(0, 40))
            limit = float(rng.choice([INF, t0 + rng.uniform(0, 2000)]))
            assert tr.advance(t0, w, n, limit) == step_by_step(tr, t0, w, n, limit)


def test_a_step_ending_exactly_at_the_limit_fits() -> None:
    tr = DeviceTrace(np.array([0.0]), np.array([0.5]), np.zeros(1), np.ones(1, np.uint8),
                     100.0)
    assert tr.advance(0.0, 5.0, 3, 20.0) == (20.0, 2, 30.0)  # 10 s a step at half speed
    assert tr.advance(0.0, 5.0, 2, 20.0) == (20.0, 2, 20.0)


def test_a_trace_that_never_adds_work_stops_at_once() -> None:
    never = DeviceTrace(np.array([0.0]), np.array([0.0]), np.zeros(1), np.ones(1, np.uint8),
                        60.0)
    assert never.advance(3.0, 1.0, 5, INF) == (3.0, 0, INF)
    stall = DeviceTrace(np.array([0.0, 10.0]), np.array([1.0, 0.0]), np.zeros(1),
                        np.ones(1, np.uint8), None)
    assert stall.advance(0.0, 4.0, 5, INF) == (8.0, 2, INF)  # non-periodic: stalls at 10


def test_work_that_ends_exactly_at_a_periods_total() -> None:
    """Idle until 50 s of a 100 s period: 40 s of work from 60 s is the period's total
    work exactly, done at 100 s (not at 150 s, where the next period's work would end)."""
    tr = DeviceTrace(np.array([0.0, 50.0]), np.array([0.0, 1.0]), np.zeros(1),
                     np.ones(1, np.uint8), 100.0)
    assert tr.finish_time(60.0, 40.0) == 100.0
    assert tr.advance(60.0, 40.0, 1, INF) == (100.0, 1, 100.0)
