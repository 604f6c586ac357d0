"""Decisions that see the world, through real (timing-only) runs: DISTREAL with an
energy budget reads the joules the engine passes it, and the battery selector reads the
batteries' levels at the round's start (hand-worked numbers)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from fleetsim.build import build, load_scenario
from fleetsim.dse import Front, write_front
from fleetsim.policies.base import POLICIES, STOP, Decision, Policy, StepObservation
from tests.test_engine_energy import ONE
from tests.test_engine_faults import one_step_macs

#: compute only: 2 W over idle at full load, nothing for the radio or idling
COMPUTE_ONLY = "full_load_w: 2.0, rx_w: 0.0, tx_w: 0.0, idle_w: 0.0"


@pytest.fixture(scope="module")
def step_macs() -> float:
    return one_step_macs()  # peak = this: a full mini-batch takes 1 s


def front(tmp_path: Path, step_macs: float) -> Path:
    """d = 0 (best) and d = 0.5 (half the MACs of the one hidden layer's step)."""
    vecs = [(0.0,), (0.5,)]
    macs = [step_macs, step_macs / 2]
    proxy = [0.0, 0.5]
    f = Front((("h0", 8),), np.array(vecs), np.array(macs), np.array(proxy), {},
              np.ones(2))
    p = tmp_path / "front.h5"
    write_front(p, f, {"vectors": np.array(vecs), "macs": np.array(macs),
                       "proxy": np.array(proxy), "spread": np.ones(2),
                       "feasible": np.ones(2, bool)})
    return p


def run(tmp_path: Path, step_macs: float, energy: str, extra: tuple[str, ...] = (),
        rounds: int = 1):  # type: ignore[no-untyped-def]
    (tmp_path / "s.yaml").write_text(ONE % (step_macs, energy, rounds))
    return build(load_scenario(tmp_path / "s.yaml", list(extra))).engine.run()


def energy_policy(tmp_path: Path, step_macs: float, budget: str | None = None
                  ) -> tuple[str, ...]:
    out = ("policy.name=distreal-energy", f"policy.options.front={front(tmp_path, step_macs)}")
    return out + (() if budget is None else (f"policy.options.energy_budget_j={budget}",))


def train_s(o) -> float:  # type: ignore[no-untyped-def]
    down_s, up_s = o.bytes_down * 8 / 4e6, o.bytes_up * 8 / 1e6
    return o.t_end - o.t_start - down_s - up_s


def test_distreal_energy_fits_the_round_budget(tmp_path: Path, step_macs: float) -> None:
    # 10 mini-batches, full 2 J, half 1 J; budget 15 J. Before mini-batch k with U_k
    # joules used, full fits iff 2 (10 - k) <= 15 - U_k: k = 0..4 do not (20 > 15,
    # 18 > 14, 16 > 13, 14 > 12, 12 > 11: half), k = 5 does (10 <= 10), and so on:
    # 5 half + 5 full, 7.5 s of training, exactly 15 J of compute
    log = run(tmp_path, step_macs, f", energy: {{{COMPUTE_ONLY}}}",
              energy_policy(tmp_path, step_macs, "15.0"))
    (o,) = log.timeline
    assert o.status == "completed" and o.steps == 10
    assert o.macs == 5 * step_macs / 2 + 5 * step_macs
    assert train_s(o) == pytest.approx(7.5, rel=1e-9)
    assert o.energy_j == pytest.approx(15.0, rel=1e-9)
    # without an energy model it is distreal: ten full mini-batches
    (plain,) = run(tmp_path, step_macs, "", energy_policy(tmp_path, step_macs, "15.0")).timeline
    assert plain.macs == 10 * step_macs and train_s(plain) == pytest.approx(10.0, rel=1e-9)


def test_distreal_energy_fits_the_battery(tmp_path: Path, step_macs: float) -> None:
    # 16.5 J above the floor (26.5 of 100 J, floor 10 J), no budget: full fits before
    # mini-batch k iff 2 (10 - k) <= 16.5 - U_k: k = 0..3 half (20 > 16.5, 18 > 15.5,
    # 16 > 14.5, 14 > 13.5), k = 4 full (12 <= 12.5), then full: 4 half + 6 full, 8 s,
    # 16 J, and the battery lasts (0.5 J left above its floor)
    bat = (", battery: {capacity_j: 100.0, floor_fraction: 0.1, resume_fraction: 0.2, "
           "initial_fraction: [0.265, 0.265], charge_when: never}")
    log = run(tmp_path, step_macs, f", energy: {{{COMPUTE_ONLY}{bat}}}",
              energy_policy(tmp_path, step_macs))
    (o,) = log.timeline
    assert o.status == "completed" and not o.battery_ended
    assert o.macs == 4 * step_macs / 2 + 6 * step_macs
    assert train_s(o) == pytest.approx(8.0, rel=1e-9)
    assert o.energy_j == pytest.approx(16.0, rel=1e-9)
    # plain distreal trains full mini-batches blind to the battery: 16.5 J last 8.25 s of
    # training at 2 W, and the device goes off then
    (blind,) = run(tmp_path, step_macs, f", energy: {{{COMPUTE_ONLY}{bat}}}",
                   (*energy_policy(tmp_path, step_macs)[1:2], "policy.name=distreal")
                   ).timeline
    assert blind.status == "dropped" and blind.battery_ended
    assert blind.t_end - blind.t_start - blind.bytes_down * 8 / 4e6 == \
        pytest.approx(8.25, rel=1e-9)


# idle 0.5 W, compute 2 W over idle, radio 3 W down, 4 W up
POWER = "full_load_w: 2.0, rx_w: 3.0, tx_w: 4.0, idle_w: 0.5"


@pytest.mark.parametrize("selector", ["battery", "random"])
def test_the_battery_selector_waits_for_the_recharge(tmp_path: Path, step_macs: float,
                                                     selector: str) -> None:
    # 104 of 200 J, charging 1.5 W always; the selector wants >= 0.5 (100 J). The first
    # round (T1 s, E1 J) leaves L1 = 104 + 1.5 T1 - E1 < 100 J: the device is above its
    # floor (20 J) and online, but skipped; idle it gains 1.5 - 0.5 = 1 W, so it is
    # back at 100 J at T1 + (100 - L1), and the server, retrying every 60 s, takes it
    # at the first retry after that
    bat = (", battery: {capacity_j: 200.0, floor_fraction: 0.1, resume_fraction: 0.2, "
           "initial_fraction: [0.52, 0.52], charge_w: 1.5, charge_when: always}")
    log = run(tmp_path, step_macs, f", energy: {{{POWER}{bat}}}",
              (f"selector.name={selector}", "selector.options={}") if selector == "random"
              else ("selector.name=battery", "selector.options.min_fraction=0.5"), rounds=2)
    first, second = log.timeline
    t1 = first.t_end
    level_1 = 104.0 + 1.5 * t1 - first.energy_j
    assert 20.0 < level_1 < 100.0
    if selector == "random":
        assert second.t_start == t1  # alive, so taken at once
        return
    back = t1 + (100.0 - level_1)
    assert second.t_start == pytest.approx(t1 + 60.0 * math.ceil((back - t1) / 60.0),
                                           rel=1e-12)
    assert second.t_start > back


class _Seeing(Policy):
    """Records every observation; trains three full mini-batches."""

    seen: ClassVar[list[StepObservation]] = []

    def decide(self, obs: StepObservation) -> Decision:
        type(self).seen.append(obs)
        return STOP if obs.step >= 3 else Decision(self.zero)


@pytest.fixture()
def seeing():  # type: ignore[no-untyped-def]
    saved = dict(POLICIES._items)
    POLICIES.add("test-seeing", _Seeing)
    _Seeing.seen = []
    yield _Seeing.seen
    POLICIES._items.clear()
    POLICIES._items.update(saved)


BW = (", bandwidth: {up: {generator: constant, options: {mbps: 1.0}}, "
      "down: {generator: constant, options: {mbps: 4.0}}}")


def test_what_a_deciding_policy_is_told(tmp_path: Path, step_macs: float, seeing) -> None:  # type: ignore[no-untyped-def]
    run(tmp_path, step_macs, "", ("policy.name=test-seeing",))
    plain = list(seeing)
    assert len(plain) == 4 and all(
        (o.compute_w, o.energy_used_j, o.energy_left_j) == (0.0, 0.0, math.inf)
        and math.isnan(o.up_mbps) and math.isnan(o.down_mbps) for o in plain)
    seeing.clear()
    # 2 W at full load, 1 s mini-batches: 2 J a mini-batch; 50 J above the floor at the
    # start, the download draws nothing (rx 0, idle 0)
    bat = (", battery: {capacity_j: 100.0, floor_fraction: 0.1, resume_fraction: 0.2, "
           "initial_fraction: [0.6, 0.6], charge_when: never}")
    run(tmp_path, step_macs, f", energy: {{{COMPUTE_ONLY}{bat}}}{BW}",
        ("policy.name=test-seeing",))
    assert [o.step for o in seeing] == [0, 1, 2, 3]
    assert [o.compute_w for o in seeing] == [2.0] * 4
    assert [o.energy_used_j for o in seeing] == pytest.approx([0.0, 2.0, 4.0, 6.0])
    assert [o.energy_left_j for o in seeing] == pytest.approx([50.0, 48.0, 46.0, 44.0])
    assert [(o.up_mbps, o.down_mbps) for o in seeing] == [(1.0, 4.0)] * 4
    seeing.clear()
    run(tmp_path, step_macs, BW, ("policy.name=test-seeing",))  # bandwidth alone
    assert [(o.up_mbps, o.down_mbps, o.compute_w, o.energy_left_j) for o in seeing] == \
        [(1.0, 4.0, 0.0, math.inf)] * 4
