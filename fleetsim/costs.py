"""The cost model: MACs, bytes and seconds of a training step for any dropout vector.

Forward MACs, parameters and activation sizes come from
:meth:`fleetsim.nn.DroppableNet.measure`, a shape-only forward pass of the very code that
trains the sub-network, so the counted and the executed network cannot drift apart. A
training step costs ``forward MACs x batch x (1 + backward_factor)``.

Seconds: a device of peak ``P`` MAC/s at availability 1 needs ``MACs / P`` seconds. With a
calibration file (``time_s = a * MACs + b`` measured on this host by ``fleetsim profile``),
a step costs ``MACs + b / a`` *effective* MACs: the fixed per-step overhead ``b`` is scaled
by the device's speed like everything else, and a device of peak ``1 / a`` is exactly
this host.

Channel blocks: vectorised CPU kernels (oneDNN's ``nChw16c`` layout with AVX-512, ``8c``
with AVX2) process channels in blocks, so a 12-channel layer costs what a 16-channel one
does. With ``channel_block`` B > 1 the step's *timed* MACs count every group's kept channels
rounded up to a multiple of B, but never beyond the group's size (so the full network's
timed MACs are its exact MACs, although the kernels would pad a 20-channel group to 32).
``fleetsim profile`` finds the B that explains a host's step times best. Reported MACs,
parameters, bytes and activations always stay exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fleetsim.nn.base import DroppableNet, ShapeCounter
from fleetsim.nn.slicing import kept_counts


@dataclass(frozen=True)
class StepCost:
    """Cost of one mini-batch with one dropout vector."""

    macs: float  # training MACs of the step (forward + backward, whole batch)
    params: int  # parameters of the sub-network
    activations: int  # activation elements kept for backward, whole batch


class CostModel:
    """Costs of steps and transfers for one model.

    Parameters
    ----------
    model : the network (only its shapes are used)
    backward_factor : backward MACs per forward MAC (about 2)
    bytes_per_param : bytes per parameter on the wire
    overhead_macs : fixed effective MACs per step (``b / a`` of a calibration)
    channel_block : kept channels are rounded up to a multiple of this in the timed MACs
        (see the module docstring); 1 times exact MACs
    """

    def __init__(self, model: DroppableNet, backward_factor: float = 2.0,
                 bytes_per_param: int = 4, overhead_macs: float = 0.0,
                 channel_block: int = 1) -> None:
        if channel_block < 1:
            raise ValueError(f"channel_block must be >= 1, got {channel_block}")
        self.model = model
        self.groups = model.groups
        self.n_groups = len(model.groups)
        self.backward_factor = backward_factor
        self.bytes_per_param = bytes_per_param
        self.overhead_macs = overhead_macs
        self.channel_block = channel_block
        self._memo: dict[tuple[int, ...], tuple[int, int, int]] = {}
        self._vec_memo: dict[tuple[float, ...] | None, tuple[int, int, int]] = {}
        self._timed_memo: dict[tuple[float, ...] | None, int] = {}
        full = self._per_sample(None)
        self.full_forward_macs, self.full_params, self.full_activations = full

    def _key(self, vector: Sequence[float] | None) -> tuple[int, ...]:
        """Kept channels per group, in group order."""
        if vector is None or not any(vector):
            return tuple(g.channels for g in self.groups)
        counts = kept_counts(self.groups, vector)
        return tuple(counts[g.name] for g in self.groups)

    def _measured(self, key: tuple[int, ...]) -> tuple[int, int, int]:
        hit = self._memo.get(key)
        if hit is None:
            counts = {g.name: k for g, k in zip(self.groups, key)}
            m = measure_on_cpu(self.model, counts)
            hit = (m.macs, m.params, m.activations)
            self._memo[key] = hit
        return hit

    def _per_sample(self, vector: Sequence[float] | None) -> tuple[int, int, int]:
        # Hot path: the engine asks once per simulated mini-batch, so every vector (the
        # full model's None and all-zero ones included) is answered from one dict lookup.
        vkey = None if vector is None else tuple(vector)
        hit = self._vec_memo.get(vkey)
        if hit is None:
            hit = self._vec_memo[vkey] = self._measured(self._key(vector))
        return hit

    def timed_forward_macs(self, vector: Sequence[float] | None) -> int:
        """Forward MACs per sample that the step's time follows: exact MACs, or with
        ``channel_block`` > 1 those of the kept channels rounded up to whole blocks."""
        vkey = None if vector is None else tuple(vector)
        hit = self._timed_memo.get(vkey)
        if hit is None:
            key, b = self._key(vector), self.channel_block
            if b > 1:
                key = tuple(min(g.channels, math.ceil(k / b) * b)
                            for g, k in zip(self.groups, key))
            hit = self._timed_memo[vkey] = self._measured(key)[0]
        return hit

    def step(self, vector: Sequence[float] | None, batch: int) -> StepCost:
        """Cost of one training mini-batch of ``batch`` samples."""
        fwd, params, act = self._per_sample(vector)
        return StepCost(fwd * batch * (1.0 + self.backward_factor), params, act * batch)

    def step_macs(self, vector: Sequence[float] | None, batch: int) -> float:
        """Effective training MACs of one mini-batch: what its time follows (channel blocks
        and the calibrated overhead included)."""
        return self.timed_forward_macs(vector) * batch * (1.0 + self.backward_factor) \
            + self.overhead_macs

    def params(self, vector: Sequence[float] | None = None) -> int:
        return self._per_sample(vector)[1]

    def model_bytes(self, vector: Sequence[float] | None = None) -> int:
        """Bytes of the (sub-)model's parameters on the wire."""
        return self.params(vector) * self.bytes_per_param

    def activation_bytes(self, vector: Sequence[float] | None, batch: int) -> int:
        """Activation memory of a training step (float32), an estimate for memory checks."""
        return self._per_sample(vector)[2] * batch * 4


def measure_on_cpu(model: DroppableNet, counts: dict[str, int] | None) -> ShapeCounter:
    """What :meth:`DroppableNet.measure` counts, from a one-sample forward on the CPU.

    Why not ``model.measure``: its pass on the meta device runs PyTorch's Python reference
    kernels, whose first use imports ``torch._dynamo`` (~1.5 s, paid by every run at
    start-up, more than a one-sample pass costs for any built-in model). The counter sees
    shapes only, so the counts are the same (the tests check it). The model is left as it
    was: evaluation mode and no gradient for the pass, so batch-norm statistics stay put.
    """
    keep = None
    if counts is not None:
        keep = {g: torch.arange(k) for g, k in counts.items() if k < model.group_channels[g]}
    counter: ShapeCounter | None = ShapeCounter()
    was_training = model.training
    try:
        model._counter = counter
        model.train(False)
        with torch.no_grad():
            model(torch.zeros((1, *model.input_shape)), keep or None)
    except Exception:  # a plugin model that cannot run here: the shape-only pass below
        counter = None
    finally:
        model._counter = None
        model.train(was_training)
    return counter if counter is not None else model.measure(counts)


def comm_seconds(nbytes: float, bandwidth_mbps: float, latency_s: float) -> float:
    """Time to send ``nbytes`` over a path of ``bandwidth_mbps`` (megabit/s) and latency."""
    return latency_s + nbytes * 8.0 / (bandwidth_mbps * 1e6)
