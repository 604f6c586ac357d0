"""Vectorised work integration over a whole :class:`~fleetsim.traces.format.TraceSet`.

The same mathematics as :class:`~fleetsim.traces.device.DeviceTrace`, for arrays of
queries ``(device, t0, work_s)`` at once: fleet-wide questions (who is online now, when
would each of these devices finish) and trace statistics. Per query it costs two binary
searches within the device's own slice of the CSR arrays; the searches run for all
queries together, one numpy operation per halving, so the cost per query is a few tens of
nanoseconds.
"""

from __future__ import annotations

import numpy as np

from fleetsim.traces.format import TraceSet
from fleetsim.traces.period import split_period_array


def segment_search(arr: np.ndarray, lo: np.ndarray, hi: np.ndarray, x: np.ndarray,
                   side: str = "right") -> np.ndarray:
    """Per query, ``lo + searchsorted(arr[lo:hi], x, side)``, for all queries at once.

    numpy's ``searchsorted`` cannot search a different slice per query; adding a per-device
    offset to make one global key would lose float precision, so this is a plain binary
    search over index arrays, exact in float64.
    """
    lo = lo.astype(np.int64, copy=True)
    hi = hi.astype(np.int64, copy=True)
    if len(x) == 0:
        return lo
    span = int((hi - lo).max())
    last = len(arr) - 1
    for _ in range(max(span, 1).bit_length()):
        mid = (lo + hi) >> 1
        v = arr[np.minimum(mid, last)]
        right = (v <= x) if side == "right" else (v < x)
        right &= lo < hi
        lo = np.where(right, mid + 1, lo)
        hi = np.where(right, hi, np.maximum(mid, lo))
    return lo


class VectorIntegrator:
    """Answers work-integration and online queries for many devices at once."""

    def __init__(self, ts: TraceSet) -> None:
        self.period_s = ts.period_s
        a = ts.availability
        self.t = a.t
        self.v = a.value.astype(np.float64)
        self.off = a.offsets
        n = a.n_devices
        ends = np.empty_like(self.t)
        ends[:-1] = self.t[1:]
        last = self.off[1:] - 1
        ends[last] = self.period_s if self.period_s is not None else self.t[last]
        seg = self.v * (ends - self.t)
        # Cumulative integral at each breakpoint, restarting at 0 for every device. One
        # cumsum per device rather than one global cumsum minus offsets: a global running
        # sum reaches ~1e11 s on big fleets and would cost the 1e-9 relative accuracy.
        self.c = np.empty_like(seg)
        self.c_period = np.empty(n) if self.period_s is not None else None
        for i in range(n):
            lo, hi = self.off[i], self.off[i + 1]
            cs = np.cumsum(seg[lo:hi])
            self.c[lo] = 0.0
            self.c[lo + 1:hi] = cs[:-1]
            if self.c_period is not None:
                self.c_period[i] = cs[-1]
        o = ts.online
        self.on_t, self.on_v, self.on_off = o.t, o.value != 0, o.offsets
        # next offline breakpoint index (global) at or after each breakpoint, per device
        idx = np.where(~self.on_v, np.arange(len(self.on_v)), len(self.on_v))
        dev_on = np.repeat(np.arange(n), np.diff(self.on_off))
        nxt = np.minimum.accumulate(idx[::-1])[::-1]
        self.next_off = np.where(nxt < self.on_off[1:][dev_on], nxt, -1)
        self.first_off = self.next_off[self.on_off[:-1]]

    def _split(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(whole periods, offset in ``[0, period)``) of finite times ``t``."""
        if self.period_s is None:
            return np.zeros_like(t), t
        return split_period_array(t, self.period_s)

    def _times(self, t: np.ndarray) -> np.ndarray:
        """Boolean mask of the infinite entries of ``t``; a ValueError for NaN or t < 0."""
        bad = ~(t >= 0.0)
        if bad.any():
            raise ValueError(f"time {float(t[bad][0])!r} s is not allowed: trace functions "
                             "take times >= 0 s (or inf)")
        return np.isinf(t)

    def _offsets(self, t: np.ndarray) -> np.ndarray:
        """Offsets to look ``t`` up at: as :func:`fleetsim.traces.device._offset`."""
        inf = self._times(t)
        if self.period_s is None:
            return t  # inf: the last values hold for ever
        if inf.any():
            raise ValueError(f"a periodic trace (period {self.period_s!r} s) has no value at "
                             "time inf")
        return self._split(t)[1]

    def _seg(self, dev: np.ndarray, r: np.ndarray) -> np.ndarray:
        return segment_search(self.t, self.off[dev], self.off[dev + 1], r) - 1

    def availability_at(self, dev: np.ndarray, t: np.ndarray) -> np.ndarray:
        dev, t = np.broadcast_arrays(np.asarray(dev, np.int64), np.asarray(t, np.float64))
        return self.v[self._seg(dev, self._offsets(t))]

    def total(self, dev: np.ndarray) -> np.ndarray:
        """``cumulative(dev, inf)``: as :meth:`fleetsim.traces.device.DeviceTrace.total`."""
        dev = np.asarray(dev, np.int64)
        if self.period_s is not None:
            return np.where(self.c_period[dev] > 0.0, np.inf, 0.0)
        last = self.off[dev + 1] - 1
        return np.where(self.v[last] > 0.0, np.inf, self.c[last])

    def cumulative(self, dev: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Integral of availability from 0 to ``t`` per query, in seconds."""
        dev, t = np.broadcast_arrays(np.asarray(dev, np.int64), np.asarray(t, np.float64))
        inf = self._times(t)
        tf = np.where(inf, 0.0, t)  # the infinite entries are answered by total()
        q, r = self._split(tf)
        k = self._seg(dev, r)
        inner = self.c[k] + self.v[k] * (r - self.t[k])
        out = inner if self.period_s is None else q * self.c_period[dev] + inner
        return np.where(inf, self.total(dev), out) if inf.any() else out

    def finish_time(self, dev: np.ndarray, t0: np.ndarray, work_s: np.ndarray) -> np.ndarray:
        """When steps of ``work_s`` seconds-at-full-availability started at ``t0`` end.

        As :meth:`fleetsim.traces.device.DeviceTrace.finish_time`, per query.
        """
        dev, t0, work_s = np.broadcast_arrays(np.asarray(dev, np.int64),
                                              np.asarray(t0, np.float64),
                                              np.asarray(work_s, np.float64))
        if np.isnan(work_s).any():
            raise ValueError("work_s is NaN")
        done = work_s <= 0.0
        never = (self._times(t0) | (work_s == np.inf)) & ~done
        ok = ~(done | never)
        t0f = np.where(ok, t0, 0.0)  # placeholders keep the arithmetic finite
        wf = np.where(ok, work_s, 1.0)
        q0, r0 = self._split(t0f)
        k0 = self._seg(dev, r0)
        target = self.c[k0] + self.v[k0] * (r0 - self.t[k0]) + wf
        lo, hi = self.off[dev], self.off[dev + 1]
        if self.period_s is None:
            q = np.zeros_like(target)
            rest = target
        else:
            cp = self.c_period[dev]
            stall = cp <= 0.0
            q, rest = split_period_array(target, np.where(stall, 1.0, cp))
            back = rest == 0.0  # exactly at a period's total: the earliest is in period q-1
            q = np.where(back, q - 1.0, q)
            rest = np.where(back, cp, rest)
        k = segment_search(self.c, lo, hi, rest, side="left") - 1
        k = np.maximum(k, lo)
        v = self.v[k]
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.where(rest <= 0.0, 0.0, self.t[k] + (rest - self.c[k]) / v)
        x = np.where((v <= 0.0) & (rest > 0.0), np.inf, x)
        if self.period_s is None:
            out = x
        else:
            out = (q0 + q) * self.period_s + x
            out = np.where(stall, np.inf, out)
        out = np.maximum(out, t0f)  # rounding must not end a step before it starts
        return np.where(done, t0, np.where(never, np.inf, out))

    def online_at(self, dev: np.ndarray, t: np.ndarray) -> np.ndarray:
        dev, t = np.broadcast_arrays(np.asarray(dev, np.int64), np.asarray(t, np.float64))
        r = self._offsets(t)
        k = segment_search(self.on_t, self.on_off[dev], self.on_off[dev + 1], r) - 1
        return self.on_v[k]

    def next_offline(self, dev: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Earliest time >= ``t`` at which each device is offline (``inf`` if never)."""
        dev, t = np.broadcast_arrays(np.asarray(dev, np.int64), np.asarray(t, np.float64))
        inf = self._times(t)
        tf = np.where(inf, 0.0, t)
        q, r = self._split(tf)
        k = segment_search(self.on_t, self.on_off[dev], self.on_off[dev + 1], r) - 1
        j = self.next_off[k]
        base = q * self.period_s if self.period_s is not None else 0.0
        out = np.where(j >= 0, base + self.on_t[np.maximum(j, 0)], np.inf)
        if self.period_s is not None:
            f = self.first_off[dev]
            wrap = (j < 0) & (f >= 0)
            out = np.where(wrap, (q + 1.0) * self.period_s + self.on_t[np.maximum(f, 0)],
                           out)
        return np.where(inf, np.inf, np.where(j == k, tf, out))
