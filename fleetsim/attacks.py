"""Adversarial devices (``fleet.classes[i].attack``): what an attacker sends.

An attack replaces the change ``d`` of a device's parameters (flat, from the model it
trained from) before the device's transforms run (an attacker uses the same channel):

- ``sign_flip``: ``-scale d`` (the sign-flipping attack of the Byzantine-robustness
  literature, e.g. Damaskinos et al. 2018; Karimireddy et al., ICLR 2022);
- ``gaussian``: ``N(0, std^2)`` per trained entry, independent of ``d`` (Blanchard et al.,
  NeurIPS 2017, Sec. 5);
- ``label_flip``: the device trains on labels ``C - 1 - y`` (C classes) and sends that
  honest-looking update (Tolpegin et al., ESORICS 2020); done by the trainer
  (:attr:`fleetsim.training.TrainerSettings.label_flip`), so ``d`` passes unchanged here.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fleetsim.registry import Registry
from fleetsim.rng import torch_generator


class _Opts(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Attack:
    """Base: maps an honest change to the one sent."""

    Options: ClassVar[type[BaseModel]] = _Opts
    #: done in training (labels), not on the update
    in_training: ClassVar[bool] = False

    def __init__(self, options: BaseModel) -> None:
        self.options = options

    def apply(self, d: Tensor, trained: Tensor, seed: int, key: int, device: int) -> Tensor:
        """The sent change for honest change ``d`` (``trained``: bool mask of the entries
        the device trained)."""
        return d


ATTACKS: Registry[type[Attack]] = Registry("attack")


class SignFlipOptions(_Opts):
    scale: float = Field(1.0, gt=0, description="the update sent is -scale times the honest "
                         "one")


@ATTACKS.register("sign_flip")
class SignFlip(Attack):
    """Sends ``-scale d`` instead of the honest change ``d``."""

    Options = SignFlipOptions

    def apply(self, d: Tensor, trained: Tensor, seed: int, key: int, device: int) -> Tensor:
        return d * -self.options.scale  # type: ignore[attr-defined]


class GaussianOptions(_Opts):
    std: float = Field(gt=0, description="standard deviation of each sent entry")


@ATTACKS.register("gaussian")
class Gaussian(Attack):
    """Sends ``N(0, std^2)`` noise on every entry it trained, from its own stream."""

    Options = GaussianOptions

    def apply(self, d: Tensor, trained: Tensor, seed: int, key: int, device: int) -> Tensor:
        g = torch_generator(seed, "attack", key, device)
        noise = torch.randn(d.shape, generator=g, dtype=d.dtype) * self.options.std  # type: ignore[attr-defined]
        return torch.where(trained, noise, torch.zeros_like(d))


@ATTACKS.register("label_flip")
class LabelFlip(Attack):
    """Trains on flipped labels ``C - 1 - y``; the update is then sent as it is."""

    in_training = True
