"""One device's trace with exact work integration (scalar, for the engine's hot path).

A step of ``work_s`` seconds-at-full-availability that starts at ``t0`` ends at the
``t1`` where ``integral_{t0}^{t1} availability(t) dt = work_s``. The cumulative integral
is kept at the breakpoints, so ``t1`` is one binary search and one interpolation: time
never advances in ticks and no event is scheduled per trace change.

This scalar version uses ``bisect`` on compact ``array.array`` buffers because the engine
asks one question at a time inside a device process, where numpy's per-call overhead
(~1 us per ufunc) would dominate. ``array.array`` rather than a list: 8 bytes per
breakpoint instead of ~32 (a boxed float plus its pointer), built by one copy instead of
``tolist()``, and not tracked by the garbage collector; bisect on it costs ~40 ns more.
:mod:`fleetsim.traces.integrate` answers the same questions for arrays of queries; the
tests check that the two agree.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right

import numpy as np

from fleetsim.traces.period import split_period

INF = math.inf


class DeviceTrace:
    """Availability and online signal of one device.

    Parameters
    ----------
    avail_t, avail_v : breakpoints (start at 0, strictly increasing) and availability values
    online_t, online_v : breakpoints and 0/1 online values
    period_s : the trace repeats with this period, or None (last values hold forever)
    """

    __slots__ = ("_c", "_c_period", "_first_off", "_nbytes", "_next_off", "_on_t", "_on_v",
                 "_t", "_v", "period_s")

    def __init__(self, avail_t: np.ndarray, avail_v: np.ndarray, online_t: np.ndarray,
                 online_v: np.ndarray, period_s: float | None) -> None:
        self.period_s = period_s
        t = np.asarray(avail_t, dtype=np.float64)
        v = np.asarray(avail_v, dtype=np.float64)
        # segment lengths: to the next breakpoint, the last one to the period's end (or 0)
        # -- np.diff(np.append(t, end)) without its copies (this runs once per device a
        # huge fleet touches)
        seg = np.empty(len(t))
        np.subtract(t[1:], t[:-1], out=seg[:-1])
        seg[-1] = (period_s if period_s is not None else t[-1]) - t[-1]
        c = np.empty(len(t) + 1)
        c[0] = 0.0
        np.cumsum(v * seg, out=c[1:])
        self._t = _f64(t)
        self._v = _f64(v)
        self._c = _f64(c[:-1])
        self._c_period = float(c[-1]) if period_s is not None else INF
        on_t = np.asarray(online_t, dtype=np.float64)
        on_v = np.asarray(online_v) != 0
        self._on_t = _f64(on_t)
        self._on_v = array("b", on_v.astype(np.int8).tobytes())
        # next_off[k]: first breakpoint index >= k where the device is offline (-1: none)
        off_idx = np.flatnonzero(~on_v)
        pos = np.searchsorted(off_idx, np.arange(len(on_v)))
        nxt = np.where(pos < len(off_idx), off_idx[np.minimum(pos, len(off_idx) - 1)]
                       if len(off_idx) else -1, -1)
        self._next_off = array("q", nxt.astype(np.int64).tobytes())
        self._first_off = int(off_idx[0]) if len(off_idx) else -1
        self._nbytes = self._count_bytes()

    @classmethod
    def from_buffers(cls, t: array, v: array, c: array, c_period: float, on_t: array,
                     on_v: array, next_off: array, period_s: float | None) -> DeviceTrace:
        """A trace from buffers computed elsewhere as ``__init__`` computes them (many
        devices at once: :func:`fleetsim.traces.batch.device_traces`)."""
        tr = cls.__new__(cls)
        tr.period_s = period_s
        tr._t, tr._v, tr._c, tr._c_period = t, v, c, c_period
        tr._on_t, tr._on_v, tr._next_off = on_t, on_v, next_off
        tr._first_off = next_off[0]
        tr._nbytes = tr._count_bytes()
        return tr

    def _count_bytes(self) -> int:
        return sum(a.itemsize * len(a) for a in (self._t, self._v, self._c, self._on_t,
                                                   self._on_v, self._next_off))

    @property
    def nbytes(self) -> int:
        """Bytes held by the breakpoint buffers (what a trace cache should count)."""
        return self._nbytes

    # -- availability ---------------------------------------------------------------

    def availability_at(self, t: float) -> float:
        """Availability at time ``t`` (for ``t = inf``: the last value of a non-periodic
        trace; a periodic trace has none, a :class:`ValueError`)."""
        return self._v[bisect_right(self._t, _offset(t, self.period_s)) - 1]

    def _cum_in(self, r: float) -> float:
        """Integral from 0 to the finite offset ``r``."""
        k = bisect_right(self._t, r) - 1
        return self._c[k] + self._v[k] * (r - self._t[k])

    def _inv_in(self, c: float) -> float:
        """Earliest offset x within a period (or ever) with cumulative(x) >= c."""
        if c <= 0.0:
            return 0.0
        k = bisect_left(self._c, c) - 1
        v = self._v[k]
        if v <= 0.0:  # only the last segment of a non-periodic trace can stall for ever
            return INF
        return self._t[k] + (c - self._c[k]) / v

    def total(self) -> float:
        """``cumulative(inf)``: ``inf`` if the trace adds work for ever, else the finite
        total (0 for a periodic trace that is never available; the work up to the last
        breakpoint for a non-periodic trace whose last value is 0)."""
        if self.period_s is not None:
            return INF if self._c_period > 0.0 else 0.0
        return INF if self._v[-1] > 0.0 else self._c[-1]

    def cumulative(self, t: float) -> float:
        """Integral of availability from 0 to ``t``, in seconds (``t = inf``: :meth:`total`).

        A non-periodic trace's last value holds for ever, so its integral keeps growing
        after the last breakpoint (exactly, by that value per second).
        """
        if not 0.0 <= t < INF:
            if t == INF:
                return self.total()
            raise _bad_time(t)
        p = self.period_s
        if p is None:
            return self._cum_in(t)
        q, r = split_period(t, p)
        return q * self._c_period + self._cum_in(r)

    def finish_time(self, t0: float, work_s: float) -> float:
        """When a step of ``work_s`` (seconds at full availability) started at ``t0`` ends.

        Returns ``inf`` if availability never again adds up to ``work_s`` (or either input
        is ``inf``), ``t0`` for ``work_s <= 0``; never a time before ``t0``.
        """
        if not 0.0 < work_s < INF:  # the common case costs one chained comparison
            if work_s <= 0.0:
                return t0
            if work_s == INF:
                return INF
            raise ValueError(f"work_s is NaN (step started at time {t0!r} s)")
        if not 0.0 <= t0 < INF:
            if t0 == INF:
                return INF
            raise _bad_time(t0)
        p = self.period_s
        if p is None:
            t1 = self._inv_in(self._cum_in(t0) + work_s)
            return t1 if t1 >= t0 else t0  # rounding must not end a step before it starts
        cp = self._c_period
        if cp <= 0.0:
            return INF
        q0, r0 = split_period(t0, p)
        # kept relative to this period for precision; the work target is split into whole
        # periods' worth of work with the same exact helper as time is split into periods
        q, rest = split_period(self._cum_in(r0) + work_s, cp)
        if rest == 0.0:  # exactly at a period's total: the earliest is in period q - 1
            q, rest = q - 1.0, cp
        t1 = (q0 + q) * p + self._inv_in(rest)
        return t1 if t1 >= t0 else t0

    def advance(self, t0: float, work_s: float, n: int, limit: float
                ) -> tuple[float, int, float]:
        """Up to ``n`` steps of ``work_s`` each, one after the other from ``t0``, stopping
        before the first that would end after ``limit`` (or never).

        Returns ``(t, done, t_next)``: where the ``done`` steps that fit end (``t0`` if
        none), and where the next one would have ended (``t`` when all ``n`` fit). Each
        step ends exactly where :meth:`finish_time` says (the same arithmetic, inlined:
        this is the engine's hottest loop, ~20 steps per device and round).
        """
        t, done = t0, 0
        p = self.period_s
        if p is None or not (0.0 < work_s < INF and 0.0 <= t0 < INF) or self._c_period <= 0.0:
            finish = self.finish_time
            while done < n:
                t_next = finish(t, work_s)
                if t_next > limit or t_next == INF:
                    return t, done, t_next
                t, done = t_next, done + 1
            return t, done, t
        cp = self._c_period
        ts, vs, cs = self._t, self._v, self._c
        while done < n:
            q0, r0 = divmod(t, p)  # split_period
            k = bisect_right(ts, r0) - 1  # _cum_in
            q, rest = divmod(cs[k] + vs[k] * (r0 - ts[k]) + work_s, cp)
            if rest == 0.0:
                q, rest = q - 1.0, cp
            k = bisect_left(cs, rest) - 1  # _inv_in (rest > 0 here)
            v = vs[k]
            t_next = (q0 + q) * p + (ts[k] + (rest - cs[k]) / v) if v > 0.0 else INF
            if t_next < t:
                t_next = t
            if t_next > limit or t_next == INF:
                return t, done, t_next
            t, done = t_next, done + 1
        return t, done, t

    def mean_availability(self, horizon_s: float | None = None) -> float:
        """Time-weighted mean availability.

        Without ``horizon_s``, the long-run mean ``lim cumulative(T) / T``: the mean over
        one period for a periodic trace, and the last value for a non-periodic one (it
        holds for ever, so it outweighs any finite stretch before it; a trace that stalls
        at 0 has long-run mean 0). With ``horizon_s > 0``, the mean over ``[0,
        horizon_s)``, for a caller that knows the span a run will see.
        """
        if horizon_s is not None:
            if not 0.0 < horizon_s < INF:
                raise ValueError(f"horizon_s {horizon_s!r} is not a positive finite time")
            return self.cumulative(horizon_s) / horizon_s
        if self.period_s is not None:
            return self._c_period / self.period_s
        return self._v[-1]

    # -- online ---------------------------------------------------------------------

    def online_at(self, t: float) -> bool:
        """Whether the device is online at ``t`` (``inf``: as :meth:`availability_at`)."""
        return self._on_v[bisect_right(self._on_t, _offset(t, self.period_s)) - 1] != 0

    def online_signal(self) -> OnlineSignal:
        """The online signal alone (sharing this trace's buffers)."""
        return OnlineSignal(self._on_t, self._on_v, self.period_s)

    def next_offline(self, t: float) -> float:
        """Earliest time >= ``t`` at which the device is offline (``inf`` if never)."""
        if not 0.0 <= t < INF:
            if t == INF:
                return INF
            raise _bad_time(t)
        p = self.period_s
        q, r = (0.0, t) if p is None else split_period(t, p)
        k = bisect_right(self._on_t, r) - 1
        j = self._next_off[k]
        if j == k:
            return t
        # These sums never fall below t: the exact sum exceeds t and differs from the one
        # computed by less than half an ulp of t, and t is itself a float.
        if j >= 0:
            return q * p + self._on_t[j] if p is not None else self._on_t[j]
        if p is not None and self._first_off >= 0:
            return (q + 1.0) * p + self._on_t[self._first_off]
        return INF

    def next_online(self, t: float) -> float:
        """Earliest time >= ``t`` at which the device is online (``inf`` if never): the
        instant an idle device can first be given work (the asynchronous server wakes
        then). A linear walk over one period's on/off breakpoints (a few dozen)."""
        if not 0.0 <= t < INF:
            if t == INF:
                return INF
            raise _bad_time(t)
        p = self.period_s
        q, r = (0.0, t) if p is None else split_period(t, p)
        on_t, on_v = self._on_t, self._on_v
        k = bisect_right(on_t, r) - 1
        if on_v[k]:
            return t
        for j in range(k + 1, len(on_t)):
            if on_v[j]:
                return q * p + on_t[j] if p is not None else on_t[j]
        if p is not None:
            for j in range(len(on_t)):
                if on_v[j]:
                    return (q + 1.0) * p + on_t[j]
        return INF


class OnlineSignal:
    """Whether one device is online, and nothing else: what selection asks of many devices.

    A few hundred bytes per device (on/off periods last hours), so a cache of these can hold
    far more devices than a cache of whole traces: a selector that checks every device it
    has explored (Oort) then does not regenerate each one's trace every round.
    """

    __slots__ = ("_on_t", "_on_v", "period_s")

    def __init__(self, on_t: array, on_v: array, period_s: float | None) -> None:
        self._on_t, self._on_v, self.period_s = on_t, on_v, period_s

    @property
    def nbytes(self) -> int:
        return self._on_t.itemsize * len(self._on_t) + self._on_v.itemsize * len(self._on_v)

    def online_at(self, t: float) -> bool:
        """The same answer as :meth:`DeviceTrace.online_at`."""
        return self._on_v[bisect_right(self._on_t, _offset(t, self.period_s)) - 1] != 0


def _offset(t: float, p: float | None) -> float:
    """Where to look ``t`` up in one period's breakpoints (``t`` itself without a period)."""
    if 0.0 <= t < INF:
        return t if p is None else split_period(t, p)[1]
    if t == INF:
        if p is None:
            return INF  # the last values hold for ever
        raise ValueError(f"a periodic trace (period {p!r} s) has no value at time inf")
    raise _bad_time(t)


def _bad_time(t: float) -> ValueError:
    return ValueError(f"time {t!r} s is not allowed: trace functions take times >= 0 s "
                      "(or inf)")


def _f64(x: np.ndarray) -> array:
    """A float64 ``array.array`` copy of ``x`` (values bit-for-bit unchanged)."""
    return array("d", np.ascontiguousarray(x, dtype=np.float64).tobytes())


def pieces(trace: DeviceTrace, t0: float, t1: float, signal: str = "availability"
           ) -> list[tuple[float, float, float]]:
    """The trace's ``availability`` (or ``online``, 0/1) on ``[t0, t1)`` as consecutive
    ``(start, end, value)`` pieces, cut at its breakpoints (what a power that follows the
    trace needs to be integrated exactly; :mod:`fleetsim.energy`)."""
    if not (0.0 <= t0 <= t1 < INF):
        raise _bad_time(t0 if not 0.0 <= t0 < INF else t1)
    ts, vs = (trace._t, trace._v) if signal == "availability" else (trace._on_t, trace._on_v)
    p = trace.period_s
    out: list[tuple[float, float, float]] = []
    t = t0
    while t < t1:
        q, r = (0.0, t) if p is None else split_period(t, p)
        k = bisect_right(ts, r) - 1
        nxt = ts[k + 1] if k + 1 < len(ts) else (p if p is not None else INF)
        end = min(t1, q * p + nxt if p is not None else nxt)
        if end <= t:  # rounding at a period's edge: step to the next breakpoint
            end = min(t1, math.nextafter(t, INF))
        out.append((t, end, float(vs[k])))
        t = end
    return out
