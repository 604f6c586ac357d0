"""DISTREAL and its ablations: per-mini-batch choice of a dropout vector on the device.

Rapp, Khalili, Pfeiffer, Henkel, "DISTREAL: Distributed Resource-Aware Learning in
Heterogeneous Systems", AAAI 2022 (arXiv 2112.08761).

Offline, a design-space exploration (:mod:`fleetsim.dse`) finds the Pareto front of
dropout vectors (cost per mini-batch versus a convergence proxy). At run time, before
every mini-batch, each device takes the front's vector with the best convergence whose
cost still lets it finish its remaining mini-batches by the round deadline at its
*current* availability -- no help from the server. Filters are dropped at random, anew
every mini-batch, and the device uploads its full model.

Choices the paper leaves open, as options with documented defaults:

- ``reselect``: ``step`` (default; re-decide every mini-batch, as the paper does) or
  ``round`` (decide once at the round's start);
- ``work``: ``fixed`` (default; ``training.local_steps`` mini-batches per round) or
  ``fill`` (keep training while a mini-batch still fits before the deadline);
- ``infeasible``, when even the cheapest vector cannot finish in time: ``stop`` (default;
  stop and send the mini-batches done, if any) or ``late`` (train on with the cheapest
  vector and arrive late; the server's straggler rule then applies);
- ``margin``: estimated times are multiplied by this (> 1 leaves slack for availability
  that drops later in the round);
- ``anchor_full`` (off by default; when off, runs are bit-identical to before it existed):
  the full network d = 0 is always a candidate, and it is preferred unless a front vector
  beats it by more than that vector's spread over the DSE's repeats (proxy < -spread).
  A noisy proxy can put a cheaper vector "ahead" of the full network by less than its
  noise, which drops the full network off the front; this keeps it.

Kept activations are rescaled by 1/(1-d) in training (``model.options.rescale``).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from fleetsim.dse import Front, useful
from fleetsim.policies.base import (
    POLICIES,
    STOP,
    Decision,
    Policy,
    PolicyContext,
    PolicyOptions,
    StepObservation,
    Vector,
)
from fleetsim.policies.defaults import ModelDefault

#: DISTREAL's own code is not public; a co-author's SLT code (k1l1/SLT) is the nearest
#: source for how its group trains sub-networks with batch norm. All three policies of the
#: family share these, so they share one DSE front too.
DISTREAL_DEFAULTS = (
    ModelDefault("bn_stats", "batch", "not in the DISTREAL paper; k1l1/SLT (code of "
                 "co-author K. Pfeiffer): every BatchNorm2d has track_running_stats=False "
                 "(nets/SLTNets/resnet_cifar.py), so batch statistics in training and at "
                 "test", batch_norm_only=True),
)


class AdaptiveOptions(PolicyOptions):
    reselect: Literal["step", "round"] = Field("step", description="re-decide every "
                                               "mini-batch, or once per round")
    work: Literal["fixed", "fill"] = Field("fixed", description="local_steps mini-batches, "
                                           "or as many as fit before the deadline")
    infeasible: Literal["stop", "late"] = Field("stop", description="when even the cheapest "
                                                "vector cannot finish: stop and send what is "
                                                "done, or go on and arrive late")
    margin: float = Field(1.0, ge=1.0, description="safety factor on estimated times")


class CandidatePolicy(Policy):
    """Choose, per mini-batch, the best-ranked candidate vector that fits the time left.

    Model defaults: ``DISTREAL_DEFAULTS``.

    Subclasses provide ``candidates``: vectors ordered from best convergence (first) to
    cheapest (last), with strictly decreasing cost.
    """

    Options: ClassVar[type[PolicyOptions]] = AdaptiveOptions
    model_defaults = DISTREAL_DEFAULTS
    candidates: list[Vector]

    def _step_s(self, vec: Vector, obs: StepObservation) -> float:
        if obs.availability <= 0.0:
            return math.inf
        return obs.costs.step_macs(vec, obs.batch) / (obs.peak_macs_per_s * obs.availability)

    def choose(self, obs: StepObservation, steps_left: int) -> Vector | None:
        """Best candidate whose ``steps_left`` mini-batches fit in the time left."""
        o = self.options
        assert isinstance(o, AdaptiveOptions)
        budget = obs.time_left_s
        for vec in self.candidates:
            if steps_left * self._step_s(vec, obs) * o.margin <= budget:
                return vec
        return None

    def decide(self, obs: StepObservation) -> Decision:
        o = self.options
        assert isinstance(o, AdaptiveOptions)
        # the device's own mini-batches: local_steps, or its local_epochs' share
        steps = self.steps_of(obs.assignment)
        if o.work == "fixed" and obs.step >= steps:
            return STOP
        if o.reselect == "round" and obs.last_vector is not None:
            return Decision(obs.last_vector)
        steps_left = steps - obs.step if o.work == "fixed" else 1
        vec = self.choose(obs, steps_left)
        if vec is not None:
            return Decision(vec)
        if o.work == "fill" or o.infeasible == "stop":
            return STOP
        return Decision(self.candidates[-1])


def pareto_candidates(vectors: list[Vector], cost: list[float], proxy: list[float]
                      ) -> list[Vector]:
    """Order by proxy (best first), keeping only points cheaper than every better one.

    On a true Pareto front this keeps every point; it also guards the monotonicity of the
    choice (more time never leads to a cheaper vector) against a front file with
    dominated points.
    """
    order = sorted(range(len(vectors)), key=lambda i: (proxy[i], cost[i]))
    out: list[Vector] = []
    cheapest = math.inf
    for i in order:
        if cost[i] < cheapest:
            out.append(vectors[i])
            cheapest = cost[i]
    return out


@POLICIES.register("distreal")
class Distreal(CandidatePolicy):
    """DISTREAL (Rapp et al., AAAI 2022): per-mini-batch choice from a DSE Pareto front.

    Device: before every mini-batch, the front vector with the best convergence proxy
    whose cost lets the remaining mini-batches finish by the deadline at the current
    availability; random filters dropped anew every mini-batch. Server: plain FedAvg of
    full-size updates (elements averaged over the devices that trained them).
    """

    summary = "per-mini-batch dropout vector from a DSE Pareto front, fitted to the deadline"

    class Options(AdaptiveOptions):
        front: str | None = Field(None, description="front file from `fleetsim dse`; default: "
                                  "computed from the scenario's dse settings and cached")
        useful_only: bool = Field(True, description="use only useful front vectors: no worse "
                                  "than the full network by more than their spread over "
                                  "the DSE's repeats")
        anchor_full: bool = Field(False, description="keep the full network (d = 0) as a "
                                  "candidate, preferred unless a front vector beats it by "
                                  "more than its spread (proxy < -spread)")

    def __init__(self, options: PolicyOptions, ctx: PolicyContext) -> None:
        super().__init__(options, ctx)
        assert isinstance(options, Distreal.Options)
        if options.anchor_full:
            self.candidates = anchored_candidates(options.front, options.useful_only, ctx)
        else:
            self.candidates = front_candidates(options.front, options.useful_only, ctx)


def front_candidates(path: str | None, useful_only: bool, ctx: PolicyContext) -> list[Vector]:
    """The front file's vectors as run-time candidates: best proxy first, each cheaper than
    all before it."""
    from fleetsim.dse import read_front

    if path is None:
        raise ValueError("this policy needs a front; fleetsim.build.build provides it")
    front = read_front(path)
    check_front_groups(front.groups, ctx, path)
    vecs, proxy = front_vectors(front, useful_only)
    macs = [ctx.costs.step_macs(v, ctx.batch_size) for v in vecs]
    return pareto_candidates(vecs, macs, proxy)


def anchored_candidates(path: str | None, useful_only: bool, ctx: PolicyContext
                        ) -> list[Vector]:
    """Run-time candidates with the full network anchored: first the front vectors that
    beat d = 0 by more than their spread (proxy < -spread; best proxy first), then d = 0,
    then the other front vectors (the useful ones with ``useful_only``; best proxy first);
    each kept only if cheaper than every candidate before it."""
    from fleetsim.dse import read_front

    if path is None:
        raise ValueError("this policy needs a front; fleetsim.build.build provides it")
    front = read_front(path)
    check_front_groups(front.groups, ctx, path)
    spread = front.spread if front.spread is not None else np.zeros(len(front.proxy))
    keep = useful(front) if useful_only else np.ones(len(front.proxy), bool)
    full: Vector = (0.0,) * len(ctx.groups)
    beats, rest = [], []
    for v, p, sp, k in zip(front.vectors, front.proxy, spread, keep):
        vec = tuple(float(x) for x in v)
        if vec == full or not math.isfinite(float(p)):
            continue
        if float(p) < -float(sp):
            beats.append((float(p), vec))
        elif k:
            rest.append((float(p), vec))
    ordered = [v for _, v in sorted(beats)] + [full] + [v for _, v in sorted(rest)]
    out: list[Vector] = []
    cheapest = math.inf
    for vec in ordered:
        cost = ctx.costs.step_macs(vec, ctx.batch_size)
        if cost < cheapest:
            out.append(vec)
            cheapest = cost
    return out


def front_vectors(front: Front, useful_only: bool) -> tuple[list[Vector], list[float]]:
    """The front's vectors and proxies; with ``useful_only``, the useful ones
    (:func:`fleetsim.dse.useful`: no worse than the full network by more than their spread;
    the full network always qualifies, so the list is never empty)."""
    from fleetsim.dse import useful

    keep = useful(front) if useful_only else [True] * len(front.proxy)
    out = [(tuple(float(x) for x in v), float(p))
           for v, p, k in zip(front.vectors, front.proxy, keep) if k]
    if not out:
        best = int(min(range(len(front.proxy)), key=lambda i: front.proxy[i]))
        out = [(tuple(float(x) for x in front.vectors[best]), float(front.proxy[best]))]
    return [v for v, _ in out], [p for _, p in out]


def check_front_groups(groups: tuple[tuple[str, int], ...], ctx: PolicyContext,
                       path: str) -> None:
    from fleetsim.errors import UserError

    if tuple(tuple(g) for g in groups) != tuple(ctx.groups):
        raise UserError(f"policy.options.front: {path} was made for groups {list(groups)}, "
                        f"but the scenario's model has {list(ctx.groups)}. Allowed: a front "
                        "from `fleetsim dse` on a scenario with the same model.")


@POLICIES.register("distreal-energy")
class DistrealEnergy(Distreal):
    """DISTREAL with an energy budget: before every mini-batch, the front vector with the
    best convergence proxy whose remaining mini-batches fit the time left *and* whose
    compute energy fits what is left of the round's budget and of the battery.

    A mini-batch with vector ``v`` costs ``compute_w * MACs(v) / peak`` joules (the
    compute energy of :mod:`fleetsim.energy`: full-load power times seconds of work at
    full availability, whatever the availability), so ``steps_left`` of them must fit
    ``min(energy_budget_j - energy_used_j, energy_left_j)``. Without an energy model
    (``compute_w`` 0) it chooses as ``distreal`` does.
    """

    summary = ("DISTREAL whose vector also fits a per-round energy budget and the battery "
               "(the example of an energy-aware choice)")

    class Options(Distreal.Options):  # type: ignore[name-defined]
        energy_budget_j: float = Field(math.inf, gt=0, description="compute joules a "
                                       "device may spend per round (inf: only the "
                                       "battery limits)")

    def _step_j(self, vec: Vector, obs: StepObservation) -> float:
        return obs.compute_w * obs.costs.step_macs(vec, obs.batch) / obs.peak_macs_per_s

    def choose(self, obs: StepObservation, steps_left: int) -> Vector | None:
        o = self.options
        budget_j = min(o.energy_budget_j - obs.energy_used_j,  # type: ignore[attr-defined]
                       obs.energy_left_j)
        time_s = obs.time_left_s
        for vec in self.candidates:
            if (steps_left * self._step_s(vec, obs) * o.margin <= time_s  # type: ignore[attr-defined]
                    and steps_left * self._step_j(vec, obs) <= budget_j):
                return vec
        return None


@POLICIES.register("uniform-adaptive")
class UniformAdaptive(CandidatePolicy):
    """Ablation of DISTREAL without per-layer rates: the same rate in every group, the
    least dropout that fits, chosen the same way at run time (per mini-batch).

    With ``useful_only`` (default) it keeps, like ``distreal``, only the rates whose
    uniform vector was useful in the DSE (every uniform vector is evaluated: they seed the
    search), so both policies draw on the same information.
    """

    summary = "DISTREAL's run-time rule over uniform vectors (same rate in every layer)"

    class Options(AdaptiveOptions):
        rates: tuple[float, ...] = Field((0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                                         min_length=1, description="dropout rates to choose "
                                         "from")
        useful_only: bool = Field(True, description="keep only rates whose uniform vector "
                                  "was useful in the DSE, as for distreal (needs the front)")
        front: str | None = Field(None, description="front file (default: computed and "
                                  "cached, as for distreal); used only with useful_only")

    def __init__(self, options: PolicyOptions, ctx: PolicyContext) -> None:
        super().__init__(options, ctx)
        assert isinstance(options, UniformAdaptive.Options)
        rates = sorted(set(options.rates))
        if options.useful_only and options.front is not None:
            rates = useful_uniform_rates(options.front, rates, ctx)
        vecs = [(r,) * len(ctx.groups) for r in rates]
        costs = [ctx.costs.step_macs(v, ctx.batch_size) for v in vecs]
        # rank by rate: less dropout is assumed to converge better
        self.candidates = pareto_candidates(vecs, costs, [v[0] for v in vecs])


def useful_uniform_rates(path: str, rates: list[float], ctx: PolicyContext) -> list[float]:
    """Rates whose uniform vector was useful in the DSE (:func:`fleetsim.dse.is_useful`;
    diverged ones never are; rate 0 always stays)."""
    from fleetsim.dse import is_useful, read_evaluated, read_front

    front = read_front(path)
    check_front_groups(front.groups, ctx, path)
    ev = read_evaluated(path)
    good = is_useful(ev["proxy"], ev["spread"], ev["vectors"]) & ev["feasible"]
    ok = {round(float(v[0]), 6): bool(g) for v, g in zip(ev["vectors"], good)
          if len(set(v.tolist())) == 1}
    return [r for r in rates if r == 0.0 or ok.get(round(r, 6), False)]


@POLICIES.register("distreal-static")
class DistrealStatic(Policy):
    """Ablation of DISTREAL without run-time adaptation: one front vector per device class
    for the whole run -- the best-proxy vector that finishes ``local_steps`` mini-batches
    within the deadline at the class's peak speed and long-run mean availability. With
    ``local_epochs``, the vector is chosen for the device's own number of mini-batches
    (per class and step count, the same rule)."""

    summary = "one DSE front vector per device class, fixed for the run"
    model_defaults = DISTREAL_DEFAULTS

    class Options(PolicyOptions):
        front: str | None = Field(None, description="front file (default: computed and "
                                  "cached, as for distreal)")
        margin: float = Field(1.0, ge=1.0, description="safety factor on estimated times")
        useful_only: bool = Field(True, description="as for distreal")

    def __init__(self, options: PolicyOptions, ctx: PolicyContext) -> None:
        super().__init__(options, ctx)
        assert isinstance(options, DistrealStatic.Options)
        self._cands = front_candidates(options.front, options.useful_only, ctx)
        self._memo: dict[tuple[int, int], Vector] = {}
        self.per_class: list[Vector] = [self._vector(k, ctx.local_steps)
                                        for k in range(len(ctx.class_peaks))]

    def _vector(self, k: int, steps: int) -> Vector:
        """The best-proxy candidate that does ``steps`` mini-batches of class ``k`` in time."""
        v = self._memo.get((k, steps))
        if v is None:
            ctx, o = self.ctx, self.options
            assert isinstance(o, DistrealStatic.Options)
            deadline = ctx.deadline_s if ctx.deadline_s is not None else math.inf
            avail = ctx.class_mean_availability[k] if ctx.class_mean_availability else 1.0
            speed = ctx.class_peaks[k] * max(avail, 1e-12)
            fits = [c for c in self._cands
                    if steps * ctx.costs.step_macs(c, ctx.batch_size) / speed
                    * o.margin <= deadline]
            v = self._memo[(k, steps)] = fits[0] if fits else self._cands[-1]
        return v

    def decide(self, obs: StepObservation) -> Decision:
        steps = self.steps_of(obs.assignment)
        if obs.step >= steps:
            return STOP
        if self.ctx.local_epochs is None:
            return Decision(self.per_class[obs.device_class])
        return Decision(self._vector(obs.device_class, steps))
