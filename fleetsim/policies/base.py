"""The policy interface: pure functions of frozen observations.

A policy decides a device's workload. Its server half (:meth:`Policy.plan` and
:meth:`Policy.assign`) says, at the start of a round, how many devices to select, how to
treat stragglers and what each selected device is sent; its device half
(:meth:`Policy.decide`) picks, before every mini-batch, the dropout vector of that
mini-batch, or stops. A policy never touches the SimPy environment, the model or the
data: it receives frozen observations (with its own random stream) and returns frozen
decisions, which makes a new policy a short, testable file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fleetsim.costs import CostModel
from fleetsim.errors import UserError
from fleetsim.policies.defaults import ModelDefault
from fleetsim.registry import Registry

Vector = tuple[float, ...]
Stragglers = Literal["discard", "wait", "overcommit"]


class PolicyOptions(BaseModel):
    """Options every policy has; subclasses add their own."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    stragglers: Stragglers = Field("discard", description="discard: aggregate what arrived "
                                   "by the deadline; wait: wait for every selected device; "
                                   "overcommit: select overcommit x K, keep the first K")
    overcommit: float = Field(1.3, ge=1.0, description="selection factor for 'overcommit' "
                              "(FedScale's default 1.3)")


@dataclass(frozen=True)
class PolicyContext:
    """What a policy may know about the run when it is built."""

    groups: tuple[tuple[str, int], ...]  # (group name, channels)
    class_names: tuple[str, ...]
    class_peaks: tuple[float, ...]  # peak MAC/s of each class
    costs: CostModel
    local_steps: int
    batch_size: int
    deadline_s: float | None
    seed: int
    timing_only: bool = False
    #: ``training.local_epochs`` (None: ``local_steps`` per device). When set, each
    #: device's mini-batches are ``steps_of(assignment)``, which differ by sample count
    local_epochs: float | None = None
    #: long-run mean availability of each class (sampled from its traces), for policies
    #: that plan offline, such as distreal-static
    class_mean_availability: tuple[float, ...] = ()


@dataclass(frozen=True)
class RoundPlan:
    """Server side of a round: selection size and straggler handling."""

    select: int  # devices to select
    keep: int  # updates to aggregate at most (the first to arrive)
    wait_all: bool  # ignore the deadline and wait for every selected device


@dataclass(frozen=True)
class Assignment:
    """What the server tells one selected device at the start of a round.

    Attributes
    ----------
    submodel : dropout vector of the sub-model sent (None: the full model); the device then
        trains within it and uploads only it
    mode : how kept channels are chosen: ``random``, ``ordered`` or ``rolling``
    reselect : ``step`` draws new channels every mini-batch, ``round`` once per round
    offset : window start for ``rolling``
    partial : stop when the deadline comes and send the mini-batches done (FedProx)
    steps : mini-batches to do this round (None: ``training.local_steps``), for policies
        whose devices do different amounts of work (FedNova). With
        ``training.local_epochs`` the engine sets it, where the policy left it None, to the
        device's ceil(E * n / b) (and ``samples`` to ceil(E * n)), so ``steps_of`` is then
        per device
    samples : training samples the ``steps`` mini-batches cover (``local_epochs``: the
        last mini-batch is shorter); None: every mini-batch is full
    """

    submodel: Vector | None = None
    mode: Literal["random", "ordered", "rolling"] = "random"
    reselect: Literal["step", "round"] = "step"
    offset: int = 0
    partial: bool = False
    steps: int | None = None
    samples: int | None = None


@dataclass(frozen=True)
class StepObservation:
    """What a device knows before one mini-batch."""

    device: int
    device_class: int
    round: int
    step: int  # mini-batches done so far this round
    now_s: float
    availability: float  # share of peak compute usable now
    time_left_s: float  # until the round deadline, minus the upload time (inf: none)
    upload_s: float
    peak_macs_per_s: float
    batch: int  # samples per mini-batch on this device
    assignment: Assignment
    costs: CostModel = field(repr=False)
    rng: np.random.Generator = field(repr=False)
    last_vector: Vector | None = None  # this device's previous decision in this round
    # The world a device sees (fleetsim.energy, fleetsim.traces.bandwidth); the defaults
    # are a world without energy or bandwidth models, where they change nothing.
    energy_left_j: float = math.inf  # battery charge above its floor now (inf: no battery)
    energy_used_j: float = 0.0  # compute joules this device spent so far this round
    compute_w: float = 0.0  # its compute power at availability 1 (0: no energy model)
    up_mbps: float = math.nan  # its upload bandwidth now (nan: not modelled here)
    down_mbps: float = math.nan  # its download bandwidth now


@dataclass(frozen=True)
class Decision:
    """A device's choice for one mini-batch: a dropout vector, or stop (``vector=None``)."""

    vector: Vector | None


STOP = Decision(None)


@dataclass(frozen=True)
class TrainSpec:
    """How the backend trains this policy's updates."""

    prox_mu: float = 0.0  # FedProx proximal term
    aggregator: str = "fedavg"  # server aggregation rule


class Policy:
    """Base policy: FedAvg-like full-model work, ``local_steps`` mini-batches per round."""

    Options: ClassVar[type[PolicyOptions]] = PolicyOptions
    #: one line for listings
    summary: ClassVar[str] = ""
    #: model options this method sets unless the scenario does, each with its source
    #: (applied by :func:`fleetsim.build.load_scenario`; see :mod:`fleetsim.policies.defaults`)
    model_defaults: ClassVar[tuple[ModelDefault, ...]] = ()

    def __init__(self, options: PolicyOptions, ctx: PolicyContext) -> None:
        self.options = options
        self.ctx = ctx
        self.zero: Vector = (0.0,) * len(ctx.groups)

    # -- server side -------------------------------------------------------------------

    def plan(self, round: int, k: int) -> RoundPlan:
        o = self.options
        if o.stragglers == "overcommit":
            # the tolerance keeps float error from adding a device (10 * 1.1 = 11.000000000000002)
            return RoundPlan(select=math.ceil(k * o.overcommit - 1e-9), keep=k, wait_all=False)
        return RoundPlan(select=k, keep=k, wait_all=o.stragglers == "wait")

    def assign(self, round: int, device: int, device_class: int,
               rng: np.random.Generator) -> Assignment:
        return Assignment()

    def train_spec(self) -> TrainSpec:
        return TrainSpec()

    # -- device side -------------------------------------------------------------------

    def steps_of(self, a: Assignment) -> int:
        """Mini-batches a device does this round: the assignment's, else the scenario's."""
        return self.ctx.local_steps if a.steps is None else a.steps

    def decide(self, obs: StepObservation) -> Decision:
        if obs.step >= self.steps_of(obs.assignment):
            return STOP
        return Decision(obs.assignment.submodel or self.zero)


POLICIES: Registry[type[Policy]] = Registry("policy")


def check_vector(policy_name: str, vector: Sequence[float] | None, n_groups: int,
                 where: str = "decide()", *, defined_in: str | None = None) -> Vector | None:
    """A policy's dropout vector, checked: ``n_groups`` finite rates in [0, 1).

    A policy is user code, and the layers below it would quietly make any vector fit:
    :func:`fleetsim.nn.slicing.kept_count` clamps the kept channels to between 1 and all
    of them, so a rate of 1.5 trains one channel and -0.2 the full group, and the cost
    model times what was clamped. So the engine checks each vector a policy returns.

    Parameters
    ----------
    policy_name : the scenario's ``policy.name``, for the message
    vector : what the policy returned (None: stop, or the full model for a sub-model)
    n_groups : the model's droppable groups
    where : which method returned it (``decide()`` or ``assign().submodel``)
    defined_in : the file of the policy's class, for the message (a plugin's, say)

    Returns
    -------
    The vector as a tuple of floats (None stays None).

    Raises
    ------
    UserError : naming the policy, the method, the vector and what is allowed
    """
    if vector is None:
        return None

    origin = f" (class defined in {defined_in})" if defined_in else ""

    def bad(problem: str) -> UserError:
        return UserError(
            f"policy '{policy_name}'{origin}: {where} returned the dropout vector "
            f"{vector!r}, which {problem}. Allowed: None (stop, or the full model) or a "
            f"sequence of {n_groups} dropout rate{'s' if n_groups != 1 else ''}, one per droppable "
            f"layer group, each a number in [0, 1) (0 keeps every channel).")

    try:
        n = len(vector)
    except TypeError:
        raise bad("is not a sequence of numbers") from None
    if n != n_groups:
        raise bad(f"has {n} entr{'y' if n == 1 else 'ies'} where the model has {n_groups} "
                  f"groups")
    out = []
    for i, d in enumerate(vector):
        # bool is an int to Python; a rate of True is a bug in the policy, not 1.0
        if isinstance(d, bool) or not isinstance(d, int | float | np.integer | np.floating):
            raise bad(f"holds {d!r} at index {i}, not a number in [0, 1)")
        x = float(d)
        if not 0.0 <= x < 1.0:  # NaN fails this too
            raise bad(f"holds {x!r} at index {i}, outside [0, 1)")
        out.append(x)
    return tuple(out)


def options_of(cls: type[Policy], raw: dict[str, Any]) -> PolicyOptions:
    return cls.Options(**raw)
