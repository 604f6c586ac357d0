"""FedNova: variable local work, updates normalised by local steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from policy_cases import run, scenario
from pydantic import ValidationError

from fleetsim.build import build
from fleetsim.policies.fednova import FedNovaOptions
from fleetsim.server.aggregation import AGGREGATORS, FedNovaAggregator, Update


def test_aggregation_equals_the_formula_on_a_hand_example() -> None:
    # w = 0; device 1: 1 sample, 2 steps, ends at -2; device 2: 3 samples, 4 steps, ends
    # at -8.  p = (1/4, 3/4), d = (-2/2, -8/4) = (-1, -2), tau_eff = 1/4*2 + 3/4*4 = 3.5,
    # w' = tau_eff * sum p d = 3.5 * (-1/4 - 6/4) = -6.125 (FedAvg would give -6.5).
    # The second element is trained by device 2 only: w' = 4 * (-8/4) = -8.
    agg = AGGREGATORS.get("fednova")({"w": torch.zeros(2)})
    assert isinstance(agg, FedNovaAggregator)
    agg.add(Update(1, 1.0, {"w": torch.tensor([-2.0, 5.0])},
                   {"w": torch.tensor([True, False])}, steps=2))
    agg.add(Update(2, 3.0, {"w": torch.tensor([-8.0, -8.0])}, {}, steps=4))
    assert torch.allclose(agg.result()["w"], torch.tensor([-6.125, -8.0]))


def test_policy_selects_the_fednova_aggregator() -> None:
    built = build(scenario("fednova"))
    assert built.engine.train_spec.aggregator == "fednova"


def test_devices_do_different_numbers_of_steps() -> None:
    log = run("fednova", {"steps_range": [2, 5], "partial": False},
              ("training.deadline_s=null", "training.rounds=6"))
    steps = [o.job.steps for o in log.timeline if o.job is not None]
    assert set(steps) <= {2, 3, 4, 5} and len(set(steps)) > 1


def test_partial_work_makes_tau_differ() -> None:
    log = run("fednova", None, ("training.deadline_s=10",))
    steps = {o.job.steps for o in log.timeline if o.job is not None}
    assert len(steps) > 1 and max(steps) == 5


def test_bad_range_is_rejected() -> None:
    with pytest.raises(ValidationError):
        FedNovaOptions(steps_range=(5, 2))


def test_equal_steps_give_fedavg() -> None:
    # with every tau equal, tau_eff * sum p d / tau = sum p (w_i - w): plain FedAvg
    sets = ("training.mode=full", "training.deadline_s=null", "training.rounds=2")
    states = []
    for name, opts in (("fedavg", None), ("fednova", {"partial": False})):
        built = build(scenario(name, opts, sets))
        built.engine.run()
        states.append(built.engine.state)
    a, b = states
    assert a is not None and b is not None
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_both_ends_of_steps_range_are_drawn() -> None:
    # [2, 5] is inclusive: over 400 draws each of 2, 3, 4 and 5 comes up (each has
    # probability 1/4, so missing one has probability ~4 * 0.75**400, about 1e-50)
    policy = build(scenario("fednova", {"steps_range": [2, 5], "partial": False})).engine.policy
    rng = np.random.default_rng(0)
    drawn = {policy.assign(0, d, 0, rng).steps for d in range(400)}
    assert drawn == {2, 3, 4, 5}
    one = build(scenario("fednova", {"steps_range": [3, 3]})).engine.policy
    assert one.assign(0, 0, 0, rng).steps == 3
