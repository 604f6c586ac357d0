"""Decisions that see energy and bandwidth: the energy-aware DISTREAL choice and the
battery selector, against hand numbers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fleetsim.errors import UserError
from fleetsim.policies.base import StepObservation
from fleetsim.policies.distreal import Distreal, DistrealEnergy
from fleetsim.server.selection import BatteryOptions, BatterySelector, FleetView
from tests.test_network_config import CLASSES, TIMING, scenario
from tests.test_scenario_errors import check_error, run_cli


class Costs:
    """Step MACs by hand: vector (d,) keeps 1 - d of 1e9 MACs per sample-batch."""

    def step_macs(self, vec: tuple[float, ...], batch: int) -> float:
        return (1.0 - vec[0]) * 1e9


def obs(**kw: float) -> StepObservation:
    base = dict(device=0, device_class=0, round=0, step=0, now_s=0.0, availability=1.0,
                time_left_s=100.0, upload_s=1.0, peak_macs_per_s=1e9, batch=32,
                assignment=None, costs=Costs(), rng=np.random.default_rng(0))
    base.update(kw)
    return StepObservation(**base)  # type: ignore[arg-type]


def policy(budget: float = math.inf) -> DistrealEnergy:
    p = DistrealEnergy.__new__(DistrealEnergy)
    p.options = DistrealEnergy.Options(energy_budget_j=budget, front="unused")
    # best convergence first, cheaper later: 1e9, 6e8, 2e8 MACs a step (1, 0.6, 0.2 s)
    p.candidates = [(0.0,), (0.4,), (0.8,)]
    return p


def test_the_best_vector_whose_energy_fits_the_budget() -> None:
    # 10 steps left, 2 W at full load: 2 J, 1.2 J, 0.4 J a step; 20, 12, 4 J in all
    p = policy(budget=15.0)
    assert p.choose(obs(compute_w=2.0), 10) == (0.4,)  # 20 J > 15 J, 12 J fits
    assert p.choose(obs(compute_w=2.0, energy_used_j=5.0), 10) == (0.8,)  # 10 left
    assert p.choose(obs(compute_w=2.0, energy_used_j=12.0), 10) is None  # 3 < 4 J
    # the battery binds too: 30 J of budget, 5 J above the floor
    assert policy(30.0).choose(obs(compute_w=2.0, energy_left_j=5.0), 10) == (0.8,)
    # and time still binds: 10 one-second steps do not fit 7 s, 10 of 0.6 s do
    assert policy(30.0).choose(obs(compute_w=2.0, time_left_s=7.0), 10) == (0.4,)


def test_without_an_energy_model_it_chooses_as_distreal() -> None:
    p = policy(budget=1.0)
    plain = Distreal.__new__(Distreal)
    plain.options = Distreal.Options(front="unused")
    plain.candidates = p.candidates
    for t in (20.0, 9.0, 5.0, 1.0):
        o = obs(time_left_s=t)  # compute_w 0: steps cost no joules
        assert p.choose(o, 10) == plain.choose(o, 10)


def test_the_observation_defaults_change_nothing() -> None:
    o = obs()
    assert (o.energy_left_j, o.energy_used_j, o.compute_w) == (math.inf, 0.0, 0.0)
    assert math.isnan(o.up_mbps) and math.isnan(o.down_mbps)


def test_the_battery_selector_skips_devices_below_the_level() -> None:
    charge = {0: 0.9, 1: 0.1, 2: 0.5, 3: 0.29, 4: 0.3, 5: 1.0}
    view = FleetView(6, np.zeros(6, np.int16), np.ones(6),
                     battery_fraction=lambda d, t: charge[d] - 0.001 * t)
    s = BatterySelector(BatteryOptions(min_fraction=0.3), view)
    rng = np.random.default_rng(0)
    picks = {d for _ in range(50) for d in s.select(0, 0.0, 3, lambda d: d != 5, rng)}
    assert picks == {0, 2, 4}  # 1 and 3 below 0.3, 5 offline
    # at t = 10 s device 4 has 0.29 left: skipped
    assert {d for _ in range(50) for d in s.select(0, 10.0, 3, lambda d: True, rng)} == \
        {0, 2, 5}
    assert set(s.select_idle(0, 0.0, 5, lambda d: True, rng)) == {0, 2, 4, 5}
    with pytest.raises(UserError, match="needs batteries"):
        BatterySelector(BatteryOptions(), FleetView(6, np.zeros(6), np.ones(6)))


def test_battery_selector_without_batteries_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = scenario(tmp_path, classes=CLASSES)
    code, err = run_cli(capsys, "run", str(p), "--set", "selector.name=battery", *TIMING)
    check_error(code, err, str(p), "at 'selector.name'", "no class has one")


def test_decisions_the_engine_cannot_inform_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import fleetsim.engine

    done = getattr(fleetsim.engine, "WORLD_FEATURES", frozenset())
    energy = CLASSES.replace("1.0e7}", "1.0e7, energy: {profile: phone, battery: "
                             "{capacity_j: 1000}}}")
    p = scenario(tmp_path, classes=energy)
    if "energy" in done and "battery_selection" not in done:
        code, err = run_cli(capsys, "run", str(p), "--set", "selector.name=battery", *TIMING)
        check_error(code, err, str(p), "at 'selector.name'", "battery levels")
    if "energy" in done and "observations" not in done:
        code, err = run_cli(capsys, "run", str(p), "--set", "policy.name=distreal-energy",
                            *TIMING)
        check_error(code, err, str(p), "at 'policy.name'", "pass energy to policies")
    if "battery_selection" in done:  # the engine informs it: the run goes through
        code, err = run_cli(capsys, "run", str(p), "--set", "selector.name=battery", *TIMING)
        assert code == 0, err
