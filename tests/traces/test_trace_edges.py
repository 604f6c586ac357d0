"""Edge cases of the trace functions: infinite times, stalls, non-periodic tails, and
times at period boundaries that binary floating point cannot place exactly.

Expected values are worked out by hand, or with exact rational arithmetic
(:class:`fractions.Fraction`), never by a second path through the code under test.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

from fleetsim.traces import DeviceTrace, VectorIntegrator
from tests.conftest import make_traces

INF = math.inf
P = 1000.1  # a period binary floating point cannot represent


def scalar(avail: tuple[list[float], list[float]], period: float | None,
           online: tuple[list[float], list[int]] = ([0.0], [1])) -> DeviceTrace:
    return DeviceTrace(np.array(avail[0]), np.array(avail[1]), np.array(online[0], float),
                       np.array(online[1]), period)


def vector(avail: list[tuple[list[float], list[float]]], period: float | None,
           online: list[tuple[list[float], list[int]]] | None = None) -> VectorIntegrator:
    return VectorIntegrator(make_traces(avail, online, period_s=period))


def boundary_times(n: int = 400) -> list[float]:
    """Times at, just below and just above k * P, and the decimal k * 1000.1 (as a FedScale
    file writes it), for k = 1 .. n."""
    out = []
    for k in range(1, n + 1):
        kp = k * P
        out += [kp, math.nextafter(kp, 0.0), math.nextafter(kp, INF),
                float(Decimal(k) * Decimal("1000.1"))]
    return out


def exact_offset(t: float, p: float) -> tuple[int, Fraction]:
    """floor(t / p) and t - floor(t / p) * p in exact arithmetic."""
    ft, fp = Fraction(t), Fraction(p)
    q = math.floor(ft / fp)
    return q, ft - q * fp


# ----------------------------------------------------------------------------- 1, 2: inf


CUM_INF_CASES = [
    # (avail, period, cumulative(inf)) worked by hand
    (([0.0], [0.0]), 100.0, 0.0),  # never any availability: the total stays 0
    (([0.0, 40.0], [0.0, 0.0]), 100.0, 0.0),
    (([0.0, 40.0], [0.5, 0.0]), 100.0, INF),  # adds 20 s each period
    (([0.0, 10.0, 20.0], [1.0, 0.5, 0.0]), None, 15.0),  # 10 + 5, then stalls for ever
    (([0.0], [0.0]), None, 0.0),
    (([0.0, 10.0], [0.0, 0.25]), None, INF),
]


@pytest.mark.parametrize(("avail", "period", "want"), CUM_INF_CASES)
def test_cumulative_at_infinity_scalar(avail: tuple[list[float], list[float]],
                                       period: float | None, want: float) -> None:
    assert scalar(avail, period).cumulative(INF) == want


@pytest.mark.parametrize(("avail", "period", "want"), CUM_INF_CASES)
def test_cumulative_at_infinity_vector(avail: tuple[list[float], list[float]],
                                       period: float | None, want: float) -> None:
    # the device of interest second, so a wrong slice would read device 0's numbers
    vi = vector([([0.0], [0.75]), avail], period)
    got = vi.cumulative(np.array([1, 1, 0]), np.array([INF, 0.0, INF]))
    assert got[0] == want and got[1] == 0.0 and got[2] == INF


def test_work_done_by_a_stalled_step_is_finite() -> None:
    """The engine's share of a step done by ``end`` when the step never finishes."""
    tr = scalar(([0.0, 10.0, 20.0], [1.0, 0.5, 0.0]), None)
    t1 = tr.finish_time(5.0, 100.0)
    assert t1 == INF
    # work done from 5 s on: 5 (rest of the first segment) + 5 = 10 s, and no more
    assert tr.cumulative(t1) - tr.cumulative(5.0) == 10.0
    assert tr.cumulative(12.0) - tr.cumulative(5.0) == 6.0


def test_all_zero_period_never_finishes_without_crashing() -> None:
    tr = scalar(([0.0, 30.0], [0.0, 0.0]), 100.0, ([0.0, 50.0], [1, 0]))
    assert tr.finish_time(12.0, 1.0) == INF
    assert tr.cumulative(INF) - tr.cumulative(12.0) == 0.0
    assert tr.mean_availability() == 0.0
    vi = vector([([0.0, 30.0], [0.0, 0.0])], 100.0)
    assert vi.finish_time(np.array([0]), np.array([12.0]), np.array([1.0]))[0] == INF
    assert vi.cumulative(np.array([0]), np.array([INF]))[0] == 0.0


@pytest.mark.parametrize("period", [None, 100.0])
def test_infinite_inputs_give_infinite_or_limit_answers(period: float | None) -> None:
    avail = ([0.0, 10.0], [1.0, 0.5])
    online = ([0.0, 20.0], [1, 0])
    tr = scalar(avail, period, online)
    vi = vector([avail], period, [online])
    d = np.array([0])
    assert tr.finish_time(INF, 1.0) == INF
    assert tr.finish_time(3.0, INF) == INF
    assert tr.finish_time(INF, 0.0) == INF  # no work ends where it starts
    assert tr.next_offline(INF) == INF
    assert vi.finish_time(d, np.array([INF]), np.array([1.0]))[0] == INF
    assert vi.finish_time(d, np.array([3.0]), np.array([INF]))[0] == INF
    assert vi.next_offline(d, np.array([INF]))[0] == INF
    if period is None:  # the last values hold for ever: the limit exists
        assert tr.availability_at(INF) == 0.5 and not tr.online_at(INF)
        assert vi.availability_at(d, np.array([INF]))[0] == 0.5
        assert not vi.online_at(d, np.array([INF]))[0]
    else:  # a periodic signal has no value at infinity: a clear error, not a guess
        for f in (tr.availability_at, tr.online_at, tr.online_signal().online_at):
            with pytest.raises(ValueError, match="periodic"):
                f(INF)
        for g in (vi.availability_at, vi.online_at):
            with pytest.raises(ValueError, match="periodic"):
                g(d, np.array([INF]))


@pytest.mark.parametrize("bad", [math.nan, -1.0, -INF])
@pytest.mark.parametrize("period", [None, 100.0])
def test_nan_and_negative_times_are_errors(bad: float, period: float | None) -> None:
    tr = scalar(([0.0, 10.0], [1.0, 0.5]), period)
    vi = vector([([0.0, 10.0], [1.0, 0.5])], period)
    d = np.array([0])
    for f in (tr.availability_at, tr.online_at, tr.cumulative, tr.next_offline,
              lambda t: tr.finish_time(t, 1.0)):
        with pytest.raises(ValueError, match="time"):
            f(bad)
    for g in (vi.availability_at, vi.online_at, vi.cumulative, vi.next_offline,
              lambda dd, t: vi.finish_time(dd, t, np.ones(1))):
        with pytest.raises(ValueError, match="time"):
            g(d, np.array([bad]))
    with pytest.raises(ValueError, match="work"):
        tr.finish_time(1.0, math.nan)
    with pytest.raises(ValueError, match="work"):
        vi.finish_time(d, np.ones(1), np.array([math.nan]))


# ----------------------------------------------------------------------------- 3: tails


def test_non_periodic_cumulative_holds_the_last_value() -> None:
    # 1.0 on [0, 10), then 0.25 for ever: cumulative(30) = 10 + 0.25 * 20 = 15
    tr = scalar(([0.0, 10.0], [1.0, 0.25]), None)
    assert tr.cumulative(30.0) == 15.0
    assert tr.cumulative(10.0) == 10.0
    assert tr.cumulative(4.0) == 4.0
    assert tr.cumulative(0.0) == 0.0
    vi = vector([([0.0], [0.5]), ([0.0, 10.0], [1.0, 0.25])], None)
    assert vi.cumulative(np.array([1, 1, 0]), np.array([30.0, 4.0, 30.0])).tolist() == \
        [15.0, 4.0, 15.0]


def test_mean_availability_is_the_long_run_mean() -> None:
    # periodic: (1.0 * 10 + 0.25 * 30) / 40
    assert scalar(([0.0, 10.0], [1.0, 0.25]), 40.0).mean_availability() == 0.4375
    # non-periodic: the last value holds for ever, so the long-run mean is that value
    assert scalar(([0.0, 10.0], [1.0, 0.25]), None).mean_availability() == 0.25
    assert scalar(([0.0, 10.0], [1.0, 0.0]), None).mean_availability() == 0.0
    # over a given horizon: (10 + 0.25 * 10) / 20 and (17.5 + 10) / 50
    assert scalar(([0.0, 10.0], [1.0, 0.25]), None).mean_availability(20.0) == 0.625
    assert scalar(([0.0, 10.0], [1.0, 0.25]), 40.0).mean_availability(50.0) == 0.55
    with pytest.raises(ValueError, match="horizon"):
        scalar(([0.0], [1.0]), None).mean_availability(0.0)


# ----------------------------------------------------------------------------- 4: periods


def _expected_value(t: float, breaks: list[float], values: list[float]) -> float:
    _, r = exact_offset(t, P)
    k = max(i for i, b in enumerate(breaks) if Fraction(b) <= r)
    return values[k]


def test_availability_and_online_at_period_boundaries() -> None:
    # first and last segments differ, so reading the wrong one shows
    breaks, values = [0.0, 1.0, 600.0], [0.25, 0.5, 1.0]
    on_breaks, on_values = [0.0, 1.0, 600.0], [0, 1, 0]
    tr = scalar((breaks, values), P, (on_breaks, on_values))
    times = boundary_times()
    for t in times:
        assert tr.availability_at(t) == _expected_value(t, breaks, values), t
        assert tr.online_at(t) == bool(_expected_value(t, on_breaks, on_values)), t
    # vectorised: device 1 after a device whose last value (0.75) would leak in
    vi = vector([([0.0], [0.75]), (breaks, values)], P,
                [([0.0], [1]), (on_breaks, on_values)])
    dev = np.ones(len(times), np.int64)
    av = vi.availability_at(dev, np.array(times))
    on = vi.online_at(dev, np.array(times))
    for t, a, o in zip(times, av, on):
        assert a == _expected_value(t, breaks, values), t
        assert o == bool(_expected_value(t, on_breaks, on_values)), t


def test_next_offline_at_period_boundaries() -> None:
    # online on [0, 500), offline on [500, P): just before a period start it is offline
    online = ([0.0, 500.0], [1, 0])
    tr = scalar(([0.0], [1.0]), P, online)
    vi = vector([([0.0], [1.0]), ([0.0], [1.0])], P, [([0.0], [1]), online])
    times = boundary_times()
    got = vi.next_offline(np.ones(len(times), np.int64), np.array(times))
    for t, g in zip(times, got):
        q, r = exact_offset(t, P)
        want = t if r >= 500 else float((q * Fraction(P)) + 500)
        assert tr.next_offline(t) == pytest.approx(want, abs=1e-6), t
        assert g == pytest.approx(want, abs=1e-6), t


def test_finish_time_at_period_boundaries() -> None:
    # availability 0 on [0, 500), 1 on [500, P): 10 s of work started at offset r ends at
    # offset 510 of the same period when r < 500, else (P - r) later into the next one
    avail = ([0.0, 500.0], [0.0, 1.0])
    tr = scalar(avail, P)
    vi = vector([([0.0], [1.0]), avail], P)
    times = boundary_times()
    got = vi.finish_time(np.ones(len(times), np.int64), np.array(times), np.full(len(times),
                                                                                  10.0))
    for t, g in zip(times, got):
        q, r = exact_offset(t, P)
        if r < 500:
            want = q * Fraction(P) + 510
        else:
            left = Fraction(P) - r  # work done before the period ends
            want = (q + 1) * Fraction(P) + 500 + (10 - left)
        assert tr.finish_time(t, 10.0) == pytest.approx(float(want), abs=1e-6), t
        assert g == pytest.approx(float(want), abs=1e-6), t


def test_finish_time_splits_work_by_whole_periods_exactly() -> None:
    # availability 1 on [0, a), 0 on [a, p): the work target x + w is split into whole
    # periods of a seconds each. Rounding in that split used to give inf (the zero tail).
    a, p = 0.01, 0.08
    tr = scalar(([0.0, a], [1.0, 0.0]), p)
    vi = vector([([0.0, a], [1.0, 0.0])], p)
    rng = np.random.default_rng(0)
    xs, ws, wants = [], [], []
    for k in range(1, 3000):
        x = float(rng.uniform(0, a))
        w = k * a - x
        # the work target is x + w rounded once to float64 (cumulative(x) = x here): the
        # finish time jumps over the zero tail at multiples of a, so that rounding decides
        # which side of the jump is right; the rest is exact
        target = Fraction(x + w)
        m = math.ceil(target / Fraction(a)) - 1  # whole periods before the last piece
        wants.append(float(m * Fraction(p) + target - m * Fraction(a)))
        xs.append(x)
        ws.append(w)
    got = vi.finish_time(np.zeros(len(xs), np.int64), np.array(xs), np.array(ws))
    for x, w, want, g in zip(xs, ws, wants, got):
        assert tr.finish_time(x, w) == pytest.approx(want, rel=1e-12, abs=1e-12), (x, w)
        assert g == pytest.approx(want, rel=1e-12, abs=1e-12), (x, w)


def test_cumulative_at_period_boundaries() -> None:
    # 0.5 on [0, 1), 1 on [1, P): per period 0.5 + (P - 1)
    avail = ([0.0, 1.0], [0.5, 1.0])
    tr = scalar(avail, P)
    vi = vector([([0.0], [0.2]), avail], P)
    times = boundary_times()
    got = vi.cumulative(np.ones(len(times), np.int64), np.array(times))
    per = Fraction(1, 2) + Fraction(P) - 1
    for t, g in zip(times, got):
        q, r = exact_offset(t, P)
        want = float(q * per + (r / 2 if r < 1 else Fraction(1, 2) + r - 1))
        assert tr.cumulative(t) == pytest.approx(want, rel=1e-12), t
        assert g == pytest.approx(want, rel=1e-12), t


@pytest.mark.parametrize("period", [P, 1e8 + 0.1, None])
def test_finish_time_is_never_before_the_start(period: float | None) -> None:
    # far from 0 the integral's rounding (~1e-8 s at t ~ 1e8 s) exceeds tiny steps of work
    avail = ([0.0, 1.0, 2.5], [0.3, 1.0, 0.7])
    tr = scalar(avail, period, ([0.0, 2.0], [1, 0]))
    vi = vector([avail], period, [([0.0, 2.0], [1, 0])])
    rng = np.random.default_rng(1)
    t0 = np.concatenate([boundary_times(200), rng.uniform(0, 1e8, 3000)])
    work = 10 ** rng.uniform(-15, -6, len(t0))
    fin = vi.finish_time(np.zeros(len(t0), np.int64), t0, work)
    nxt = vi.next_offline(np.zeros(len(t0), np.int64), t0)
    assert np.all(fin >= t0) and np.all(nxt >= t0)
    for t, w in zip(t0.tolist(), work.tolist()):
        assert tr.finish_time(t, w) >= t
        assert tr.next_offline(t) >= t
