"""Energy and batteries: joules of a device's phases, and the exact instants a battery
empties or is charged again (no SimPy, no ticks).

Power in each phase is piecewise constant (docs/energy.md has the formulas and sources):

- computing: ``idle_w + full_load_w * a(t)``, ``a(t)`` the availability the trace gives
  (the share of peak compute training uses), ``full_load_w`` either given or
  ``joules_per_mac * peak_macs_per_s``; a step of ``work_s`` seconds-at-full-availability
  thus costs ``full_load_w * work_s`` joules over its idle draw, i.e. exactly
  ``joules_per_mac * MACs`` in the per-MAC form;
- sending / receiving: ``idle_w + tx_w`` (``rx_w``) for the transfer's airtime, or
  ``joules_per_byte`` times its bytes spread evenly over the airtime;
- otherwise (waiting, offline): ``idle_w``.

A battery gains ``charge_w`` while charging (always, or while the trace says the device
is online, as FedScale's traces are of devices on a charger) and never holds more than
its capacity. The level is piecewise linear, so the instant it reaches a level is solved
on the piece where it gets there: ``t = t_a + (target - level_a) / net_w``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

INF = math.inf

#: one piece of a phase: (start_s, end_s, power drawn by the device in watts)
Piece = tuple[float, float, float]


@dataclass(frozen=True)
class EnergyProfile:
    """What a device of one class draws (watts, joules).

    Parameters
    ----------
    full_load_w : compute power at availability 1 (over idle); or None
    joules_per_mac : compute energy per MAC (used when ``full_load_w`` is None)
    tx_w, rx_w : radio power while sending / receiving (over idle)
    joules_per_byte_up, joules_per_byte_down : radio energy per byte instead (None: use
        the powers)
    idle_w : what the device draws whenever it is on
    """

    full_load_w: float | None = None
    joules_per_mac: float | None = None
    tx_w: float = 0.0
    rx_w: float = 0.0
    joules_per_byte_up: float | None = None
    joules_per_byte_down: float | None = None
    idle_w: float = 0.0

    def __post_init__(self) -> None:
        for name in ("full_load_w", "joules_per_mac", "tx_w", "rx_w", "joules_per_byte_up",
                     "joules_per_byte_down", "idle_w"):
            x = getattr(self, name)
            if x is not None and not (0.0 <= x < INF):
                raise ValueError(f"{name} = {x!r} is not allowed (>= 0, finite)")
        if self.full_load_w is not None and self.joules_per_mac is not None:
            raise ValueError("give full_load_w or joules_per_mac, not both")

    def compute_w(self, peak_macs_per_s: float) -> float:
        """Compute power at availability 1, over idle."""
        if self.full_load_w is not None:
            return self.full_load_w
        if self.joules_per_mac is not None:
            return self.joules_per_mac * peak_macs_per_s
        return 0.0

    def compute_j(self, work_s: float, peak_macs_per_s: float) -> float:
        """Joules (over idle) of ``work_s`` seconds-at-full-availability of compute."""
        return self.compute_w(peak_macs_per_s) * work_s

    def radio_w(self, direction: Literal["up", "down"], nbytes: float, airtime_s: float
                ) -> float:
        """Radio power (over idle) of a transfer of ``nbytes`` lasting ``airtime_s``."""
        per_byte = self.joules_per_byte_up if direction == "up" else self.joules_per_byte_down
        if per_byte is not None:
            return per_byte * nbytes / airtime_s if airtime_s > 0 else 0.0
        return self.tx_w if direction == "up" else self.rx_w

    def radio_j(self, direction: Literal["up", "down"], nbytes: float, airtime_s: float
                ) -> float:
        """Radio joules (over idle) of a transfer."""
        per_byte = self.joules_per_byte_up if direction == "up" else self.joules_per_byte_down
        if per_byte is not None:
            return per_byte * nbytes
        return (self.tx_w if direction == "up" else self.rx_w) * airtime_s

    # -- pieces of power, for the battery ----------------------------------------------

    def compute_pieces(self, avail: Iterable[Piece], peak_macs_per_s: float) -> list[Piece]:
        """Power while computing, from availability pieces ``(start, end, a)``."""
        w = self.compute_w(peak_macs_per_s)
        return [(a, b, self.idle_w + w * v) for a, b, v in avail]

    def transfer_pieces(self, direction: Literal["up", "down"], t0: float, t1: float,
                        nbytes: float) -> list[Piece]:
        return [(t0, t1, self.idle_w + self.radio_w(direction, nbytes, t1 - t0))]

    def idle_pieces(self, t0: float, t1: float) -> list[Piece]:
        return [(t0, t1, self.idle_w)]


def energy_j(pieces: Iterable[Piece]) -> float:
    """Joules drawn over ``pieces``: the exact integral of piecewise-constant power."""
    return math.fsum(w * (b - a) for a, b, w in pieces)


@dataclass(frozen=True)
class BatterySpec:
    """A battery.

    Parameters
    ----------
    capacity_j : full charge, joules (> 0)
    floor_j : the device stops (goes offline) when the level reaches this
    resume_j : it comes back when charged to this (> floor_j)
    charge_w : charging power
    charge_when : ``always``, ``online`` (while the trace says the device is online) or
        ``never``
    """

    capacity_j: float
    floor_j: float = 0.0
    resume_j: float = 1.0
    charge_w: float = 0.0
    charge_when: Literal["always", "online", "never"] = "never"

    def __post_init__(self) -> None:
        if not (0.0 < self.capacity_j < INF):
            raise ValueError(f"capacity_j = {self.capacity_j!r} is not allowed (> 0, finite)")
        # resume above the floor: a device back at its floor would stop again at once
        if not (0.0 <= self.floor_j < self.resume_j <= self.capacity_j):
            raise ValueError("need 0 <= floor_j < resume_j <= capacity_j")
        if not (0.0 <= self.charge_w < INF):
            raise ValueError(f"charge_w = {self.charge_w!r} is not allowed (>= 0, finite)")


def net_pieces(draw: Sequence[Piece], battery: BatterySpec,
               online: Sequence[Piece] | None = None) -> list[Piece]:
    """Power *into* the battery: charging minus the device's draw, per piece.

    ``online``: the online signal's pieces ``(start, end, 0 or 1)`` over the same span,
    needed when ``charge_when`` is ``online``; the result is cut at both kinds of
    breakpoints.
    """
    if battery.charge_when == "never" or battery.charge_w == 0.0:
        return [(a, b, -w) for a, b, w in draw]
    if battery.charge_when == "always":
        return [(a, b, battery.charge_w - w) for a, b, w in draw]
    if online is None:
        raise ValueError("charge_when 'online' needs the online pieces")
    out: list[Piece] = []
    j = 0
    for a, b, w in draw:
        t = a
        while t < b:
            while j < len(online) and online[j][1] <= t:
                j += 1
            if j == len(online):
                raise ValueError(f"the online pieces end before {b!r} s")
            oa, ob, on = online[j]
            if oa > t:
                raise ValueError(f"the online pieces do not cover {t!r} s")
            end = min(b, ob)
            out.append((t, end, (battery.charge_w if on else 0.0) - w))
            t = end
    return out


def level_after(level_j: float, pieces: Iterable[Piece], capacity_j: float) -> float:
    """The level at the end of ``pieces`` (power into the battery), never above
    ``capacity_j`` (a full battery stops charging) nor below 0."""
    for a, b, p in pieces:
        level_j = min(capacity_j, max(0.0, level_j + p * (b - a)))
    return level_j


def crossing_s(level_j: float, target_j: float, pieces: Iterable[Piece],
               capacity_j: float) -> float:
    """The first instant within ``pieces`` (power into the battery) at which the level,
    starting at ``level_j``, reaches ``target_j`` (``inf``: not within them).

    Downwards (``target_j < level_j``): the battery empties to ``target_j``; upwards: it
    charges to it. Solved on the piece where it happens, ``t_a + (target - level) / p``.
    """
    down = target_j < level_j
    if target_j == level_j:
        for a, _b, _p in pieces:
            return a
        return INF
    for a, b, p in pieces:
        if (down and p < 0.0) or (not down and p > 0.0):
            t = a + (target_j - level_j) / p
            if t <= b:
                return max(a, t)
        level_j = min(capacity_j, max(0.0, level_j + p * (b - a)))
        if level_j == target_j:
            return b
    return INF


def empty_s(level_j: float, battery: BatterySpec, pieces: Iterable[Piece]) -> float:
    """When the battery reaches its floor during ``pieces`` (``inf``: it does not)."""
    if level_j <= battery.floor_j:
        for a, _b, _p in pieces:
            return a
        return INF
    return crossing_s(level_j, battery.floor_j, pieces, battery.capacity_j)


def recharged_s(level_j: float, battery: BatterySpec, pieces: Iterable[Piece]) -> float:
    """When the battery is back at ``resume_j`` during ``pieces`` (``inf``: not)."""
    if level_j >= battery.resume_j:
        for a, _b, _p in pieces:
            return a
        return INF
    return crossing_s(level_j, battery.resume_j, pieces, battery.capacity_j)


#: (start, end) -> the online signal's pieces on that span (charge_when 'online')
OnlinePieces = Callable[[float, float], list[Piece]]


def _no_online(a: float, b: float) -> list[Piece]:
    raise ValueError("charge_when 'online' needs the online pieces")


@dataclass
class BatteryState:
    """One device's battery as time goes on: its level at ``t_s``, and whether it is
    ``off`` (emptied to the floor; it draws nothing until charged back to ``resume_j``).

    :meth:`settle` moves it through idle time, :meth:`spend` through a phase of work;
    both solve each empty and recharge instant exactly.
    """

    level_j: float
    t_s: float = 0.0
    off: bool = False

    def settle(self, t1: float, battery: BatterySpec, profile: EnergyProfile,
               online: OnlinePieces = _no_online) -> None:
        """Idle (or off) from ``t_s`` to ``t1``: draw ``idle_w`` while on, charge as
        ``charge_when`` says; empties and recharges on the way happen at their instants."""
        while self.t_s < t1:
            draw = [(self.t_s, t1, 0.0 if self.off else profile.idle_w)]
            net = net_pieces(draw, battery, _online_for(battery, online, self.t_s, t1))
            if self.off:
                t = recharged_s(self.level_j, battery, net)
                if t > t1:
                    break
                self.level_j, self.t_s, self.off = battery.resume_j, t, False
            else:
                t = empty_s(self.level_j, battery, net)
                if t > t1:
                    break
                self.level_j, self.t_s, self.off = battery.floor_j, t, True
        else:
            return
        self.level_j = level_after(self.level_j, net, battery.capacity_j)
        self.t_s = t1

    def spend(self, draw: Sequence[Piece], battery: BatterySpec,
              online: OnlinePieces = _no_online) -> float:
        """A phase of work drawing ``draw`` (consecutive pieces from ``t_s``): returns the
        instant the battery reaches its floor (the device goes off then, and the level
        stays at the floor), or ``inf`` if it lasts the phase."""
        if not draw:
            return INF
        if self.off:
            return draw[0][0]
        t0, t1 = draw[0][0], draw[-1][1]
        net = net_pieces(draw, battery, _online_for(battery, online, t0, t1))
        t = empty_s(self.level_j, battery, net)
        if t <= t1:
            self.level_j, self.t_s, self.off = battery.floor_j, t, True
            return t
        self.level_j = level_after(self.level_j, net, battery.capacity_j)
        self.t_s = t1
        return INF


def _online_for(battery: BatterySpec, online: OnlinePieces, t0: float, t1: float
                ) -> list[Piece] | None:
    if battery.charge_when != "online" or battery.charge_w == 0.0:
        return None
    return online(t0, t1)


# ----------------------------------------------------------------------------- defaults

#: A realistic phone (docs/energy.md gives each number's source). Energy is off unless a
#: scenario configures it; this is what `energy: {profile: phone}` means.
PHONE = EnergyProfile(full_load_w=0.8, tx_w=2.6, rx_w=1.8, idle_w=0.1)
PHONE_BATTERY_J = 3.0 * 3.85 * 3600.0  # 3000 mAh at 3.85 V nominal: 41,580 J
PHONE_CHARGE_W = 10.0  # a 5 V, 2 A USB charger
