"""Device-side update transforms (``training.update_transforms``): clip, top-k, QSGD.

A transform maps a device's update -- the change ``d`` of its parameters from the model it
trained from, one flat float32 vector in the model's parameter order -- to what the device
uploads, and says what that costs on the wire (:class:`Wire`). Wire sizes are functions of
the element count only, never of the values, so the engine can time an upload before the
update is trained.

- ``clip``: ``d min(1, S / ||d||_2)`` (DP-FedAvg's flat clipping; McMahan et al.,
  "Learning Differentially Private Recurrent Language Models", ICLR 2018).
- ``topk``: the k = ceil(ratio n) largest-magnitude entries of ``d + e`` are sent (values
  and 32-bit indices) and the rest is kept as the device's residual ``e`` for its next
  round (error feedback: Lin et al., "Deep Gradient Compression", ICLR 2018, gradient
  accumulation without momentum correction).
- ``qsgd``: each bucket v of ``bucket`` entries is sent as its norm (32 bits) and, per
  entry, a sign bit and a level in 0..s (ceil(log2(s + 1)) bits): ``Q(v_i) = ||v|| sgn(v_i)
  xi_i / s`` with ``xi_i = l + 1`` with probability ``|v_i| s / ||v|| - l`` and ``l``
  otherwise, ``l = floor(|v_i| s / ||v||)``; unbiased, with ``E||Q(v) - v||^2 <=
  min(d / s^2, sqrt(d) / s) ||v||^2`` for a bucket of d entries (Alistarh et al., "QSGD",
  NeurIPS 2017, Lemma 3.1).

State that crosses rounds (top-k's residual) belongs to the device: it is kept per device
id in :class:`DeviceStates` (one place to checkpoint), updated in the order updates reach
the server, so it is the same bits whichever backend trained them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fleetsim.registry import Registry
from fleetsim.rng import torch_generator

#: bytes of one index of a sent entry (top-k)
INDEX_BYTES = 4
#: bytes of one norm (QSGD's per bucket)
NORM_BYTES = 4


@dataclass(frozen=True)
class Wire:
    """What an update costs to send: ``values`` entries of ``value_bits`` bits each, plus
    ``extra_bytes`` (indices, norms)."""

    values: int
    value_bits: int
    extra_bytes: int = 0

    @property
    def nbytes(self) -> int:
        return -(-self.values * self.value_bits // 8) + self.extra_bytes


@dataclass
class DeviceStates:
    """Per-device state of the transforms that keep some across rounds (top-k's residual),
    by transform position in the chain and device id."""

    residual: dict[tuple[int, int], Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """Where a transform runs: the run's seed, the update's stream key (sync: the round;
    async: the job), the device, the chain position, and the device states."""

    seed: int
    key: int
    device: int
    position: int
    states: DeviceStates


class _Opts(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Transform:
    """Base: one step of the chain."""

    Options: ClassVar[type[BaseModel]] = _Opts
    #: whether it changes what is sent (compression), so the wire size
    compresses: ClassVar[bool] = False

    def __init__(self, options: BaseModel) -> None:
        self.options = options

    def apply(self, d: Tensor, ctx: Context) -> Tensor:
        raise NotImplementedError

    def wire(self, w: Wire) -> Wire:
        return w


TRANSFORMS: Registry[type[Transform]] = Registry("update transform")


class ClipOptions(_Opts):
    max_norm: float = Field(gt=0, description="S: the update's L2 norm bound (DP-FedAvg's "
                            "clipping norm; server.noise scales with it)")


@TRANSFORMS.register("clip")
class Clip(Transform):
    """Scales the update to an L2 norm of at most S: ``d min(1, S / ||d||)``."""

    Options = ClipOptions

    def apply(self, d: Tensor, ctx: Context) -> Tensor:
        s = self.options.max_norm  # type: ignore[attr-defined]
        norm = float(torch.linalg.vector_norm(d.to(torch.float64)))
        return d * (s / norm) if norm > s else d


class TopKOptions(_Opts):
    ratio: float = Field(gt=0, le=1, description="share of the entries sent: k = ceil(ratio "
                         "n) of n (at least one)")
    error_feedback: bool = Field(True, description="keep what is not sent as the device's "
                                 "residual, added to its next update (DGC)")


def topk_count(ratio: float, n: int) -> int:
    """k of top-k for ``n`` entries."""
    return max(1, math.ceil(round(ratio * n, 9)))


@TRANSFORMS.register("topk")
class TopK(Transform):
    """Top-k sparsification with error feedback (DGC): the k largest entries of d + e.

    Sent as values and indices (ties: the lower index); ``e`` becomes what was not
    sent."""

    Options = TopKOptions
    compresses = True

    def apply(self, d: Tensor, ctx: Context) -> Tensor:
        o = self.options
        slot = (ctx.position, ctx.device)
        acc = d
        if o.error_feedback:  # type: ignore[attr-defined]
            e = ctx.states.residual.get(slot)
            if e is not None:
                acc = d + e
        k = topk_count(o.ratio, acc.numel())  # type: ignore[attr-defined]
        idx = torch.argsort(acc.abs(), descending=True, stable=True)[:k]
        sent = torch.zeros_like(acc)
        sent[idx] = acc[idx]
        if o.error_feedback:  # type: ignore[attr-defined]
            ctx.states.residual[slot] = acc - sent
        return sent

    def wire(self, w: Wire) -> Wire:
        k = topk_count(self.options.ratio, w.values)  # type: ignore[attr-defined]
        return replace(w, values=k, extra_bytes=w.extra_bytes + k * INDEX_BYTES)


class QSGDOptions(_Opts):
    levels: int = Field(ge=1, description="s: quantization levels per sign (1 is ternary)")
    bucket: int = Field(512, ge=1, description="d: entries sharing one norm (Alistarh et al. "
                        "use 512)")


def qsgd_bits(levels: int) -> int:
    """Bits of one quantized entry: a sign and a level in 0..s."""
    return 1 + math.ceil(math.log2(levels + 1))


def qsgd(v: Tensor, levels: int, bucket: int, g: torch.Generator) -> Tensor:
    """QSGD's stochastic quantization of ``v`` (flat), bucket by bucket."""
    n = v.numel()
    pad = -n % bucket
    x = torch.cat([v, v.new_zeros(pad)]).view(-1, bucket).to(torch.float64)
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    r = torch.where(norm > 0, x.abs() / norm.clamp_min(1e-300) * levels, torch.zeros_like(x))
    low = torch.floor(r)
    u = torch.rand(x.shape, generator=g, dtype=torch.float64)
    xi = low + (u < (r - low)).to(x.dtype)
    q = norm * torch.sign(x) * xi / levels
    return q.reshape(-1)[:n].to(v.dtype)


@TRANSFORMS.register("qsgd")
class QSGD(Transform):
    """Unbiased stochastic quantization to s levels per bucket (QSGD).

    Its own random stream per (round or job, device)."""

    Options = QSGDOptions
    compresses = True

    def apply(self, d: Tensor, ctx: Context) -> Tensor:
        o = self.options
        g = torch_generator(ctx.seed, "qsgd", ctx.key, ctx.device, ctx.position)
        return qsgd(d, o.levels, o.bucket, g)  # type: ignore[attr-defined]

    def wire(self, w: Wire) -> Wire:
        o = self.options
        return Wire(w.values, qsgd_bits(o.levels),  # type: ignore[attr-defined]
                    w.extra_bytes + NORM_BYTES * -(-w.values // o.bucket))  # type: ignore[attr-defined]


class Chain:
    """The configured transforms, in order, with their devices' states."""

    def __init__(self, transforms: Sequence[Transform], seed: int) -> None:
        self.transforms = tuple(transforms)
        self.seed = seed
        self.states = DeviceStates()

    @property
    def compresses(self) -> bool:
        return any(t.compresses for t in self.transforms)

    def apply(self, d: Tensor, device: int, key: int) -> Tensor:
        for i, t in enumerate(self.transforms):
            d = t.apply(d, Context(self.seed, key, device, i, self.states))
        return d

    def upload_bytes(self, nbytes: int, bytes_per_param: int) -> int:
        """Bytes on the wire of an update whose plain form is ``nbytes`` bytes."""
        w = Wire(nbytes // bytes_per_param, 8 * bytes_per_param)
        for t in self.transforms:
            w = t.wire(w)
        return w.nbytes
