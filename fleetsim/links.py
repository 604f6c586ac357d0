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

import heapq
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

    Times must not go backwards: every call takes a time ``t >= now``.

    Flows that cross the same links with the same own cap always get the same rate
    (max-min fairness is symmetric), so they are kept together as one *group*: the fill
    runs over groups with their sizes, and each group keeps its progress ``P(t) =
    integral of its rate`` and a heap of its flows' targets (progress at the flow's start
    plus its bytes). A flow ends when its group's progress reaches its target. An event
    then costs work per group (a handful: device classes x routes), not per flow. A flow
    whose own cap varies (a bandwidth trace) moves, with the bytes it has sent, to the
    group of its new cap at each change.
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
        self._cap_list = self._cap.tolist()
        self.now = 0.0
        self._flows: dict[int, _Flow] = {}
        self._groups: dict[tuple, _Group] = {}
        self._pending: list[tuple[float, int]] = []  # (share_at, flow id): in latency
        self._changes: list[tuple[float, int]] = []  # (own cap's next change, flow id)
        self._held: list[Finished] = []  # completions met inside start/remove
        self._dirty = False
        #: next_event's answer while nothing changes (the engine asks several times
        #: between changes); any change of flows, groups or time drops it
        self._next: Event | None = None
        self._next_known = False
        self._link_bytes = np.zeros(len(self._names))
        self._link_busy_s = np.zeros(len(self._names))

    # -- the caller's interface -------------------------------------------------------

    def start(self, t: float, flow_id: int, path: Sequence[str], nbytes: float,
              own: RateSource | float) -> None:
        """Start a flow of ``nbytes`` at ``t`` over the links ``path`` (names), capped
        by ``own`` (bytes per second, constant or a :class:`RateSource`; a source that
        never changes from ``t`` on counts as its constant).

        Flows that complete on the way to ``t`` are not lost: the next :meth:`advance`
        returns them (with their own end times)."""
        if t != self.now:  # (at now: what is due now is found by the next advance)
            met = self.advance(t)  # (advance replaces _held: extend the new one)
            self._held.extend(met)
        self._next_known = False
        if not isinstance(own, int | float) and own.next_change_s(t) == INF:
            own = float(own.rate_bytes_per_s(t))  # one group for all equal constant caps
        flow_id = int(flow_id)
        if flow_id in self._flows:
            raise ValueError(f"flow {flow_id} is already active")
        if not (0.0 <= nbytes < INF):
            raise ValueError(f"flow {flow_id}: nbytes {nbytes!r} must be >= 0 and finite")
        try:
            idx = tuple(sorted({self._index[name] for name in path}))
        except KeyError as exc:
            raise ValueError(f"flow {flow_id}: no link named {exc.args[0]!r}; links: "
                             f"{', '.join(self._names)}") from None
        lat = float(self._lat[list(idx)].sum()) if self.model.latency and idx else 0.0
        window = INF
        if self.model.tcp_window_bytes is not None and lat > 0.0:
            window = self.model.tcp_window_bytes / (2.0 * lat)
        src = None if isinstance(own, int | float) else own
        f = _Flow(flow_id, idx, float(nbytes), src,
                  min(float(own), window) if src is None else 0.0, window)
        self._flows[flow_id] = f
        if lat > 0.0:
            f.share_at = t + lat
            heapq.heappush(self._pending, (f.share_at, flow_id))
        else:
            self._join(f, t)

    def remove(self, t: float, flow_id: int) -> float:
        """Stop a flow at ``t`` (its device went offline); returns the bytes it moved.

        Its share is free from ``t`` on: the others' rates are recomputed at ``t``.
        Flows that complete on the way to ``t`` are returned by the next :meth:`advance`.
        """
        met = self.advance(t)  # (advance replaces _held: extend the new one)
        self._held.extend(met)
        self._next_known = False
        f = self._flows.pop(flow_id)
        if f.group is None:
            return 0.0
        g = f.group
        moved = min(g.progress - f.start, f.nbytes)
        self._leave(g)
        return moved

    def next_event(self) -> Event | None:
        """The earliest completion, rate change or start of sharing (None: no flows;
        time ``inf``: every flow is stalled at rate 0 for ever).

        Ties: completions first, then by flow id.
        """
        if self._next_known:
            return self._next
        self._next = self._next_event()
        self._next_known = True
        return self._next

    def _next_event(self) -> Event | None:
        if not self._flows:
            return None
        self._refresh()
        best = (INF, 2, 0)
        for g in self._groups.values():
            top = g.top(self._flows)
            if top is not None:
                best = min(best, (g.done_at(top[0], self.now), 0, top[1]))
        while self._changes and not self._due_change(*self._changes[0]):
            heapq.heappop(self._changes)
        if self._changes:
            best = min(best, (self._changes[0][0], 1, self._changes[0][1]))
        while self._pending and self._pending[0][1] not in self._flows:
            heapq.heappop(self._pending)
        if self._pending:
            best = min(best, (self._pending[0][0], 1, self._pending[0][1]))
        if best[1] == 2:  # only stalled flows
            return Event(INF, min(self._flows), "done")
        t, kind, fid = best
        if kind == 1:
            kind_name = "share" if self._flows[fid].group is None else "rate"
            return Event(t, fid, kind_name)
        return Event(t, fid, "done")

    def advance(self, t: float) -> list[Finished]:
        """Move to time ``t``: every event up to ``t`` happens; returns the flows that
        completed, in time order (ties by flow id), those completed on the way to an
        earlier :meth:`start` or :meth:`remove` first."""
        if t < self.now:
            raise ValueError(f"time {t!r} s is before the network's time {self.now!r} s")
        out, self._held = self._held, []
        while True:
            ev = self.next_event()
            if ev is not None and ev.time_s <= t:
                te = ev.time_s
            elif self.now < t:
                # to t; a flow whose end lies within rounding of t (its progress there
                # already at its bytes, or its end one ulp on) completes at t and is
                # found by the next look: none is popped and forgotten
                te = t
            else:
                break
            done = self._move(te)
            for fid in sorted(done):  # everything due at te happens together, by id
                f = self._flows.pop(fid)
                out.append(Finished(fid, te, f.nbytes))
                assert f.group is not None
                self._leave(f.group)
            while self._pending and self._pending[0][0] <= te:
                _, fid = heapq.heappop(self._pending)
                f2 = self._flows.get(fid)
                if f2 is not None and f2.group is None:
                    self._join(f2, te)
            while self._changes and self._changes[0][0] <= te:
                entry = heapq.heappop(self._changes)
                if self._due_change(*entry):  # its own cap changes: to the new cap's group
                    f3 = self._flows[entry[1]]
                    g = f3.group
                    assert g is not None
                    sent = min(g.progress - f3.start, f3.nbytes)
                    self._leave(g)
                    self._join(f3, te, sent)
        return out

    # -- what the caller may read -----------------------------------------------------

    def rate(self, flow_id: int) -> float:
        """The flow's current rate in bytes per second (0 during its latency)."""
        self._refresh()
        g = self._flows[flow_id].group
        return g.rate if g is not None else 0.0

    def sent_bytes(self, flow_id: int) -> float:
        """Bytes the flow has moved so far."""
        f = self._flows[flow_id]
        return 0.0 if f.group is None else min(f.group.progress - f.start, f.nbytes)

    def active(self) -> list[int]:
        """Ids of the flows not yet completed or removed."""
        return sorted(self._flows)

    def link_stats(self) -> dict[str, tuple[float, float]]:
        """Per link: (bytes carried, seconds with at least one flow crossing it)."""
        return {n: (float(self._link_bytes[k]), float(self._link_busy_s[k]))
                for k, n in enumerate(self._names)}

    # -- inside -------------------------------------------------------------------------

    def _due_change(self, t: float, flow_id: int) -> bool:
        """Whether a change entry still stands (the flow is sharing, the time its own)."""
        f = self._flows.get(flow_id)
        return f is not None and f.group is not None and f.change_at == t

    def _join(self, f: _Flow, t: float, sent: float = 0.0) -> None:
        """``f`` (having moved ``sent`` bytes) joins the group of its route and its own
        cap at ``t``; a flow with a varying cap re-joins at each of its changes."""
        if f.src is not None:
            f.own = min(f.src.rate_bytes_per_s(t), f.window)
            f.change_at = f.src.next_change_s(t)
            if f.change_at < INF:
                heapq.heappush(self._changes, (f.change_at, f.flow_id))
        key = (f.links, f.own, f.window)
        g = self._groups.get(key)
        if g is None:
            g = self._groups[key] = _Group(key, f.links)
        f.group = g
        f.start = g.progress - sent
        f.joins += 1  # entries of earlier joins (another group, or this one before) lapse
        g.count += 1
        heapq.heappush(g.heap, (f.start + f.nbytes, f.flow_id, f.joins))
        self._dirty = True
        self._next_known = False

    def _leave(self, g: _Group) -> None:
        g.count -= 1
        if g.count == 0:
            del self._groups[g.key]
        self._dirty = True
        self._next_known = False

    def _move(self, t: float) -> list[int]:
        """Let every group progress at its rate from ``now`` to ``t``; the ids of the
        flows that are complete at ``t``."""
        self._refresh()
        self._next_known = False
        dt = t - self.now
        done: list[int] = []
        if self._groups:
            load = [0.0] * len(self._names)
            busy = [False] * len(self._names)
            for g in self._groups.values():
                top = g.top(self._flows)
                if top is not None and g.done_at(top[0], self.now) <= t:
                    # the group's progress reaches this flow's target exactly at t
                    # (set, not summed, so rounding never leaves a sliver for later)
                    g.progress = max(top[0], g.progress + g.rate * dt)
                else:
                    g.progress += g.rate * dt
                if dt > 0.0:
                    for k in g.links:
                        load[k] += g.rate * g.count
                        busy[k] = True
                while (top := g.top(self._flows)) is not None and top[0] <= g.progress:
                    heapq.heappop(g.heap)
                    done.append(top[1])
            if dt > 0.0:
                for k, (x, b) in enumerate(zip(load, busy)):
                    if b:
                        self._link_bytes[k] += x * dt
                        self._link_busy_s[k] += dt
        self.now = t
        return done

    def _refresh(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        if not self._groups:
            return
        groups = [self._groups[k] for k in sorted(self._groups)]  # order-free sums
        if len(groups) <= 16:  # a few groups: plain Python beats numpy's call overhead
            rates = _fill_small([g.links for g in groups], [g.own for g in groups],
                                self._cap_list, [g.count for g in groups])
        else:
            inc = np.zeros((len(groups), len(self._names)), dtype=bool)
            for i, g in enumerate(groups):
                inc[i, list(g.links)] = True
            rates = _fill(inc, np.array([g.own for g in groups]), self._cap,
                          np.array([g.count for g in groups], dtype=np.float64)).tolist()
        for g, r in zip(groups, rates):
            g.rate = r


class _Flow:
    __slots__ = ("change_at", "flow_id", "group", "joins", "links", "nbytes", "own",
                 "share_at", "src", "start", "window")

    def __init__(self, flow_id: int, links: tuple[int, ...], nbytes: float,
                 src: RateSource | None, own: float, window: float) -> None:
        self.flow_id = flow_id
        self.links = links
        self.nbytes = nbytes
        self.src = src
        self.own = own
        self.window = window
        self.share_at = INF
        self.change_at = INF
        self.joins = 0
        self.group: _Group | None = None
        self.start = 0.0


class _Group:
    """Flows with the same links and the same own cap now: ``key = (links, own, window)``."""

    __slots__ = ("count", "heap", "key", "links", "own", "progress", "rate")

    def __init__(self, key: tuple, links: tuple[int, ...]) -> None:
        self.key = key
        self.links = links
        self.own = key[1]
        self.count = 0
        self.heap: list[tuple[float, int, int]] = []  # (target, flow id, its join)
        self.progress = 0.0
        self.rate = 0.0

    def top(self, flows: dict[int, _Flow]) -> tuple[float, int, int] | None:
        """The member with the smallest target (dropping entries that lapsed: the flow
        ended, was removed, or joined again since)."""
        h = self.heap
        while h:
            f = flows.get(h[0][1])
            if f is not None and f.group is self and f.joins == h[0][2]:
                return h[0]
            heapq.heappop(h)
        return None

    def done_at(self, target: float, now: float) -> float:
        left = target - self.progress
        if left <= 0.0:
            return now
        return now + left / self.rate if self.rate > 0.0 else INF


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
    return _fill(inc, np.asarray(own, dtype=np.float64), capacity,
                 np.ones(len(paths)))


def _fill(inc: np.ndarray, own: np.ndarray, capacity: np.ndarray, size: np.ndarray
          ) -> np.ndarray:
    """Progressive filling over the incidence matrix ``inc`` (groups x links); group
    ``i`` is ``size[i]`` flows that each get the rate returned for it."""
    n, m = inc.shape
    rate = np.zeros(n)
    if n == 0:
        return rate
    cap_left = capacity.astype(np.float64, copy=True)
    count = size @ inc
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
        cap_left -= (rate[sel] * size[sel]) @ inc[sel]
        count -= size[sel] @ inc[sel]
    return rate


def _fill_small(paths: Sequence[tuple[int, ...]], own: Sequence[float],
                capacity: Sequence[float], size: Sequence[float]) -> list[float]:
    """:func:`_fill` for a few groups, in plain Python (the same rule, step by step)."""
    n = len(paths)
    rate = [0.0] * n
    cap_left = list(capacity)
    count = [0.0] * len(capacity)
    for p, c in zip(paths, size):
        for k in p:
            count[k] += c
    free = set(range(n))
    while free:
        level = INF
        for k, c in enumerate(count):
            if c > 0:
                level = min(level, max(cap_left[k], 0.0) / c)
        sel = [i for i in sorted(free) if own[i] <= level and own[i] < INF]
        if sel:
            for i in sel:
                rate[i] = own[i]
        elif level == INF:
            raise ValueError("a flow crosses no link and has no own rate cap")
        else:
            bott = {k for k, c in enumerate(count)
                    if c > 0 and max(cap_left[k], 0.0) / c == level}
            sel = [i for i in sorted(free) if bott.intersection(paths[i])]
            for i in sel:
                rate[i] = level
        for i in sel:
            free.discard(i)
            for k in paths[i]:
                cap_left[k] -= rate[i] * size[i]
                count[k] -= size[i]
    return rate
