"""Tiny scenarios and contexts shared by the policy tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from fleetsim.build import load_scenario, run_scenario
from fleetsim.costs import CostModel
from fleetsim.engine import RunLog
from fleetsim.nn import build_model
from fleetsim.policies import PolicyContext, StepObservation
from fleetsim.policies.base import Assignment
from fleetsim.scenario import Scenario

# Two classes on constant, always-online traces: a fast device does its 5 mini-batches in
# ~0.2 s, a slow one needs ~17 s, so a 5 s deadline separates them cleanly.
TIMED = """
name: timed
seed: 1
data: {dataset: digits, partition: {name: iid}}
model: {arch: mlp, options: {hidden: [8, 12]}}
fleet:
  devices: 10
  assignment: blocks
  classes:
    - {name: fast, share: 0.5, peak_macs_per_s: 1.0e6}
    - {name: slow, share: 0.5, peak_macs_per_s: 1.0e4}
  traces: {generator: constant}
training:
  mode: timing
  rounds: 4
  clients_per_round: 4
  deadline_s: 5
  local_steps: 5
  batch_size: 16
eval: {every_rounds: 1}
output: {plot: false}
"""


def scenario(policy: str = "fedavg", options: dict[str, Any] | None = None,
             sets: tuple[str, ...] = ()) -> Scenario:
    """The :data:`TIMED` scenario with a policy and ``key=value`` overrides."""
    over = [f"policy.name={policy}", f"policy.options={options or {}}", *sets]
    return load_scenario(None, over, text=TIMED)


def run(policy: str = "fedavg", options: dict[str, Any] | None = None,
        sets: tuple[str, ...] = ()) -> RunLog:
    return run_scenario(scenario(policy, options, sets))


def context(hidden: tuple[int, ...] = (8, 12), peaks: tuple[float, ...] = (1e6, 1e4),
            names: tuple[str, ...] = ("fast", "slow"), local_steps: int = 5) -> PolicyContext:
    """A policy context for an MLP on 8x8 inputs."""
    model = build_model("mlp", (1, 8, 8), 10, {"hidden": list(hidden)})
    return PolicyContext(groups=tuple((g.name, g.channels) for g in model.groups),
                         class_names=names, class_peaks=peaks, costs=CostModel(model),
                         local_steps=local_steps, batch_size=16, deadline_s=5.0, seed=0)


def observe(ctx: PolicyContext, device_class: int, assignment: Assignment, step: int = 0,
            rng: np.random.Generator | None = None) -> StepObservation:
    """A step observation at full availability with no deadline pressure."""
    return StepObservation(device=0, device_class=device_class, round=0, step=step, now_s=0.0,
                           availability=1.0, time_left_s=float("inf"), upload_s=0.0,
                           peak_macs_per_s=ctx.class_peaks[device_class], batch=16,
                           assignment=assignment, costs=ctx.costs,
                           rng=rng or np.random.default_rng(0))
