"""Energy and batteries against the example docs/energy.md works by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fleetsim.energy import (
    PHONE,
    PHONE_BATTERY_J,
    BatterySpec,
    BatteryState,
    EnergyProfile,
    crossing_s,
    empty_s,
    energy_j,
    level_after,
    net_pieces,
    recharged_s,
)
from fleetsim.traces.device import DeviceTrace, pieces

INF = float("inf")

# docs/energy.md, "A worked example"
PROFILE = EnergyProfile(full_load_w=2.0, tx_w=3.0, rx_w=1.0, idle_w=0.5)
TRACE = DeviceTrace(np.array([0.0, 40.0]), np.array([1.0, 0.5]),
                    np.array([0.0, 90.0, 150.0]), np.array([1, 0, 1]), None)
BATTERY = BatterySpec(capacity_j=1000.0, floor_j=20.0, resume_j=40.0, charge_w=1.0,
                      charge_when="online")


def online(a: float, b: float) -> list[tuple[float, float, float]]:
    return pieces(TRACE, a, b, "online")


def phases() -> tuple[list, list, list]:
    down = PROFILE.transfer_pieces("down", 0.0, 10.0, 5e6)
    t_end = TRACE.finish_time(10.0, 50.0)  # 30 s of work by 40, 20 more at 0.5: 80
    comp = PROFILE.compute_pieces(pieces(TRACE, 10.0, t_end), peak_macs_per_s=1e9)
    up = PROFILE.transfer_pieces("up", t_end, t_end + 20.0, 5e6)
    return down, comp, up


def test_the_worked_example_joules() -> None:
    down, comp, up = phases()
    assert comp[-1][1] == 80.0
    assert energy_j(down) == 15.0  # (0.5 + 1) W x 10 s
    assert energy_j(comp) == 135.0  # 2.5 W x 30 s + 1.5 W x 40 s
    assert energy_j(up) == 70.0  # (0.5 + 3) W x 20 s
    # the same 220 J split by cause: compute 2 W x 50 s of work, radio, idle 0.5 W x 100 s
    assert PROFILE.compute_j(50.0, 1e9) == 100.0
    assert PROFILE.radio_j("down", 5e6, 10.0) + PROFILE.radio_j("up", 5e6, 20.0) == 70.0
    assert 100.0 + 70.0 + 0.5 * 100.0 == energy_j(down + comp + up) == 220.0


def test_the_worked_example_battery_empties_and_recharges() -> None:
    down, comp, up = phases()
    b = BatteryState(level_j=100.0)
    assert b.spend(down, BATTERY, online) == INF and b.level_j == 95.0  # net -0.5 W
    assert b.spend(comp, BATTERY, online) == INF and b.level_j == 30.0  # -45 - 20
    # the upload draws 3.5 W against 1 W of charging: 10 J above the floor last 4 s
    assert b.spend(up, BATTERY, online) == 84.0
    assert (b.level_j, b.t_s, b.off) == (20.0, 84.0, True)
    # off, it draws nothing: +1 W while on the charger (online) 84..90 -> 26 J;
    # unplugged 90..150; from 150 the 14 J to resume_j take 14 s: back at 164
    b.settle(120.0, BATTERY, PROFILE, online)
    assert (b.level_j, b.off) == (26.0, True)
    b.settle(200.0, BATTERY, PROFILE, online)
    assert not b.off
    # from 164 on, 1 W in and 0.5 W idle out: 40 + 0.5 x 36 = 58 J at 200
    assert b.level_j == pytest.approx(58.0, rel=1e-15)
    assert b.t_s == 200.0


def test_idle_drain_empties_between_rounds() -> None:
    # no charging: 0.5 W idle drains 30 J above the floor of 20 in 60 s
    never = BatterySpec(capacity_j=100.0, floor_j=20.0, resume_j=30.0)
    b = BatteryState(level_j=50.0, t_s=10.0)
    b.settle(1000.0, never, PROFILE)
    assert (b.level_j, b.off) == (20.0, True)
    assert b.spend(PROFILE.idle_pieces(1000.0, 1001.0), never) == 1000.0


def test_crossing_solves_the_piece_it_happens_in() -> None:
    net = [(0.0, 10.0, -1.0), (10.0, 20.0, 2.0), (20.0, 30.0, -3.0)]
    assert crossing_s(50.0, 45.0, net, 100.0) == 5.0
    assert crossing_s(50.0, 55.0, net, 100.0) == 17.5  # 40 at 10, +2 W: 55 at 17.5
    assert crossing_s(50.0, 35.0, net, 100.0) == pytest.approx(20.0 + 25.0 / 3.0)  # 60 at 20
    assert crossing_s(50.0, 10.0, net, 100.0) == INF
    assert level_after(50.0, net, 100.0) == 30.0
    assert level_after(95.0, [(0.0, 10.0, 2.0)], 100.0) == 100.0  # full: stops charging
    assert empty_s(10.0, BATTERY, net) == 0.0  # already at the floor
    assert recharged_s(50.0, BATTERY, net) == 0.0  # already above resume


def test_net_pieces_cut_at_the_online_edges() -> None:
    draw = [(80.0, 100.0, 3.5)]
    assert net_pieces(draw, BATTERY, online(80.0, 100.0)) == [(80.0, 90.0, -2.5),
                                                              (90.0, 100.0, -3.5)]
    always = BatterySpec(capacity_j=10.0, charge_w=4.0, charge_when="always")
    assert net_pieces(draw, always) == [(80.0, 100.0, 0.5)]


def test_joules_per_mac_is_energy_per_mac() -> None:
    # Yang et al.'s form: kappa f^2 per cycle; here 1e-10 J/MAC on a 2e9 MAC/s device
    p = EnergyProfile(joules_per_mac=1e-10)
    macs, peak = 3e11, 2e9
    assert p.compute_w(peak) == pytest.approx(0.2)
    assert p.compute_j(macs / peak, peak) == pytest.approx(1e-10 * macs, rel=1e-15)
    per_byte = EnergyProfile(joules_per_byte_up=2e-7)
    assert per_byte.radio_j("up", 1e6, 3.0) == pytest.approx(0.2)
    assert per_byte.radio_w("up", 1e6, 4.0) == pytest.approx(0.05)


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="capacity_j"):
        BatterySpec(capacity_j=0.0)
    with pytest.raises(ValueError, match="floor_j < resume_j"):
        BatterySpec(capacity_j=10.0, floor_j=5.0, resume_j=2.0)
    with pytest.raises(ValueError, match="idle_w"):
        EnergyProfile(idle_w=-1.0)
    with pytest.raises(ValueError, match="not both"):
        EnergyProfile(full_load_w=1.0, joules_per_mac=1e-9)


def test_the_phone_default_is_plausible() -> None:
    # docs/energy.md: a full battery lasts hours of training, not seconds or years
    hours = PHONE_BATTERY_J / (PHONE.idle_w + PHONE.compute_w(1e9)) / 3600
    assert 5 < hours < 30


def test_pieces_of_a_periodic_trace_by_hand() -> None:
    tr = DeviceTrace(np.array([0.0, 10.0, 30.0]), np.array([1.0, 0.5, 0.2]),
                     np.array([0.0, 20.0]), np.array([1, 0]), 40.0)
    assert pieces(tr, 5.0, 85.0) == [(5.0, 10.0, 1.0), (10.0, 30.0, 0.5), (30.0, 40.0, 0.2),
                                     (40.0, 50.0, 1.0), (50.0, 70.0, 0.5), (70.0, 80.0, 0.2),
                                     (80.0, 85.0, 1.0)]
    assert pieces(tr, 5.0, 85.0, "online") == [(5.0, 20.0, 1.0), (20.0, 40.0, 0.0),
                                               (40.0, 60.0, 1.0), (60.0, 80.0, 0.0),
                                               (80.0, 85.0, 1.0)]
    assert pieces(tr, 3.0, 3.0) == []
    # the compute energy of a phase is the availability's integral times full-load power
    p = EnergyProfile(full_load_w=2.0)
    assert energy_j(p.compute_pieces(pieces(tr, 5.0, 85.0), 1e9)) == pytest.approx(
        2.0 * (tr.cumulative(85.0) - tr.cumulative(5.0)), rel=1e-15)
