"""FedRolex (Alam et al., NeurIPS 2022): HeteroFL's widths, a window that rolls."""

from __future__ import annotations

import math

from pydantic import Field

from fleetsim.policies.base import POLICIES, PolicyContext
from fleetsim.policies.defaults import ModelDefault
from fleetsim.policies.heterofl import HeteroFL, HeteroFLOptions
from fleetsim.policies.widths import Rounding, rounding_field


class FedRolexOptions(HeteroFLOptions):
    stride: int = Field(1, ge=1, description="channels the window advances per round "
                        "(the paper: 1)")
    rounding: Rounding = rounding_field("ceil", "FedRolex's (resnet_server.py, "
                                        "split_model: int(np.ceil(output_size * "
                                        "scaler_rate)))")


@POLICIES.register("fedrolex")
class FedRolex(HeteroFL):
    """FedRolex (Alam et al., NeurIPS 2022): HeteroFL widths in a window rolling per round.

    S. Alam, L. Liu, M. Yan, M. Zhang, "FedRolex: Model-Heterogeneous
    Federated Learning with Rolling Sub-Model Extraction", NeurIPS 2022
    (arXiv:2212.01548).

    Server: as HeteroFL, a fixed width per class, but the sub-model it sends keeps a
    contiguous window of every layer's channels that starts at ``round * stride`` and
    wraps around, so over the rounds every channel is trained evenly, not only the
    leading ones. All devices of a round share the start, so within a round smaller
    windows lie inside larger ones. Device and aggregation: as HeteroFL. Model defaults:
    the scaler (``rescale``) and, unlike HeteroFL, batch statistics at test
    (``bn_stats: batch``), as FedRolex's code evaluates the global model.
    """

    Options = FedRolexOptions
    summary = "per-class width, a channel window rolling by 'stride' each round"
    options: FedRolexOptions
    mode = "rolling"
    model_defaults = (
        ModelDefault("rescale", True, "FedRolex code: config.yml control scale '1'; "
                     "models/resnet.py applies modules.Scaler (input / rate in training)"),
        ModelDefault("bn_stats", "batch", "FedRolex code: main_resnet.py builds and tests "
                     "the global model as resnet18(track=False) (BatchNorm2d("
                     "track_running_stats=False): batch statistics at test too); the sBN "
                     "call stats() in resnet_test.py is commented out",
                     batch_norm_only=True),
    )

    def __init__(self, options: FedRolexOptions, ctx: PolicyContext) -> None:
        super().__init__(options, ctx)
        # slicing takes the offset modulo each group's size; reducing it modulo their
        # common multiple first keeps it small without changing any window
        self.period = math.lcm(*(c for _, c in ctx.groups))

    def offset(self, round: int) -> int:
        return (round * self.options.stride) % self.period
