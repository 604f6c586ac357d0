"""HeteroFL (Diao et al., ICLR 2021): a fixed width per device class, leading channels."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from fleetsim.policies.base import POLICIES, Assignment, Policy, PolicyContext, PolicyOptions
from fleetsim.policies.defaults import ModelDefault
from fleetsim.policies.widths import Rounding, Width, class_widths, drop_vector, rounding_field


class HeteroFLOptions(PolicyOptions):
    widths: dict[str, Width] | None = Field(None, description="width (share of channels "
                                            "kept in every layer) per device class name; "
                                            "classes not named get a width from 'levels'")
    levels: tuple[Width, ...] = Field((1.0, 0.5, 0.25, 0.125, 0.0625), min_length=1,
                                      description="widths a class not in 'widths' may get "
                                      "(HeteroFL's a..e): the largest whose mini-batch MACs, "
                                      "relative to the full model, are at most the class's "
                                      "peak speed relative to the fastest class")
    rounding: Rounding = rounding_field("ceil", "HeteroFL's (fed.py, split_model: "
                                        "int(np.ceil(output_size * scaler_rate)))")


@POLICIES.register("heterofl")
class HeteroFL(Policy):
    """HeteroFL (Diao et al., ICLR 2021): a fixed width per device class, leading channels.

    E. Diao, J. Ding, V. Tarokh, "HeteroFL: Computation and Communication
    Efficient Federated Learning for Heterogeneous Clients", ICLR 2021 (arXiv:2010.01264).

    Server: sends each device the sub-model of its class's fixed width ``r``, the
    *leading* ``r`` share of the channels of every layer (sub-models are nested). Device:
    trains that sub-model all round and uploads it; each element is averaged over the
    devices whose sub-model covers it (HeteroFL's code weights clients equally; fleetsim
    weights by samples). Model defaults (``model_defaults``): the scaler (1/r in
    training, ``rescale``) and static batch norm (sBN, ``bn_stats: static``), as
    HeteroFL's code; the kept count is ``ceil(r C)``. Its ``dynamic`` width mode is not
    modelled.
    """

    Options = HeteroFLOptions
    summary = "fixed width per device class, leading channels"
    options: HeteroFLOptions
    mode = "ordered"
    model_defaults = (
        ModelDefault("rescale", True, "HeteroFL paper Sec. 3, 'Scaler'; code: "
                     "models/conv.py and models/resnet.py put modules.Scaler (input / "
                     "rate in training) after each convolution "
                     "when control 'scale' is 1 (the README's MNIST example)"),
        ModelDefault("bn_stats", "static", "HeteroFL paper Sec. 3, 'Static Batch Normalization'; "
                     "code: BatchNorm2d(track_running_stats=False) in training, "
                     "train_classifier_fed.py stats() recomputes the global model's "
                     "statistics (track=True, momentum=None) on the training data before "
                     "each test", batch_norm_only=True),
    )

    def __init__(self, options: HeteroFLOptions, ctx: PolicyContext) -> None:
        super().__init__(options, ctx)
        self.widths = class_widths(ctx, options.widths, options.levels,
                                   "policy.options.widths", options.rounding)
        self.submodels = tuple(drop_vector(ctx.groups, w, options.rounding)
                               for w in self.widths)

    def offset(self, round: int) -> int:
        """Start of the kept channels (the leading ones here)."""
        return 0

    def assign(self, round: int, device: int, device_class: int,
               rng: np.random.Generator) -> Assignment:
        return Assignment(submodel=self.submodels[device_class], mode=self.mode,
                          reselect="round", offset=self.offset(round))
