"""Traces of many devices at once (counter streams): the models' statistics, the trace
format, one device's trace whatever batch it is made in, and DeviceTrace buffers equal
to those the per-device constructor builds."""

from __future__ import annotations

import numpy as np
import pytest

from fleetsim.traces import batch, counter
from fleetsim.traces.device import DeviceTrace
from fleetsim.traces.generators import GENERATORS

WEEK = 7 * 86400.0
K = counter.key(11, "trace-counter")


def gen(name: str, **opts: object):  # type: ignore[no-untyped-def]
    cls = GENERATORS.get(name)
    return cls(cls.Options(**opts))


MARKOV = dict(levels=[1.0, 0.5, 0.2], mean_dwell_s=600.0, mean_online_s=14400.0,
              mean_offline_s=1800.0)
CASES = {
    "markov week": (gen("markov", **MARKOV), WEEK),
    # 3 h with 10-minute dwells: blocks of 43 breakpoints, so some rows need a second
    "markov short": (gen("markov", **MARKOV), 3 * 3600.0),
    "markov jumps": (gen("markov", levels=[1.0, 0.4, 0.1], mean_dwell_s=[300.0, 900.0, 60.0],
                         jump=[[0, 0.9, 0.1], [0.5, 0, 0.5], [1.0, 0, 0]],
                         mean_online_s=3600.0, mean_offline_s=600.0), 86400.0),
    "markov one level": (gen("markov", levels=[0.7]), 86400.0),
    # blocks sized by the time-weighted mean dwell (~10,000 s) hold ~1.5 x h / 9,990
    # periods, but periods average (10 + 10,000) / 2 s: nearly every row needs more blocks
    "markov uneven": (gen("markov", levels=[1.0, 0.2], mean_dwell_s=[10.0, 10_000.0]),
                      10 * 86400.0),
    "constant": (gen("constant", level=0.4, mean_online_s=900.0, mean_offline_s=300.0),
                 6 * 3600.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rows_are_valid_traces(case: str) -> None:
    g, h = CASES[case]
    b = batch.make(g, np.arange(400) * 31, h, K)
    levels = set(np.asarray(g.options.levels if hasattr(g.options, "levels")
                            else [g.options.level], float).tolist())
    for i in range(400):
        s = b.row(i)
        for t in (s.avail_t, s.online_t):
            assert t[0] == 0.0 and t[-1] < h and np.all(np.diff(t) > 0)
        assert set(s.avail_v.tolist()) <= levels
        assert set(s.online_v.tolist()) <= {0, 1}


@pytest.mark.parametrize("case", list(CASES))
def test_a_device_gets_the_same_trace_in_any_batch(case: str) -> None:
    g, h = CASES[case]
    devices = np.array([3, 17, 999_999, 40, 5])
    together = batch.make(g, devices, h, K)
    for pos in (0, 2, 4):
        alone = batch.make(g, devices[pos:pos + 1], h, K).row(0)
        row = together.row(pos)
        for a in ("avail_t", "avail_v", "online_t", "online_v"):
            assert np.array_equal(getattr(row, a), getattr(alone, a)), a
    other_seed = batch.make(g, devices[:1], h, counter.key(12, "trace-counter")).row(0)
    assert not np.array_equal(other_seed.online_t, together.row(0).online_t) or \
        not np.array_equal(other_seed.avail_t, together.row(0).avail_t)


def test_rows_grow_block_by_block_until_they_reach_the_horizon() -> None:
    """Rows whose first block of breakpoints ends before the horizon get more blocks: the
    mean number of periods matches the model (1 + h / mean period length)."""
    g, h = CASES["markov uneven"]
    b = batch.make(g, np.arange(3000), h, K)
    n_block = int(h / float(np.dot(g.stationary, g.dwell)) * 1.5) + 16
    assert (b.avail_len > n_block).mean() > 0.9  # most rows needed a second block
    # alternating dwells of mean 10 s and 10,000 s: periods start every 5,005 s on average
    assert abs(b.avail_len.mean() / (1 + h / 5005.0) - 1.0) < 0.01


def test_markov_statistics_follow_the_model() -> None:
    """Time share per level, the first level, and the on/off share, over 2,000 devices:
    the model's stationary values (the per-device generator's own formulas)."""
    g, h = CASES["markov jumps"]
    d = 2000
    b = batch.make(g, np.arange(d), h, K)
    levels = np.asarray(g.options.levels)
    share = np.zeros(len(levels))
    first = np.zeros(len(levels))
    on_share = 0.0
    for i in range(d):
        s = b.row(i)
        seg = np.diff(np.append(s.avail_t, h))
        for j, lv in enumerate(levels):
            share[j] += seg[s.avail_v == lv].sum() / h
        first[np.flatnonzero(levels == s.avail_v[0])[0]] += 1
        oseg = np.diff(np.append(s.online_t, h))
        on_share += oseg[s.online_v == 1].sum() / h
    want = g.stationary_time_share()
    assert np.allclose(share / d, want, atol=0.01)
    assert np.allclose(first / d, want, atol=0.03)
    assert abs(on_share / d - 3600 / 4200) < 0.01


def test_on_off_periods_alternate_with_their_mean_lengths() -> None:
    # online 3,600 s and offline 600 s on average; 30 days, so that the periods cut off
    # by the horizon (which bias the whole ones short) weigh little
    g, h = gen("constant", mean_online_s=3600.0, mean_offline_s=600.0), 30 * 86400.0
    b = batch.make(g, np.arange(300), h, K)
    lengths: dict[int, list[float]] = {0: [], 1: []}
    for i in range(300):
        s = b.row(i)
        assert np.all(s.online_v[1:] != s.online_v[:-1])  # each change flips the state
        inner = np.diff(s.online_t)[1:]  # whole periods: not the first (cut at 0)
        for v, d in zip(s.online_v[1:-1], inner):
            lengths[int(v)].append(float(d))
    assert abs(np.mean(lengths[1]) / 3600.0 - 1.0) < 0.02
    assert abs(np.mean(lengths[0]) / 600.0 - 1.0) < 0.02


def test_constant_and_always_online() -> None:
    b = batch.make(gen("constant", level=0.25), np.arange(3), 3600.0, K)
    assert b.row(2).avail_v.tolist() == [0.25] and b.row(2).online_v.tolist() == [1]


def test_generators_without_a_counter_form_say_so() -> None:
    assert batch.supports(gen("diurnal")) is not None
    het = gen("markov", levels=[1.0, 0.5], mean_dwell_s={"dist": "uniform", "low": 60,
                                                         "high": 600})
    assert "distribution" in batch.supports(het)
    with pytest.raises(ValueError, match="counter-stream"):
        batch.make(gen("bursty"), np.arange(2), 3600.0, K)


@pytest.mark.parametrize("case", list(CASES))
def test_device_traces_equal_the_per_device_constructor(case: str) -> None:
    g, h = CASES[case]
    b = batch.make(g, np.arange(200) * 7, h, K)
    for i, fast in enumerate(batch.device_traces(b, h)):
        s = b.row(i)
        ref = DeviceTrace(s.avail_t, s.avail_v, s.online_t, s.online_v, h)
        for slot in DeviceTrace.__slots__:
            x, y = getattr(fast, slot), getattr(ref, slot)
            same = x.tobytes() == y.tobytes() if hasattr(x, "tobytes") else x == y
            assert same, (slot, i)


def test_device_traces_of_devices_never_or_always_offline() -> None:
    t = np.array([[0.0, 10.0], [0.0, 0.0]])
    b = batch.BatchSignals(t, np.array([[1.0, 0.5], [0.3, 0.0]]), np.array([2, 1]),
                           np.array([[0.0, 5.0, 7.0], [0.0, 0.0, 0.0]]),
                           np.array([[1, 0, 1], [0, 0, 0]], np.uint8), np.array([3, 1]))
    for i, fast in enumerate(batch.device_traces(b, 20.0)):
        s = b.row(i)
        ref = DeviceTrace(s.avail_t, s.avail_v, s.online_t, s.online_v, 20.0)
        assert fast.next_offline(0.0) == ref.next_offline(0.0)
        assert fast.next_offline(8.0) == ref.next_offline(8.0)
        assert fast.finish_time(1.0, 3.0) == ref.finish_time(1.0, 3.0)
        assert fast._first_off == ref._first_off and fast.nbytes == ref.nbytes


def test_repeated_times_keep_the_last_value() -> None:
    """A period too short to move the time (vanishingly rare with real draws) is dropped:
    times rise strictly, and the value at a repeated time is the later one's."""
    t = np.array([[0.0, 5.0, 5.0, 9.0, 99.0], [0.0, 1.0, 2.0, 3.0, 0.0]])
    v = np.array([[1, 2, 3, 4, 0], [1, 2, 3, 4, 0]])
    tt, vv, n = batch._dedupe(t.copy(), v.copy(), np.array([4, 4]))
    assert n.tolist() == [3, 4]
    assert tt[0, :3].tolist() == [0.0, 5.0, 9.0] and vv[0, :3].tolist() == [1, 3, 4]
    assert tt[1].tolist() == t[1].tolist()


def test_a_shorter_horizon_gives_the_first_part_of_a_longer_one() -> None:
    """Counter numbers are indexed by breakpoint, so a one-day trace starts as the
    one-week trace of the same device does: what a run of a few hours reads is the same.
    (Further on they may differ in the last bits: a row that needs a second block of
    breakpoints adds its times from where the first ended.)"""
    g = gen("markov", **MARKOV)
    day = batch.make(g, np.arange(200), 86400.0, K)
    week = batch.make(g, np.arange(200), WEEK, K)
    for i in range(200):
        a, b = day.row(i), week.row(i)
        for t, v, u, w in ((a.avail_t, a.avail_v, b.avail_t, b.avail_v),
                           (a.online_t, a.online_v, b.online_t, b.online_v)):
            n = int((u < 6 * 3600.0).sum())
            assert np.array_equal(t[:n], u[:n]) and np.array_equal(v[:n], w[:n])
            assert len(t) == n or t[n] >= 6 * 3600.0


def test_no_devices_make_an_empty_batch() -> None:
    b = batch.make(gen("markov", **MARKOV), np.zeros(0, np.int64), 3600.0, K)
    assert len(b.avail_len) == 0 and batch.device_traces(b, 3600.0) == []
