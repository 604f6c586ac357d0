"""Federated Dropout (Caldas et al., 2018): a random sub-model per device and round."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from fleetsim.policies.base import POLICIES, Assignment, Policy, PolicyContext, PolicyOptions
from fleetsim.policies.defaults import ModelDefault


class FederatedDropoutOptions(PolicyOptions):
    rate: float = Field(0.25, ge=0.0, lt=1.0, description="FD rate: share of the channels "
                        "of every droppable layer left out of the sub-model (the paper "
                        "tried about 0.06 to 0.5)")


@POLICIES.register("federated_dropout")
class FederatedDropout(Policy):
    """Federated Dropout (Caldas et al., 2018): a random sub-model per device and round.

    S. Caldas, J. Konecny, H. B. McMahan, A. Talwalkar, "Expanding
    the Reach of Federated Learning by Reducing Client Resource Requirements",
    arXiv:1812.07210 (2018).

    Server: for each selected device and round, removes a random ``rate`` of the channels
    of every droppable layer (input and output layers stay whole) and sends that smaller
    dense sub-model. Device: trains it, with the same channels all round, and uploads only
    the sub-model; the server averages each element over the devices that held it.
    Lossy compression of the transfers (the paper's other half) is not modelled. Model
    default: no rescaling (the sub-model is an ordinary smaller network).
    """

    Options = FederatedDropoutOptions
    summary = "a random sub-model at one fixed rate per device and round"
    options: FederatedDropoutOptions
    model_defaults = (
        ModelDefault("rescale", False, "Caldas et al. 2018 Sec. 2 (Federated Dropout): "
                     "the server sends a smaller dense sub-model that the client "
                     "trains as is, with no "
                     "rescaling of activations (no official code; k1l1/SLT's "
                     "algorithms/fd.py re-implementation has no scaler either)"),
    )

    def __init__(self, options: FederatedDropoutOptions, ctx: PolicyContext) -> None:
        super().__init__(options, ctx)
        rate = options.rate
        self.submodel = (rate,) * len(ctx.groups) if rate > 0 else None

    def assign(self, round: int, device: int, device_class: int,
               rng: np.random.Generator) -> Assignment:
        # the channels themselves are drawn by the trainer from the (seed, round, device)
        # stream, so every backend trains the same sub-model
        return Assignment(submodel=self.submodel, mode="random", reselect="round")
