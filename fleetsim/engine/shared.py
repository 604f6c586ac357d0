"""Transfers through shared links, as SimPy events (``fleet.network.sharing: max_min``).

Where devices share a link, a device's round can no longer be worked out alone when it
starts: its transfer's rate changes whenever another transfer crossing one of its links
starts or ends, or its device goes offline. So here each device of a round is a SimPy
process (:func:`device_round`): it starts its download as a flow of the download
:class:`~fleetsim.links.FlowNetwork` and waits for the flow's completion event, or for
going offline or the cutoff, whichever comes first (then its flow is removed and frees
its share at that instant); it trains exactly as the timer says (no events per
mini-batch); it uploads through the upload network the same way. One network process
(:class:`SharedLinks`) waits with a single timeout for the networks' next event and is
woken (a SimPy event) whenever a flow starts or is removed, since that moves every other
flow's completion. Rates are max-min fair, recomputed lazily once per instant over the
flows sorted by id, so the answer does not depend on the order of events at one
instant. The schedule still depends on the cost model, the traces and the network
alone, never on training.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Generator
from typing import Any

import simpy

from fleetsim.engine.rows import DeviceRound, Plan
from fleetsim.engine.timing import DeviceTimer
from fleetsim.fleet import Fleet
from fleetsim.links import ConstantRate, FlowNetwork

INF = math.inf


class SharedLinks:
    """The upload and download flow networks of a run, driven by one SimPy process."""

    def __init__(self, env: simpy.Environment, fleet: Fleet) -> None:
        self.env = env
        self.fleet = fleet
        links = fleet.links
        self.nets = {"up": FlowNetwork({n: spec[0] for n, spec in links.items()},
                                       fleet.link_model),
                     "down": FlowNetwork({n: spec[1] for n, spec in links.items()},
                                         fleet.link_model)}
        self._events: dict[tuple[str, int], simpy.Event] = {}
        self._ids = itertools.count()
        self._wake = env.event()
        self._now = 0.0  # the networks' time (env.now may lag it by an ulp)
        #: (stop time, flow id, direction): when a flow is removed unless done by then
        #: (its device goes offline, or the cutoff): kept here rather than as a SimPy
        #: timeout per transfer, so a transfer costs one event
        self._stops: list[tuple[float, int, str]] = []
        #: (start time, flow id, direction, device, bytes, stop): flows to start, by the
        #: network process at their time (now, or later: an upload once training ends),
        #: all of one instant together
        self._starts: list[tuple[float, int, str, int, int, float]] = []
        env.process(self._run())

    def _advance(self, t: float) -> None:
        """Everything up to ``t`` happens, in time order: completed flows' events fire
        with ``(end, nbytes, True)`` (ties by flow id), flows whose stop time comes are
        removed and theirs fire with ``(stop, bytes moved, False)``; a completion at a
        flow's stop time comes first."""
        t = max(t, self._now)
        stops, starts = self._stops, self._starts
        events = self._events
        while True:
            while stops and (stops[0][2], stops[0][1]) not in events:
                # its flow is done: nothing happens then (most stops are a round's
                # cutoff, long after its transfers ended), so no need to move the networks
                heapq.heappop(stops)
            ts = min(stops[0][0] if stops else INF, starts[0][0] if starts else INF)
            upto = min(t, ts)
            done = []
            for direction, net in self.nets.items():
                done += [(f.end_s, f.flow_id, direction, f.nbytes)
                         for f in net.advance(max(upto, self._now))]
            for end_s, fid, direction, nbytes in sorted(done):
                self._events.pop((direction, fid)).succeed((end_s, nbytes, True))
            self._now = max(upto, self._now)
            if ts > t:
                break
            if starts and starts[0][0] == ts and not (stops and stops[0][0] < ts):
                while starts and starts[0][0] == ts:  # all of this instant's, by id
                    _, fid, direction, device, nbytes, stop = heapq.heappop(starts)
                    self._start_now(direction, device, fid, nbytes, stop)
                continue
            _, fid, direction = heapq.heappop(stops)
            ev = self._events.pop((direction, fid), None)
            if ev is not None:  # still moving: removed now, its share freed
                moved = self.nets[direction].remove(self._now, fid)
                ev.succeed((self._now, int(moved), False))

    def _poke(self) -> None:
        if not self._wake.triggered:
            self._wake.succeed()

    def start(self, direction: str, device: int, t: float, nbytes: int, stop: float
              ) -> simpy.Event:
        """A flow of ``nbytes`` from ``device`` at ``t``, removed at ``stop`` unless done:
        its event's value is ``(end, bytes moved, completed)``."""
        ev = self.env.event()
        fid = next(self._ids)
        self._events[(direction, fid)] = ev
        # the network process starts it at its time (no SimPy timeout), together with
        # every other flow that starts at that instant (one recomputation of rates)
        heapq.heappush(self._starts, (max(t, self._now), fid, direction, device, nbytes,
                                      stop))
        self._poke()
        return ev

    def _start_now(self, direction: str, device: int, fid: int, nbytes: int,
                   stop: float) -> None:
        t = self._now
        own = self.fleet.own_rate(device, direction)
        if isinstance(own, ConstantRate):
            # a number, not a rate source: flows of equal constant caps on one route
            # then share one group in the network (cost per group, not per flow)
            own = own.bytes_per_s
        self.nets[direction].start(t, fid, self.fleet.route(device), nbytes, own)
        if stop < INF:
            heapq.heappush(self._stops, (stop, fid, direction))

    def busy_s(self) -> float:
        """The largest busy time (seconds with a flow) of any link, either direction."""
        return max((busy for net in self.nets.values()
                    for _, busy in net.link_stats().values()), default=0.0)

    def _run(self) -> Generator[simpy.events.Event, Any, None]:
        env = self.env
        while True:
            nxt = [ev.time_s for net in self.nets.values()
                   if (ev := net.next_event()) is not None]
            if self._stops:
                nxt.append(self._stops[0][0])
            if self._starts:
                nxt.append(self._starts[0][0])
            t_next = min(nxt, default=INF)
            wake = self._wake
            if t_next == INF:
                yield wake
                timed_out = False
            else:
                to = env.timeout(max(t_next - env.now, 0.0))
                yield to | wake
                timed_out = to.processed
            if wake.triggered:
                self._wake = env.event()
            # the networks' own event time, not env.now (which may land an ulp short)
            self._advance(t_next if timed_out else env.now)


def device_round(env: simpy.Environment, links: SharedLinks, timer: DeviceTimer,
                 out: DeviceRound, a: Any, cutoff: float, deadline_s: float | None,
                 nbytes: int, up_nbytes: int) -> Generator[simpy.events.Event, Any, None]:
    """One device's round over shared links (a SimPy process): download, training (the
    timer's exact steps), upload; going offline, its battery reaching its floor or the
    cutoff stops it at that instant.

    A battery empties during a transfer at an instant known when the transfer starts
    (the radio's power is constant during it), so that instant is one more stop time of
    the flow, exactly like going offline; during training the timer finds it as on
    private links. The server commits the round's energy afterwards (``Power.commit``).
    """
    fleet, power = timer.fleet, timer.power
    d, t0 = out.device, out.t_start
    t_off = fleet.trace(d).next_offline(t0)
    # the path's latency comes first, as on private links (unless the network models it)
    lat = 0.0 if fleet.link_model.latency else fleet.path(d).latency_s
    t_bat = power.empty_during(out, "down", t0) if power is not None else INF
    end, moved, ok = yield from _transfer(env, links, "down", d, t0, lat, nbytes,
                                          min(t_off, t_bat), cutoff)
    out.down_s = end - t0  # (the timeline's transfer times)
    if not ok:
        out.t_end, out.status, out.bytes_down = end, _why(end, min(t_off, t_bat)), moved
        out.battery_ended = out.status == "dropped" and end == t_bat
        # what the download drew (the server commits its energy)
        out.plan = Plan(nbytes, lat, t0, end - t0)
        return
    timer._schedule(out, a, cutoff, deadline_s, record=False, down_s_given=end - t0,
                    stop_at_upload=True)
    t_bat = power.empty_at(out) if power is not None else INF
    if t_bat < INF:  # its battery reaches its floor while it trains: offline then
        fresh = DeviceRound(d, out.round, t0, start_version=out.start_version)
        timer._schedule(fresh, a, cutoff, deadline_s, record=False, down_s_given=end - t0,
                        stop_at_upload=True, t_off_cap=t_bat)
        for f in DeviceRound.__slots__:
            setattr(out, f, getattr(fresh, f))
        out.down_s = end - t0
        out.battery_ended = out.status == "dropped" and out.t_end == t_bat
    if out.status != "uploading":  # its fate during training: wait for it
        yield env.timeout(max(out.t_end - env.now, 0.0))
        return
    t_up = out.t_end  # the upload starts then (the network process starts it)
    t_bat = power.empty_during(out, "up", t_up) if power is not None else INF
    end, moved, ok = yield from _transfer(env, links, "up", d, t_up, lat, up_nbytes,
                                          min(t_off, t_bat), cutoff)
    assert out.plan is not None
    out.plan.up_s = out.up_s = end - t_up
    out.t_end, out.bytes_up = end, moved
    if ok:
        out.status = "completed"
    else:
        out.status, out.job = _why(end, min(t_off, t_bat)), None
        out.battery_ended = out.status == "dropped" and end == t_bat


def _why(end: float, t_off: float) -> str:
    return "dropped" if end >= t_off else "late"


def _transfer(env: simpy.Environment, links: SharedLinks, direction: str, d: int,
              t: float, lat: float, nbytes: int, t_off: float, cutoff: float
              ) -> Generator[simpy.events.Event, Any, tuple[float, int, bool]]:
    """(end, bytes moved, completed) of a transfer from ``t``: latency, then the flow;
    going offline (``t_off``: offline, or the battery at its floor) wins a tie, an
    arrival at the cutoff counts (as on private links)."""
    stop = min(t_off, cutoff)
    if lat > 0.0 and (t + lat >= t_off or t + lat > cutoff):
        yield env.timeout(max(stop - env.now, 0.0))
        return stop, 0, False
    end, moved, ok = yield links.start(direction, d, t + lat, nbytes, stop)
    if ok and end >= t_off:  # done exactly as it goes offline: offline wins the tie
        return t_off, nbytes, False
    return end, moved, ok
