"""DP-FedAvg's server side (``server.noise``): Gaussian noise on the aggregate, and the
privacy spent, from Opacus's RDP accountant.

McMahan et al., "Learning Differentially Private Recurrent Language Models" (ICLR 2018):
every update is clipped to an L2 norm ``S`` (the ``clip`` transform) and the server adds
``N(0, sigma^2)`` to each trained parameter of the average, ``sigma = z S_avg`` with noise
multiplier ``z``. Here the average is the masked, sample-weighted mean, in which device k
moves element e by ``w_k m_ke d_ke / sum_j w_j m_je``; with every ``||d_k|| <= S`` one device
moves the average by at most ``S_avg = S max_{k,e} w_k m_ke / sum_j w_j m_je`` (the
sample counts are taken as public, as fleetsim's weighting needs them; with equal weights
and full models this is McMahan et al.'s ``S / n``). Batch-norm statistics get no noise:
a DP guarantee needs a model without them (``model.options.norm: none`` where offered).

The accountant composes ``steps`` rounds of the sampled Gaussian mechanism with sampling
rate ``q`` (clients per round over the fleet's devices, as if each device were sampled
independently: the standard approximation of sampling K of N) and reports epsilon for
the scenario's delta, by :class:`opacus.accountants.RDPAccountant` (Mironov et al.), never
by a formula here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fleetsim.registry import Registry
from fleetsim.rng import torch_generator
from fleetsim.server.aggregation import Aggregator
from fleetsim.updates import Update


class GaussianNoiseOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    noise_multiplier: float = Field(gt=0, description="z: the noise's std over the average's "
                                    "sensitivity (DP-FedAvg's z)")
    delta: float = Field(1e-5, gt=0, lt=1, description="delta of the (epsilon, delta) "
                         "reported per round in rounds.csv's epsilon")


class GaussianNoise:
    """DP-FedAvg's Gaussian noise on the mean, ``sigma = z S_avg`` (see the module)."""

    Options = GaussianNoiseOptions

    def __init__(self, options: GaussianNoiseOptions) -> None:
        self.options = options


NOISES: Registry[type[GaussianNoise]] = Registry("noise")
NOISES.add("gaussian_noise", GaussianNoise)


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon spent after ``steps`` sampled Gaussian mechanisms (Opacus RDP accountant)."""
    from opacus.accountants import RDPAccountant

    if steps == 0:
        return 0.0
    acc = RDPAccountant()
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return float(acc.get_epsilon(delta))


class NoisyMean(Aggregator):
    """The masked weighted mean plus ``N(0, (z S_avg)^2)`` on every trained parameter.

    Parameters
    ----------
    global_state, buffers : as :class:`~fleetsim.server.aggregation.Aggregator`
    noise_multiplier : z
    clip_norm : S, the bound every update was clipped to
    seed, key : the noise's stream (purpose ``dp_noise``, keyed by the round)
    """

    def __init__(self, global_state: Mapping[str, Tensor], buffers: Iterable[str],
                 noise_multiplier: float, clip_norm: float, seed: int, key: int) -> None:
        super().__init__(global_state, buffers)
        self.z, self.clip, self.seed, self.key = noise_multiplier, clip_norm, seed, key
        self.wmax = {k: torch.zeros_like(global_state[k]) for k in self.names}
        self.sigma = 0.0

    def _accumulate(self, k: str, x: Tensor, m: Tensor | None, w: float, u: Update) -> None:
        super()._accumulate(k, x, m, w, u)
        mw = torch.full_like(x, w) if m is None else m.to(x.dtype).expand_as(x) * w
        torch.maximum(self.wmax[k], mw, out=self.wmax[k])

    def sensitivity(self) -> float:
        """S_avg: how far one clipped update can move the average (L2)."""
        share = 0.0
        for k in self.names:
            if k in self.buffers:
                continue
            den = self.den[k]
            r = torch.where(den > 0, self.wmax[k] / den.clamp_min(1e-30), torch.zeros_like(den))
            share = max(share, float(r.max())) if r.numel() else share
        return self.clip * share

    def result(self) -> dict[str, Tensor]:
        out = super().result()
        self.sigma = self.z * self.sensitivity()
        g = torch_generator(self.seed, "dp_noise", self.key)
        for k in self.names:
            if k in self.buffers:
                continue
            noise = torch.randn(out[k].shape, generator=g, dtype=out[k].dtype) * self.sigma
            out[k] = torch.where(self.den[k] > 0, out[k] + noise, out[k])
        return out
