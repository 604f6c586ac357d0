"""Energy and batteries in the engine: joules per device-round, and batteries that end
work at the exact instant they reach their floor (no SimPy; see :mod:`fleetsim.energy`
for the models and ``docs/energy.md`` for the formulas and sources).

A device-round draws, piece by piece: the download's radio power for its airtime, the
compute power ``idle + full_load * a(t)`` while it trains (``a`` the availability its
trace gives), the upload's radio power, ``idle`` otherwise. Its fate is first worked
out as if it had no battery; the battery then spends that draw, and if it reaches its
floor before the fate, the round is worked out again with the device going offline at
that instant (the same phases up to it: the draw is the same). The battery itself moves
only when the device-round is settled (:meth:`Power.commit`, with its final end, which a
server closing early may have cut back), and between rounds it idles and charges
(:meth:`Power.alive`, asked by selection).
"""

from __future__ import annotations

import math
from typing import Any

from fleetsim.energy import BatteryState, Piece, energy_j
from fleetsim.engine.rows import DeviceRound
from fleetsim.fleet import Fleet
from fleetsim.traces.device import pieces

INF = math.inf


class Power:
    """The fleet's batteries and what each device-round draws."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        #: per device with a battery, its state (settled lazily; kept by checkpoints)
        self.states: dict[int, BatteryState] = {}

    def _online(self, d: int) -> Any:
        tr = self.fleet.trace(d)
        return lambda a, b: pieces(tr, a, b, "online")

    def _state(self, d: int, t: float) -> BatteryState | None:
        """The battery of ``d`` settled to ``t`` (None: no battery)."""
        bat = self.fleet.battery(d)
        if bat is None:
            return None
        st = self.states.get(d)
        if st is None:
            st = self.states[d] = BatteryState(level_j=self.fleet.initial_charge_j(d))
        if st.t_s < t:
            st.settle(t, bat, self.fleet.energy(d), self._online(d))  # type: ignore[arg-type]
        return st

    def alive(self, d: int, t: float) -> bool:
        """Whether ``d``'s battery lets it be on at ``t`` (above its floor, or charged
        back to its resume level)."""
        st = self._state(d, t)
        return st is None or not st.off

    def fraction(self, d: int, t: float) -> float:
        """``d``'s battery charge at ``t`` as a share of its capacity (1.0: no battery);
        what selectors see (:attr:`fleetsim.server.selection.FleetView.battery_fraction`).
        Asked only of idle devices (a device mid-round settles when its round does)."""
        st = self._state(d, t)
        if st is None:
            return 1.0
        bat = self.fleet.battery(d)
        assert bat is not None
        return st.level_j / bat.capacity_j

    def left_j(self, o: DeviceRound, t: float) -> float:
        """Charge above its floor that ``o``'s battery has at ``t`` during its training
        (download done, compute up to ``t``), as the device would read it (``inf``: no
        battery; 0: it would be at its floor)."""
        bat = self.fleet.battery(o.device)
        if bat is None:
            return INF
        st = self._state(o.device, o.t_start)
        assert st is not None
        probe = BatteryState(st.level_j, st.t_s, st.off)
        if probe.spend(self.draw(o, t), bat, self._online(o.device)) < INF:
            return 0.0
        return max(probe.level_j - bat.floor_j, 0.0)

    def draw(self, o: DeviceRound, t_end: float) -> list[Piece]:
        """What ``o`` drew from its start to ``t_end``, piece by piece."""
        prof = self.fleet.energy(o.device)
        p = o.plan
        assert prof is not None and p is not None, "draw of a round without a plan"
        out: list[Piece] = []
        t_dl = min(p.t_start + p.down_s, t_end)
        if t_dl > p.t_start:
            out += prof.transfer_pieces("down", p.t_start, t_dl, o.bytes_down)
        if t_end <= t_dl:
            return out
        t_up = p.up_start if p.up_start is not None and p.up_start < t_end else t_end
        if o.status == "too_slow" or (o.steps == 0 and o.macs == 0.0):
            if t_up > t_dl:  # nothing computed: it waited (told the server, or stopped)
                out += prof.idle_pieces(t_dl, t_up)
        elif t_up > t_dl:
            tr = self.fleet.trace(o.device)
            out += prof.compute_pieces(pieces(tr, t_dl, t_up),
                                       float(self.fleet.peak_macs_per_s[o.device]))
        if t_up < t_end:
            out += prof.transfer_pieces("up", t_up, t_end, o.bytes_up)
        return out

    def empty_at(self, o: DeviceRound) -> float:
        """When ``o``'s battery would reach its floor during its round (``inf``: it
        lasts, or no battery); the battery itself does not move."""
        bat = self.fleet.battery(o.device)
        if bat is None or o.t_end == INF:
            return INF
        st = self._state(o.device, o.t_start)
        assert st is not None
        probe = BatteryState(st.level_j, st.t_s, st.off)
        return probe.spend(self.draw(o, o.t_end), bat, self._online(o.device))

    def empty_during(self, o: DeviceRound, direction: str, t: float) -> float:
        """When ``o``'s battery reaches its floor during a transfer from ``t`` (its phase's
        start, latency included) whose end is not known yet (shared links): the radio's
        power is constant then, so the instant is that of the draw so far followed by
        one piece of constant power, the same arithmetic :meth:`commit` does later
        (``inf``: it lasts, or no battery). The battery itself does not move."""
        bat, prof = self.fleet.battery(o.device), self.fleet.energy(o.device)
        if bat is None or prof is None:
            return INF
        assert prof.joules_per_byte_up is None and prof.joules_per_byte_down is None, \
            "per-byte radio energy with shared links and batteries is refused by the server"
        st = self._state(o.device, o.t_start)
        assert st is not None
        probe = BatteryState(st.level_j, st.t_s, st.off)
        online = self._online(o.device)
        before = self.draw(o, t) if o.plan is not None else []
        t_empty = probe.spend(before, bat, online)
        if t_empty < INF:
            return t_empty
        w = prof.idle_w + prof.radio_w(direction, 0, 1.0)  # type: ignore[arg-type]
        # charging adds at most charge_w (an online device charges while it transfers),
        # so the level reaches the floor by t + left / (w - charge_w), or never
        charge_w = 0.0 if bat.charge_when == "never" else bat.charge_w
        if w <= charge_w:
            return INF
        left_j = max(probe.level_j - bat.floor_j, 0.0)
        horizon = t + 2.0 * left_j / (w - charge_w) + 1.0
        return probe.spend([(t, horizon, w)], bat, online)

    def commit(self, o: DeviceRound) -> None:
        """Settle ``o`` at its final end: its joules, and its battery spends them."""
        if self.fleet.energy(o.device) is None or o.plan is None:
            return
        draw = self.draw(o, o.t_end)
        o.energy_j = energy_j(draw)
        bat = self.fleet.battery(o.device)
        if bat is not None:
            st = self._state(o.device, o.t_start)
            assert st is not None
            st.spend(draw, bat, self._online(o.device))
