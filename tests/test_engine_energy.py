"""The engine with energy and batteries: joules per device-round equal the hand sum of
radio, compute and idle power times their phases; a battery that reaches its floor ends
the work at that instant, counted in the timeline and in the round rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetsim.build import build, load_scenario
from tests.test_engine_faults import one_step_macs

ONE = """
name: en
seed: 3
data: {dataset: digits, partition: {name: iid}}
model: {arch: mlp, options: {hidden: [8]}}
fleet:
  devices: 1
  classes:
    - {name: only, share: 1.0, peak_macs_per_s: %r, uplink_mbps: 1.0,
       downlink_mbps: 4.0, latency_s: 0.0%s}
  traces: {generator: constant}
training:
  mode: timing
  rounds: %d
  clients_per_round: 1
  deadline_s: null
  local_steps: 10
  batch_size: 16
"""

# idle 0.5 W, compute 2 W over idle at full availability, radio 3 W (down), 4 W (up)
POWER = "full_load_w: 2.0, rx_w: 3.0, tx_w: 4.0, idle_w: 0.5"


@pytest.fixture(scope="module")
def step_macs() -> float:
    return one_step_macs()


def run(tmp_path: Path, step_macs: float, energy: str, rounds: int = 1,  # type: ignore[no-untyped-def]
        extra: tuple[str, ...] = ()):
    # one mini-batch takes exactly 1 s at full availability: 10 s of training
    (tmp_path / "s.yaml").write_text(ONE % (step_macs, energy, rounds))
    return build(load_scenario(tmp_path / "s.yaml", list(extra))).engine.run()


def test_joules_of_a_round_by_hand(tmp_path: Path, step_macs: float) -> None:
    plain = run(tmp_path, step_macs, "")
    o = plain.timeline[0]
    down_s = o.bytes_down * 8 / 4e6
    up_s = o.bytes_up * 8 / 1e6
    train_s = o.t_end - down_s - up_s
    assert train_s == pytest.approx(10.0, rel=1e-9)
    log = run(tmp_path, step_macs, f", energy: {{{POWER}}}")
    (e,) = log.timeline
    assert (e.t_end, e.status) == (o.t_end, o.status)  # energy alone changes no time
    want = (0.5 + 3.0) * down_s + (0.5 + 2.0) * train_s + (0.5 + 4.0) * up_s
    assert e.energy_j == pytest.approx(want, rel=1e-9)
    assert log.rounds[0]["energy_j"] == pytest.approx(want, rel=1e-9)
    assert log.rounds[0]["battery_ended"] == 0
    assert "energy_j" not in plain.rounds[0]  # nothing configured: the same columns


def test_a_battery_that_empties_ends_the_work_at_that_instant(tmp_path: Path,
                                                              step_macs: float) -> None:
    plain = run(tmp_path, step_macs, "")
    o = plain.timeline[0]
    down_s = o.bytes_down * 8 / 4e6
    # 20 J above the floor: the download draws 3.5 W, then training 2.5 W
    start_j, floor_j = 100.0, 80.0
    t_empty = down_s + (start_j - floor_j - 3.5 * down_s) / 2.5
    assert down_s < t_empty < down_s + 10.0
    bat = (", battery: {capacity_j: 200.0, floor_fraction: 0.4, resume_fraction: 0.6, "
           "initial_fraction: [0.5, 0.5], charge_when: never}")
    log = run(tmp_path, step_macs, f", energy: {{{POWER}{bat}}}", rounds=3,
              extra=("training.time_budget_s=1000",))
    e = log.timeline[0]
    assert e.status == "dropped" and e.battery_ended
    assert e.t_end == pytest.approx(t_empty, rel=1e-12)
    assert e.steps == int(t_empty - down_s)  # whole mini-batches done by then
    assert e.energy_j == pytest.approx(start_j - floor_j, rel=1e-9)
    assert log.rounds[0]["battery_ended"] == 1
    # never charged: the device stays off; the server finds nobody online until the
    # time budget ends the run
    assert len(log.timeline) == 1 and len(log.rounds) == 1


def test_a_charging_battery_brings_the_device_back(tmp_path: Path, step_macs: float
                                                   ) -> None:
    # 90 J at the start, charging at 0.5 W always: off at the floor (80 J) during the
    # first round, back when charged to the resume level (120 J)
    bat = (", battery: {capacity_j: 200.0, floor_fraction: 0.4, resume_fraction: 0.6, "
           "initial_fraction: [0.45, 0.45], charge_w: 0.5, charge_when: always}")
    log = run(tmp_path, step_macs, f", energy: {{{POWER}{bat}}}", rounds=2)
    first, second = log.timeline[0], log.timeline[1]
    assert first.battery_ended
    # off from first.t_end: charges 0.5 W (draws nothing) for 40 J; the server retries
    # every idle_wait_s (60 s), so it starts at the first retry after the recharge
    back = first.t_end + 40.0 / 0.5
    assert second.t_start >= back and second.t_start - back <= 60.0 + 1e-9
