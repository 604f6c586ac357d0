"""Traces of many devices at once, from counter-based streams (``streams: counter``).

The opt-in fast path for huge fleets: a generator that supports it (``markov`` and
``constant`` with plain-number options) makes the traces of a whole list of devices with
a few dozen numpy calls on (devices x breakpoints) arrays (a general jump matrix: one
more per column), drawing from
:mod:`fleetsim.traces.counter` instead of one seeded generator per device. The traces
follow the same models as the per-device ones (the same distributions, the same
periodic horizon) but other draws, so a scenario keeps its traces unless it asks for
``streams: counter``. Each device's trace depends only on the seed and its index, never
on the devices made with it; the tests check that.

Rows are made in blocks of columns (breakpoints): every row gets the first block, and a
row whose breakpoints have not reached the horizon yet gets the next one, continuing
its time and state, until all rows have. The block size follows from the options and
the horizon alone, so a row's arithmetic is the same whichever batch it is in.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleetsim.traces import counter
from fleetsim.traces.device import DeviceTrace
from fleetsim.traces.generators import Constant, DeviceSignals, Markov

# lanes: what a device's numbers are for (counter.LANES of them)
_START, _JUMP, _HOLD, _ON_START, _ON_HOLD = range(5)


@dataclass(frozen=True)
class BatchSignals:
    """Breakpoints of many devices: row i holds device i's first ``*_len[i]`` entries."""

    avail_t: np.ndarray
    avail_v: np.ndarray
    avail_len: np.ndarray
    online_t: np.ndarray
    online_v: np.ndarray
    online_len: np.ndarray

    def row(self, i: int) -> DeviceSignals:
        a, o = int(self.avail_len[i]), int(self.online_len[i])
        return DeviceSignals(self.avail_t[i, :a].copy(), self.avail_v[i, :a].copy(),
                             self.online_t[i, :o].copy(), self.online_v[i, :o].copy())


def device_traces(b: BatchSignals, period_s: float) -> list[DeviceTrace]:
    """A :class:`DeviceTrace` per row, equal buffer for buffer to ``DeviceTrace(row)``.

    What ``DeviceTrace.__init__`` computes per device (segment lengths, the cumulative
    work, the next offline breakpoint) is computed here for all rows at once: the same
    operations element by element, and ``cumsum`` along a row adds in the same order as
    along a 1-D array, so the bits are the same (the tests compare them).
    """
    d, w = b.avail_t.shape
    rows = np.arange(d)
    last = b.avail_len - 1
    t, v = b.avail_t, b.avail_v
    seg = np.empty((d, w))
    np.subtract(t[:, 1:], t[:, :-1], out=seg[:, :-1])
    seg[rows, last] = period_s - t[rows, last]
    c = np.cumsum(v * seg, axis=1)
    c_period = c[rows, last]
    # next_off[k]: the first breakpoint index >= k where the device is offline (-1: none)
    w2 = b.online_t.shape[1]
    col = np.broadcast_to(np.arange(w2), (d, w2))
    valid = col < b.online_len[:, None]
    big = np.int64(w2)
    nxt = np.where((b.online_v == 0) & valid, col, big)
    nxt = np.minimum.accumulate(nxt[:, ::-1], axis=1)[:, ::-1]
    nxt = np.where(nxt == big, -1, nxt).astype(np.int64)
    on_v = (b.online_v != 0).astype(np.int8)
    out = []
    for i in range(d):
        n, m = int(b.avail_len[i]), int(b.online_len[i])
        ci = np.empty(n)
        ci[0] = 0.0
        ci[1:] = c[i, :n - 1]
        out.append(DeviceTrace.from_buffers(
            array("d", t[i, :n].tobytes()), array("d", v[i, :n].tobytes()),
            array("d", ci.tobytes()), float(c_period[i]), array("d", b.online_t[i, :m].tobytes()),
            array("b", on_v[i, :m].tobytes()), array("q", nxt[i, :m].tobytes()), period_s))
    return out


def supports(generator: Any, name: str | None = None) -> str | None:
    """None if ``generator`` can make counter-stream traces, else why not (``name``: its
    registered name, for the message). Only the built-in classes themselves: a plugin's
    subclass may model something else."""
    if type(generator) not in BATCHERS:
        kind = name or type(generator).__name__.lower()
        return (f"generator '{kind}' has no counter-stream form (those that do: "
                "constant, markov)")
    if generator.heterogeneous:
        return "options with distribution specs (per-device draws) have no counter-stream form"
    return None


#: rows x columns of one block of breakpoints, at most: a batch of devices whose traces
#: hold very many breakpoints (on/off periods of seconds over a week) is made in parts
MAX_BLOCK = 1 << 22


def make(generator: Any, devices: np.ndarray, horizon_s: float, k: np.uint64
         ) -> BatchSignals:
    """The traces of ``devices`` (indices), with key ``k`` (:func:`counter.key`)."""
    why = supports(generator)
    if why is not None:
        raise ValueError(why)
    d = np.asarray(devices, np.int64)
    if len(d) == 0:
        t, n = np.zeros((0, 1)), np.zeros(0, np.int64)
        return BatchSignals(t, t.copy(), n, t.copy(), np.zeros((0, 1), np.uint8), n.copy())
    make_rows = BATCHERS[type(generator)]
    rows = max(1, MAX_BLOCK // _columns(generator, float(horizon_s)))
    if len(d) <= rows:
        return make_rows(generator.options, generator, d, float(horizon_s), k)
    # rows never interact, so parts joined give the bits of one batch
    return _join([make_rows(generator.options, generator, d[i:i + rows], float(horizon_s), k)
                  for i in range(0, len(d), rows)])


def _online_block(o: Any, horizon_s: float) -> int:
    """Columns of a block of on/off periods: even, so every block starts in the state the
    row started in."""
    n = int(horizon_s / (o.mean_online_s + o.mean_offline_s) * 2 + 8)
    return n + n % 2


def _markov_block(c: Any, horizon_s: float) -> int:
    """Columns of a block of Markov levels: 1.5 times the mean number in the horizon."""
    return int(horizon_s / float(np.dot(c.stationary, c.dwell)) * 1.5) + 16


def _columns(generator: Any, horizon_s: float) -> int:
    """The widest first block of breakpoints a device of ``generator`` gets."""
    o = generator.options
    cols = _online_block(o, horizon_s) if o.mean_offline_s > 0.0 else 1
    c = getattr(generator, "_fixed", None)
    return max(cols, _markov_block(c, horizon_s)) if c is not None else cols


def _join(parts: list[BatchSignals]) -> BatchSignals:
    def cat(name: str) -> np.ndarray:
        arrays = [getattr(p, name) for p in parts]
        w = max(a.shape[1] for a in arrays)
        out = np.zeros((sum(len(a) for a in arrays), w), arrays[0].dtype)
        r = 0
        for a in arrays:
            out[r:r + len(a), :a.shape[1]] = a
            r += len(a)
        return out

    return BatchSignals(cat("avail_t"), cat("avail_v"),
                        np.concatenate([p.avail_len for p in parts]), cat("online_t"),
                        cat("online_v"), np.concatenate([p.online_len for p in parts]))


def _grow(devices: np.ndarray, horizon_s: float, n: int, block: Any
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of breakpoint times below the horizon, made ``n`` columns at a time.

    ``block(rows, devices, start, t0, prev)`` returns the (len(rows), n) start times and
    values of columns ``start .. start + n - 1`` of those rows (indices into the batch;
    ``devices`` are theirs), continuing from time ``t0`` (the end of the previous block,
    0 first) and value ``prev`` (None first), plus the end time of the block's last
    period. Returns times, values (padded) and each row's length.
    """
    d = len(devices)
    rows = np.arange(d)
    t_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    t0 = np.zeros(d)
    prev: np.ndarray | None = None
    start = 0
    lengths = np.zeros(d, np.int64)
    while len(rows):
        t, v, end = block(rows, devices[rows], start, t0, prev)
        inside = (t < horizon_s).sum(axis=1)  # times rise, so those inside are a prefix
        lengths[rows] += inside
        t_parts.append((rows, t, v))
        more = (inside == n) & (end < horizon_s)
        rows, t0, prev, start = rows[more], end[more], v[more, -1], start + n
    if len(t_parts) == 1:
        _, t, v = t_parts[0]
        return t, v, lengths
    width = int(lengths.max())
    tt = np.zeros((d, width))
    vv = np.zeros((d, width), t_parts[0][2].dtype)
    col = 0
    for rows, t, v in t_parts:
        w = min(n, width - col)
        tt[rows, col:col + w] = t[:, :w]
        vv[rows, col:col + w] = v[:, :w]
        col += n
        if col >= width:
            break
    return tt, vv, lengths


def _dedupe(t: np.ndarray, v: np.ndarray, lengths: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows whose times repeat (a period of length 0, or one too short to move the
    time: vanishingly rare) keep the last value at each time, so times strictly rise."""
    w = t.shape[1]
    valid = np.arange(w)[None, :] < lengths[:, None]
    same = np.zeros_like(valid)
    same[:, :-1] = (t[:, 1:] <= t[:, :-1]) & valid[:, 1:]
    bad = np.flatnonzero(same.any(axis=1))
    for i in bad:  # per row; the common case has none
        n = int(lengths[i])
        keep = ~same[i, :n]
        kt, kv = t[i, :n][keep], v[i, :n][keep]
        t[i, :len(kt)], v[i, :len(kv)] = kt, kv
        lengths[i] = len(kt)
    return t, v, lengths


def _online(o: Any, devices: np.ndarray, horizon_s: float, k: np.uint64
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """On/off periods with exponential lengths, as :func:`generators.alternating_online`:
    the first state from the stationary share, lengths ``e * mean`` alternating."""
    d = len(devices)
    if o.mean_offline_s <= 0.0:
        return np.zeros((d, 1)), np.ones((d, 1), np.uint8), np.ones(d, np.int64)
    on, off = o.mean_online_s, o.mean_offline_s
    state0 = counter.uniform(k, devices, _ON_START, 0, 1)[:, 0] < on / (on + off)
    n = _online_block(o, horizon_s)
    means = np.where(state0[:, None], np.tile([on, off], n // 2), np.tile([off, on], n // 2))

    def block(rows: np.ndarray, devs: np.ndarray, start: int, t0: np.ndarray,
              prev: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        e = counter.exponential(k, devs, _ON_HOLD, start, n)
        e *= means[rows]
        ends = np.cumsum(e, axis=1)
        if start:
            ends += t0[:, None]
        # column j starts period start + j: the first at t = 0 (or where the last block
        # ended), each later one where the one before it ends
        t = np.empty((len(rows), n))
        t[:, 0] = t0
        t[:, 1:] = ends[:, :-1]
        v = np.empty((len(rows), n), np.uint8)
        v[:, 0::2] = state0[rows, None]
        v[:, 1::2] = ~state0[rows, None]
        return t, v, ends[:, -1]

    return _dedupe(*_grow(devices, horizon_s, n, block))


def _markov(o: Any, gen: Markov, devices: np.ndarray, horizon_s: float, k: np.uint64
            ) -> BatchSignals:
    c = gen._fixed
    assert c is not None  # fixed options: checked by supports()
    m = len(c.levels)
    s_first = np.searchsorted(np.asarray(c.start_cdf), counter.uniform(
        k, devices, _START, 0, 1)[:, 0], side="right")
    s_first = np.minimum(s_first, m - 1)
    n = _markov_block(c, horizon_s)
    cdf = np.asarray(c.jump_cdf)

    def block(rows: np.ndarray, devs: np.ndarray, start: int, t0: np.ndarray,
              prev: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r = len(rows)
        st = np.empty((r, n), np.int64)
        s_prev = prev.astype(np.int64) if prev is not None else None
        if m == 1:
            st[:] = 0
        elif c.uniform_jumps:
            # uniform jumps to another state: s + (1 .. m-1), mod m
            inc = np.floor(counter.uniform(k, devs, _JUMP, start, n) * (m - 1)).astype(
                np.int64)
            inc += 1
            if s_prev is None:  # column 0 is the first state, drawn above
                inc[:, 0] = s_first[rows]
            else:
                inc[:, 0] += s_prev
            np.cumsum(inc, axis=1, out=st)
            st %= m
        else:
            u = counter.uniform(k, devs, _JUMP, start, n)
            s = s_first[rows] if s_prev is None else s_prev
            for j in range(n):  # general jumps are sequential in time, vectorised in rows
                if j or s_prev is not None:
                    s = np.minimum((cdf[s] <= u[:, j:j + 1]).sum(axis=1), m - 1)
                st[:, j] = s
        hold = counter.exponential(k, devs, _HOLD, start, n)
        hold *= c.dwell[0] if c.one_dwell else c.dwell[st]
        t = np.empty((r, n))
        t[:, 0] = t0
        np.cumsum(hold[:, :-1], axis=1, out=t[:, 1:])
        if start:
            t[:, 1:] += t0[:, None]
        return t, st, t[:, -1] + hold[:, -1]

    t, st, lengths = _dedupe(*_grow(devices, horizon_s, n, block))
    on_t, on_v, on_len = _online(o, devices, horizon_s, k)
    return BatchSignals(t, c.levels[st], lengths, on_t, on_v, on_len)


def _constant(o: Any, gen: Any, devices: np.ndarray, horizon_s: float, k: np.uint64
              ) -> BatchSignals:
    d = len(devices)
    on_t, on_v, on_len = _online(o, devices, horizon_s, k)
    return BatchSignals(np.zeros((d, 1)), np.full((d, 1), float(o.level)),
                        np.ones(d, np.int64), on_t, on_v, on_len)


BATCHERS: dict[type, Any] = {Markov: _markov, Constant: _constant}
