"""The Markov and on/off generators, written for speed, equal their plain form bit for bit.

The plain forms below are the generators as first written (``rng.choice`` for the first
state, a boolean mask for the breakpoints before the horizon, Python lists for the on/off
periods): every existing scenario's traces, and so its results, depend on these bits.
"""

from __future__ import annotations

from bisect import bisect_right

import numpy as np
import pytest

from fleetsim.rng import stream
from fleetsim.traces.generators import GENERATORS, alternating_online


def plain_online(rng, horizon_s, on_s, off_s):
    if off_s <= 0.0:
        return np.zeros(1), np.ones(1, np.uint8)
    state = bool(rng.random() < on_s / (on_s + off_s))
    n = int(horizon_s / (on_s + off_s) * 2 + 8)
    times, states, t = [0.0], [state], 0.0
    while True:
        means = np.where((np.arange(n) % 2 == 0) == state, on_s, off_s)
        ends = t + np.cumsum(rng.standard_exponential(n) * means)
        keep = ends < horizon_s
        k = int(keep.sum())
        times.extend(ends[:k].tolist())
        states.extend(((np.arange(1, k + 1) % 2 == 1) != state).tolist())
        if k < n:
            break
        t, state = float(ends[-1]), states[-1]
    return np.asarray(times), np.asarray(states, np.uint8)


def plain_markov(levels, dwell, jump, on_s, off_s, horizon_s, rng):
    m = len(levels)
    levels, dwell = np.asarray(levels, float), np.broadcast_to(np.asarray(dwell, float), (m,))
    gen = GENERATORS.get("markov")
    chain = gen(gen.Options(levels=tuple(levels), mean_dwell_s=tuple(dwell), jump=jump))
    p, stationary = chain.jump, chain.stationary

    def walk(s0, n):
        if m == 1:
            return np.zeros(n, np.int64)
        if jump is None:
            return (s0 + np.concatenate([[0], np.cumsum(rng.integers(1, m, size=n - 1))])) % m
        out, s, cdf = [s0], s0, np.cumsum(p, axis=1).tolist()
        for x in rng.random(n - 1).tolist():
            s = min(bisect_right(cdf[s], x), m - 1)
            out.append(s)
        return np.asarray(out, np.int64)

    s0 = int(rng.choice(m, p=stationary))
    n = int(horizon_s / float(np.dot(stationary, dwell)) * 1.5) + 16
    times, states, t = [], [], 0.0
    while True:
        st = walk(s0, n)
        hold = rng.standard_exponential(n) * dwell[st]
        starts = t + np.concatenate([[0.0], np.cumsum(hold[:-1])])
        keep = starts < horizon_s
        times.append(starts[keep])
        states.append(st[keep])
        if not keep[-1]:
            break
        t = float(starts[-1] + hold[-1])
        if t >= horizon_s:
            break
        s0 = int(walk(int(st[-1]), 2)[1])
    return (np.concatenate(times), levels[np.concatenate(states)],
            *plain_online(rng, horizon_s, on_s, off_s))


CHAINS = [
    ((1.0, 0.5, 0.2), 600.0, None, 14400.0, 1800.0),
    ((1.0,), 600.0, None, 100.0, 50.0),  # one level; many on/off chunks
    ((1.0, 0.3), (60.0, 500.0), None, 3600.0, 0.0),  # dwell per level; always online
    ((1.0, 0.6, 0.3), (20.0, 40.0, 60.0), ((0, 0.5, 0.5), (0.9, 0, 0.1), (0.2, 0.8, 0)),
     7200.0, 600.0),  # general jumps
]


@pytest.mark.parametrize("horizon_s", [7 * 86400.0, 300.0, 10.0])
@pytest.mark.parametrize("chain", CHAINS)
def test_markov_equals_its_plain_form(chain, horizon_s: float) -> None:
    levels, dwell, jump, on_s, off_s = chain
    gen = GENERATORS.get("markov")
    g = gen(gen.Options(levels=levels, mean_dwell_s=dwell, jump=jump, mean_online_s=on_s,
                        mean_offline_s=off_s))
    for i in range(40):
        fast, plain = stream(5, "trace", i), stream(5, "trace", i)
        s = g.device(i, horizon_s, fast)
        want = plain_markov(levels, dwell, jump, on_s, off_s, horizon_s, plain)
        for got, ref in zip((s.avail_t, s.avail_v, s.online_t, s.online_v), want):
            assert got.dtype == ref.dtype and got.tobytes() == ref.tobytes()
        assert fast.random() == plain.random()  # the same number of draws


@pytest.mark.parametrize(("on_s", "off_s", "horizon_s"), [
    (14400.0, 1800.0, 7 * 86400.0), (1.0, 2.0, 1000.0), (5.0, 5.0, 3.0), (10.0, 0.0, 99.0)])
def test_alternating_online_equals_its_plain_form(on_s, off_s, horizon_s) -> None:
    for i in range(40):
        fast, plain = stream(2, "on", i), stream(2, "on", i)
        got = alternating_online(fast, horizon_s, on_s, off_s)
        ref = plain_online(plain, horizon_s, on_s, off_s)
        for a, b in zip(got, ref):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
        assert fast.random() == plain.random()
