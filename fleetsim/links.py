"""Shared links: a flow-level network model with max-min fair sharing (no SimPy).

A *flow* is one transfer of ``nbytes`` across a *path* of shared links, capped by its own
rate (its device's access bandwidth, which may vary over time: a :class:`RateSource`).
While a set of flows is active, each gets the max-min fair rate computed by progressive
filling (Bertsekas & Gallager, *Data Networks*, §6.5.2), the model SimGrid's flow-level
network uses (docs/network.md): all rates rise together; a link whose capacity is used
up fixes the rates of its flows at its fair share, a flow that reaches its own cap stays
there; the others keep rising. Rates change only when a flow starts, ends, is removed
(its device went offline) or its own cap changes (a bandwidth-trace breakpoint), so
between those events each flow moves bytes at a constant rate and its bytes are the exact
integral of its rate. Nothing advances in ticks.

:class:`FlowNetwork` is driven by its caller (the engine): ``start``, ``remove``,
``next_event`` and ``advance``. Rates are recomputed lazily, once per instant, over the
active flows sorted by flow id, so the answer does not depend on the order in which
flows were started or removed at one instant.

Options (off by default): per-link latency (a flow shares nothing until its path's
latency has passed, as in SimGrid), and the LV08 calibration of Velho & Legrand (SimGrid's
default network model): latencies times 13.01, capacities times 0.97, and each flow
capped by ``tcp_window_bytes / (2 * latency)`` of its path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

INF = math.inf

#: LV08 constants: SimGrid's defaults for network/latency-factor, network/bandwidth-factor
#: and network/TCP-gamma (bytes), from Velho & Legrand, SIMUTools 2009.
LV08_LATENCY_FACTOR = 13.01
LV08_BANDWIDTH_FACTOR = 0.97
LV08_TCP_WINDOW_BYTES = 4194304.0


class RateSource(Protocol):
    """A flow's own rate cap over time (piecewise constant), in bytes per second."""

    def rate_bytes_per_s(self, t: float) -> float:
        """The rate at time ``t`` (on the segment that starts at or before ``t``)."""
        ...

    def next_change_s(self, t: float) -> float:
        """The first breakpoint strictly after ``t`` (``inf``: none)."""
        ...


@dataclass(frozen=True)
class ConstantRate:
    """A rate cap that never changes."""

    bytes_per_s: float

    def rate_bytes_per_s(self, t: float) -> float:
        return self.bytes_per_s

    def next_change_s(self, t: float) -> float:
        return INF


@dataclass(frozen=True)
class LinkSpec:
    """One shared link: capacity in bytes per second, one-way latency in seconds."""

    capacity_bytes_per_s: float
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        if not (0.0 < self.capacity_bytes_per_s < INF):
            raise ValueError(f"link capacity {self.capacity_bytes_per_s!r} B/s must be > 0 "
                             "and finite")
        if not (0.0 <= self.latency_s < INF):
            raise ValueError(f"link latency {self.latency_s!r} s must be >= 0 and finite")


@dataclass(frozen=True)
class LinkModel:
    """Options of the flow model (all off by default: exact max-min sharing, no latency).

    Parameters
    ----------
    latency : add each path's latency sum before the flow starts to share
    latency_factor, bandwidth_factor : multiply latencies and capacities (LV08: 13.01,
        0.97)
    tcp_window_bytes : cap each flow at ``window / (2 * path latency)`` (None: no cap)
    """

    latency: bool = False
    latency_factor: float = 1.0
    bandwidth_factor: float = 1.0
    tcp_window_bytes: float | None = None

    @classmethod
    def lv08(cls) -> LinkModel:
        """SimGrid's LV08 calibration (with latency)."""
        return cls(True, LV08_LATENCY_FACTOR, LV08_BANDWIDTH_FACTOR, LV08_TCP_WINDOW_BYTES)


class Event(NamedTuple):
    """The next thing that happens: ``kind`` is ``done`` (the flow completes), ``rate``
    (its own cap changes), or ``share`` (its latency has passed: it starts to share)."""

    time_s: float
    flow_id: int
    kind: str


class Finished(NamedTuple):
    """A completed flow: when its last byte arrived, and how many bytes it carried."""

    flow_id: int
    end_s: float
    nbytes: float


def equal_share_finish_s(t0: float, n: int, nbytes: float, capacity_bytes_per_s: float
                         ) -> float:
    """When ``n`` flows of ``nbytes`` each, started together on one link, all end.

    The closed form of the common case (no own caps below ``C / n``): ``t0 + n S / C``.
    """
    return t0 + n * nbytes / capacity_bytes_per_s


class FlowNetwork:
    """Flows over shared links, rates max-min fair; driven event by event.

    Parameters
    ----------
    links : link name -> :class:`LinkSpec`
    model : :class:`LinkModel` options

    Times must not go backwards: every call takes a time ``t >= now``. Flows live in
    numpy slots (id, bytes left, rate, own cap, next change...) so that an event costs a
    few array operations over the active flows, not a Python loop over them.
    """

    def __init__(self, links: Mapping[str, LinkSpec], model: LinkModel | None = None) -> None:
        self.model = model or LinkModel()
        self._names = list(links)
        self._index = {name: k for k, name in enumerate(self._names)}
        m = self.model
        self._cap = np.array([links[n].capacity_bytes_per_s * m.bandwidth_factor
                              for n in self._names], dtype=np.float64)
        self._lat = np.array([links[n].latency_s * m.latency_factor for n in self._names],
                             dtype=np.float64)
        self.now = 0.0
        self._slot: dict[int, int] = {}  # flow id -> slot
        self._free: list[int] = []
        self._src: dict[int, RateSource] = {}  # slot -> own-rate source (varying ones)
        self._alloc(16)
        self._dirty = False
        self._link_bytes = np.zeros(len(self._names))
        self._link_busy_s = np.zeros(len(self._names))

    def _alloc(self, size: int) -> None:
        old = getattr(self, "_id", None)
        n0 = 0 if old is None else len(old)

        def grow(name: str, fill: float | int | bool, dtype: type) -> None:
            a = np.full(size, fill, dtype=dtype)
            if old is not None:
                a[:n0] = getattr(self, name)
            setattr(self, name, a)

        grow("_id", -1, np.int64)
        for name in ("_nbytes", "_rem", "_rate", "_own", "_window"):
            grow(name, 0.0, np.float64)
        for name in ("_done_at", "_change_at", "_share_at"):
            grow(name, INF, np.float64)
        grow("_used", False, bool)
        grow("_sharing", False, bool)
        inc = np.zeros((size, len(self._names)), dtype=bool)
        if old is not None:
            inc[:n0] = self._inc
        self._inc = inc
        self._free.extend(range(size - 1, n0 - 1, -1))

    # -- the caller's interface -------------------------------------------------------

    def start(self, t: float, flow_id: int, path: Sequence[str], nbytes: float,
              own: RateSource | float) -> None:
        """Start a flow of ``nbytes`` at ``t`` over the links ``path`` (names), capped
        by ``own`` (bytes per second, constant or a :class:`RateSource`)."""
        self.advance(t)
        flow_id = int(flow_id)
        if flow_id in self._slot:
            raise ValueError(f"flow {flow_id} is already active")
        if not (0.0 <= nbytes < INF):
            raise ValueError(f"flow {flow_id}: nbytes {nbytes!r} must be >= 0 and finite")
        try:
            idx = sorted({self._index[name] for name in path})
        except KeyError as exc:
            raise ValueError(f"flow {flow_id}: no link named {exc.args[0]!r}; links: "
                             f"{', '.join(self._names)}") from None
        if not self._free:
            self._alloc(2 * len(self._id))
        k = self._free.pop()
        self._slot[flow_id] = k
        lat = float(self._lat[idx].sum()) if self.model.latency else 0.0
        window = INF
        if self.model.tcp_window_bytes is not None and lat > 0.0:
            window = self.model.tcp_window_bytes / (2.0 * lat)
        self._id[k] = flow_id
        self._used[k] = True
        self._inc[k] = False
        self._inc[k, idx] = True
        self._nbytes[k] = self._rem[k] = float(nbytes)
        self._rate[k] = 0.0
        self._window[k] = window
        self._share_at[k] = t + lat
        self._done_at[k] = INF
        if isinstance(own, int | float):
            self._own[k] = min(float(own), window)
            self._change_at[k] = INF
        else:
            self._src[k] = own
        self._sharing[k] = False
        if t + lat <= t:
            self._activate(k, t)
        self._dirty = True

    def remove(self, t: float, flow_id: int) -> float:
        """Stop a flow at ``t`` (its device went offline); returns the bytes it moved.

        Its share is free from ``t`` on: the others' rates are recomputed at ``t``.
        """
        self.advance(t)
        k = self._slot[flow_id]
        moved = float(self._nbytes[k] - self._rem[k])
        self._release(k)
        return moved

    def next_event(self) -> Event | None:
        """The earliest completion, rate change or start of sharing (None: no flows;
        time ``inf``: every flow is stalled at rate 0 for ever).

        Ties: completions first, then by flow id.
        """
        self._refresh()
        if not self._slot:
            return None
        used = self._used
        sh = self._sharing
        when = np.where(sh, np.minimum(self._done_at, self._change_at), self._share_at)
        when = np.where(used, when, INF)
        te = float(when.min())
        cand = np.flatnonzero(used & (when == te))
        done = cand[sh[cand] & (self._done_at[cand] <= te)]
        if len(done):
            k = int(done[np.argmin(self._id[done])])
            return Event(te, int(self._id[k]), "done")
        k = int(cand[np.argmin(self._id[cand])])
        return Event(te, int(self._id[k]), "rate" if sh[k] else "share")

    def advance(self, t: float) -> list[Finished]:
        """Move to time ``t``: every event up to ``t`` happens; returns the flows that
        completed, in time order (ties by flow id)."""
        if t < self.now:
            raise ValueError(f"time {t!r} s is before the network's time {self.now!r} s")
        out: list[Finished] = []
        while True:
            ev = self.next_event()
            if ev is None or ev.time_s > t:
                break
            te = ev.time_s
            self._move(te)
            used, sh = self._used, self._sharing
            # everything due at te happens together, in flow-id order
            fin = np.flatnonzero(used & sh & (self._rate > 0.0) & (self._done_at <= te))
            fin = fin[np.argsort(self._id[fin], kind="stable")]
            for k in fin.tolist():
                out.append(Finished(int(self._id[k]), te, float(self._nbytes[k])))
                self._release(k)
            for k in np.flatnonzero(used & ~sh & (self._share_at <= te)).tolist():
                self._activate(k, te)
            for k in np.flatnonzero(used & sh & (self._change_at <= te)).tolist():
                src = self._src[k]
                self._own[k] = min(src.rate_bytes_per_s(te), self._window[k])
                self._change_at[k] = src.next_change_s(te)
            self._dirty = True
        self._move(t)
        return out

    # -- what the caller may read -----------------------------------------------------

    def rate(self, flow_id: int) -> float:
        """The flow's current rate in bytes per second (0 during its latency)."""
        self._refresh()
        k = self._slot[flow_id]
        return float(self._rate[k]) if self._sharing[k] else 0.0

    def sent_bytes(self, flow_id: int) -> float:
        """Bytes the flow has moved so far."""
        k = self._slot[flow_id]
        return float(self._nbytes[k] - self._rem[k])

    def active(self) -> list[int]:
        """Ids of the flows not yet completed or removed."""
        return sorted(self._slot)

    def link_stats(self) -> dict[str, tuple[float, float]]:
        """Per link: (bytes carried, seconds with at least one flow crossing it)."""
        return {n: (float(self._link_bytes[k]), float(self._link_busy_s[k]))
                for k, n in enumerate(self._names)}

    # -- inside -------------------------------------------------------------------------

    def _release(self, k: int) -> None:
        del self._slot[int(self._id[k])]
        self._src.pop(k, None)
        self._used[k] = self._sharing[k] = False
        self._id[k] = -1
        self._rate[k] = 0.0
        self._done_at[k] = self._change_at[k] = self._share_at[k] = INF
        self._free.append(k)
        self._dirty = True

    def _activate(self, k: int, t: float) -> None:
        self._sharing[k] = True
        self._share_at[k] = INF
        src = self._src.get(k)
        if src is not None:
            self._own[k] = min(src.rate_bytes_per_s(t), self._window[k])
            self._change_at[k] = src.next_change_s(t)

    def _move(self, t: float) -> None:
        """Let every sharing flow move bytes at its rate from ``now`` to ``t``."""
        self._refresh()
        dt = t - self.now
        if dt > 0.0:
            sh = np.flatnonzero(self._sharing)
            if len(sh):
                rate = self._rate[sh]
                # a flow due by t has moved exactly its bytes (done_at is absolute, so
                # rounding in rem never leaves a sliver that ends a moment later)
                rem = np.maximum(self._rem[sh] - rate * dt, 0.0)
                self._rem[sh] = np.where(self._done_at[sh] <= t, 0.0, rem)
                inc = self._inc[sh]
                self._link_bytes += (rate @ inc) * dt
                self._link_busy_s += np.where(inc.any(axis=0), dt, 0.0)
        self.now = t

    def _refresh(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        sh = np.flatnonzero(self._sharing)
        if not len(sh):
            return
        order = sh[np.argsort(self._id[sh], kind="stable")]  # order-free sums
        rates = _fill(self._inc[order], self._own[order], self._cap)
        self._rate[order] = rates
        rem = self._rem[order]
        with np.errstate(divide="ignore", invalid="ignore"):
            done = np.where(rates > 0.0, self.now + rem / rates,
                            np.where(rem == 0.0, self.now, INF))
        self._done_at[order] = done


def max_min_rates(paths: Sequence[np.ndarray], own: np.ndarray, capacity: np.ndarray
                  ) -> np.ndarray:
    """Max-min fair rates of flows by progressive filling.

    Parameters
    ----------
    paths : per flow, the indices of the links it crosses
    own : per flow, its own cap (bytes/s; ``inf``: none)
    capacity : per link, its capacity (bytes/s)

    All unfixed flows rise together. At each level the smaller of (a) the least fair
    share ``cap_left / unfixed flows`` over the links and (b) the least own cap decides:
    flows whose own cap is at most the least fair share are fixed at their cap (fixing a
    flow below a link's share only raises that share, so they would reach it first);
    otherwise every unfixed flow crossing a link with the least share is fixed there.
    Sums run in the flows' given order, so callers that sort flows get order-free bits.
    """
    inc = np.zeros((len(paths), len(capacity)), dtype=bool)
    for i, p in enumerate(paths):
        inc[i, p] = True
    return _fill(inc, np.asarray(own, dtype=np.float64), capacity)


def _fill(inc: np.ndarray, own: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Progressive filling over the incidence matrix ``inc`` (flows x links)."""
    n, m = inc.shape
    rate = np.zeros(n)
    if n == 0:
        return rate
    cap_left = capacity.astype(np.float64, copy=True)
    count = inc.sum(axis=0)
    free = np.ones(n, dtype=bool)
    while free.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(count > 0, np.maximum(cap_left, 0.0) / count, INF)
        level = float(share.min()) if m else INF
        capped = free & (own <= level) & (own < INF)
        if capped.any():
            sel = capped
            rate[sel] = own[sel]
        elif level == INF:  # flows that cross no link and have no cap: unbounded
            raise ValueError("a flow crosses no link and has no own rate cap")
        else:
            bott = (count > 0) & (share == level)
            sel = free & inc[:, bott].any(axis=1)
            rate[sel] = level
        free &= ~sel
        cap_left -= rate[sel] @ inc[sel]
        count -= inc[sel].sum(axis=0)
    return rate
