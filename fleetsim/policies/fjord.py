"""FjORD (Horvath et al., NeurIPS 2021): ordered dropout, a width drawn per mini-batch."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from fleetsim.policies.base import (
    POLICIES,
    STOP,
    Assignment,
    Decision,
    Policy,
    PolicyContext,
    PolicyOptions,
    StepObservation,
    Vector,
)
from fleetsim.policies.defaults import ModelDefault
from fleetsim.policies.widths import Rounding, Width, class_widths, drop_vector, rounding_field


class FjORDOptions(PolicyOptions):
    widths: tuple[Width, ...] = Field((0.2, 0.4, 0.6, 0.8, 1.0), min_length=1,
                                      description="candidate widths P (the paper's "
                                      "uniform-5)")
    max_width: dict[str, Width] | None = Field(None, description="p_max per device class "
                                               "name; classes not named get the largest "
                                               "of 'widths' that fits their peak speed")
    rounding: Rounding = rounding_field("ceil", "FjORD's (Flower baselines/fjord, "
                                        "od/layers/conv.py: int(np.ceil(out_channels * p)))")


@POLICIES.register("fjord")
class FjORD(Policy):
    """FjORD (Horvath et al., NeurIPS 2021): ordered dropout, width drawn per mini-batch.

    S. Horvath, S. Laskaridis, M. Almeida, I. Leontiadis, S. I. Venieris,
    N. D. Lane, "FjORD: Fair and Accurate Federated Learning under heterogeneous targets
    with Ordered Dropout", NeurIPS 2021 (arXiv:2102.13451).

    Server: sends each device the leading sub-model of its class's maximum width
    ``p_max``. Device: before every mini-batch draws ``p`` uniformly from the candidate
    widths ``<= p_max`` and trains the leading ``p`` share of every layer (ordered
    dropout); it uploads the ``p_max`` sub-model. Model defaults: no rescaling (ordered
    dropout layers scale nothing) and static batch norm, the nearest fleetsim has to
    FjORD's batch-norm statistics per width for the full model that is evaluated.
    Self-distillation is not modelled.
    """

    Options = FjORDOptions
    summary = "ordered dropout, width drawn per mini-batch up to the class maximum"
    options: FjORDOptions
    model_defaults = (
        ModelDefault("rescale", False, "FjORD paper Sec. 3 (ordered dropout keeps the "
                     "leading ceil(p K) units, unscaled); Flower baselines/fjord "
                     "od/layers/conv.py and linear.py slice weights and scale nothing"),
        ModelDefault("bn_stats", "static", "a fleetsim stand-in: FjORD keeps separate "
                     "batch-norm statistics per width (Flower baselines/fjord "
                     "od/layers/batch_norm.py, ODBatchNorm2d: one BatchNorm2d per width, "
                     "shared affine), so the full model is tested with statistics of the "
                     "full width only; static recomputes exactly those before each test",
                     batch_norm_only=True),
    )

    def __init__(self, options: FjORDOptions, ctx: PolicyContext) -> None:
        super().__init__(options, ctx)
        levels = tuple(sorted(set(options.widths)))
        r = options.rounding
        self.max_widths = class_widths(ctx, options.max_width, levels,
                                       "policy.options.max_width", r)
        #: per class, the widths a device may draw (a class maximum below every candidate
        #: trains at that maximum)
        self.allowed: tuple[tuple[float, ...], ...] = tuple(
            tuple(w for w in levels if w <= m + 1e-12) or (m,) for m in self.max_widths)
        self._vectors: tuple[tuple[Vector, ...], ...] = tuple(
            tuple(drop_vector(ctx.groups, w, r) or self.zero for w in ws) for ws in self.allowed)
        self.submodels = tuple(drop_vector(ctx.groups, m, r) for m in self.max_widths)

    def assign(self, round: int, device: int, device_class: int,
               rng: np.random.Generator) -> Assignment:
        return Assignment(submodel=self.submodels[device_class], mode="ordered",
                          reselect="step")

    def decide(self, obs: StepObservation) -> Decision:
        if obs.step >= self.steps_of(obs.assignment):
            return STOP
        choices = self._vectors[obs.device_class]
        return Decision(choices[int(obs.rng.integers(len(choices)))])
