"""The way from a device's trained update to the server's new model.

Device side, per update in the order updates reach the server: an adversarial device's
attack (:mod:`fleetsim.attacks`), then the transform chain (:mod:`fleetsim.transforms`);
server side: the aggregation rule (:mod:`fleetsim.server.robust`, default the running
masked mean) and DP-FedAvg's noise (:mod:`fleetsim.server.privacy`). The engine asks this
object for its aggregators and for the bytes of an upload; with nothing configured it
hands out exactly the aggregators of before and the plain upload size, so results are
the same bits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fleetsim.attacks import Attack
from fleetsim.server.aggregation import AGGREGATORS, Aggregator, is_finite
from fleetsim.server.buffered import BufferedAggregator
from fleetsim.server.privacy import GaussianNoise, NoisyMean, epsilon
from fleetsim.server.robust import CollectingAggregator, CollectingBuffered, Rule
from fleetsim.transforms import Chain
from fleetsim.updates import Update


class UpdatePipeline:
    """Attacks, transforms, the aggregation rule and DP noise of one run.

    Parameters
    ----------
    seed : the run's seed (the streams of QSGD, Gaussian attacks and DP noise)
    rule : a robust aggregation rule (None: the running mean, or the policy's own rule)
    chain : device-side transforms (None: none)
    attacks : per device class, its attack (None: honest)
    class_of : each device's class
    noise, clip_norm : DP-FedAvg's noise and the clip bound it is calibrated to
    sample_rate : the accountant's sampling rate (K / N)
    bytes_per_param : bytes of a parameter on the wire, uncompressed
    """

    def __init__(self, seed: int = 0, rule: Rule | None = None, chain: Chain | None = None,
                 attacks: Sequence[Attack | None] = (), class_of: np.ndarray | None = None,
                 noise: GaussianNoise | None = None, clip_norm: float = 0.0,
                 sample_rate: float = 0.0, bytes_per_param: int = 4) -> None:
        self.seed = seed
        self.rule = rule
        self.chain = chain if chain is not None and chain.transforms else None
        self.noise, self.clip_norm, self.sample_rate = noise, clip_norm, sample_rate
        self.bytes_per_param = bytes_per_param
        self.attacks = tuple(attacks)
        self.attackers: np.ndarray | None = None
        if any(a is not None for a in self.attacks) and class_of is not None:
            self.attackers = np.array([a is not None for a in self.attacks])[class_of]
        self._class_of = class_of
        # attacks done on the update (label flipping is done by the trainer)
        self._update_attacks = any(a is not None and not a.in_training for a in self.attacks)
        self._device_side = self.chain is not None or self._update_attacks
        self._noisy_rounds = 0
        self._last: Any = None

    @property
    def device_side(self) -> bool:
        """Whether updates are transformed or attacked on the device side."""
        return self._device_side

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict[str, Any]:
        """What crosses rounds (kept by a run's checkpoints): the rounds the accountant
        has counted, and the devices' transform states (top-k's residuals)."""
        return {"noisy_rounds": self._noisy_rounds,
                "residual": None if self.chain is None else self.chain.states.residual}

    def load_state(self, state: dict[str, Any]) -> None:
        """Go on from what :meth:`state` gave."""
        self._noisy_rounds = state["noisy_rounds"]
        if self.chain is not None:
            self.chain.states.residual = state["residual"]

    # ------------------------------------------------------------------ engine's calls

    def aggregator(self, kind: str, state: Mapping[str, Tensor], buffers: Iterable[str],
                   key: int) -> Any:
        """A synchronous round's aggregator (``kind``: the policy's own rule's name)."""
        agg: Any
        if self.noise is not None:
            o = self.noise.options
            agg = NoisyMean(state, buffers, o.noise_multiplier, self.clip_norm, self.seed, key)
        elif self.rule is not None:
            agg = CollectingAggregator(self.rule, state, buffers)
        else:
            agg = AGGREGATORS.get(kind)(state, buffers)
        self._last = agg
        if not self._device_side:
            return agg
        return _Sync(agg, self, state, key)

    def buffered(self, state: Mapping[str, Tensor], buffers: Iterable[str]) -> Any:
        """An asynchronous aggregation's aggregator."""
        agg: Any = (CollectingBuffered(self.rule, state, buffers) if self.rule is not None
                    else BufferedAggregator(state, buffers))
        self._last = agg
        if not self._device_side:
            return agg
        return _Async(agg, self)

    def upload_bytes(self, nbytes: int) -> int:
        """Bytes on the wire of an update whose uncompressed parameters take ``nbytes``."""
        if self.chain is None or not self.chain.compresses:
            return nbytes
        return self.chain.upload_bytes(nbytes, self.bytes_per_param)

    def figures(self) -> dict[str, Any]:
        """Extra columns of the round just aggregated (none with nothing configured)."""
        out: dict[str, Any] = {}
        agg = self._last
        if self.noise is not None:
            if agg is not None and agg.count:
                self._noisy_rounds += 1
            o = self.noise.options
            out["noise_std"] = agg.sigma if agg is not None and agg.count else 0.0
            out["epsilon"] = epsilon(o.noise_multiplier, self.sample_rate, self._noisy_rounds,
                                     o.delta)
        if self.rule is not None and self.rule.needs() > 1:
            out["aggregation_skipped"] = int(bool(getattr(agg, "skipped", False)))
        self._last = None
        return out

    # ------------------------------------------------------------------ one update

    def process(self, u: Update, start: Mapping[str, Tensor], names: Sequence[str],
                key: int) -> Update:
        """What device ``u.device`` sends: its change attacked, then transformed."""
        attack = None
        if self._class_of is not None and self.attacks:
            attack = self.attacks[int(self._class_of[u.device])]
        if self.chain is None and (attack is None or attack.in_training):
            return u
        d = torch.cat([(u.state[k] - start[k]).reshape(-1) for k in names])
        if attack is not None and not attack.in_training:
            trained = torch.cat([_mask(u, k).reshape(-1) for k in names])
            d = attack.apply(d, trained, self.seed, key, u.device)
        if self.chain is not None:
            d = self.chain.apply(d, u.device, key)
        state = dict(u.state)
        at = 0
        for k in names:
            n = start[k].numel()
            state[k] = start[k] + d[at:at + n].view_as(start[k])
            at += n
        return Update(u.device, u.weight, state, u.masks, u.steps)


def _mask(u: Update, k: str) -> Tensor:
    m = u.masks.get(k)
    x = u.state[k]
    return torch.ones_like(x, dtype=torch.bool) if m is None else m.expand_as(x)


def _params(agg: Any) -> list[str]:
    return [k for k in agg.names if k not in agg.buffers]


class _Sync:
    """A synchronous aggregator behind the device side: each update is attacked and
    transformed (from the round's model) before it is added."""

    def __init__(self, agg: Aggregator, pipe: UpdatePipeline, start: Mapping[str, Tensor],
                 key: int) -> None:
        self.agg, self.pipe, self.start, self.key = agg, pipe, start, key

    def add(self, u: Update) -> bool:
        # a diverged update is rejected as it is, before it can touch a device's residual
        if not is_finite({k: u.state[k] for k in self.agg.names}):
            return self.agg.add(u)
        return self.agg.add(self.pipe.process(u, self.start, _params(self.agg), self.key))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.agg, name)


class _Async:
    """An asynchronous aggregator behind the device side (stream key: the job's start
    index, unique per update)."""

    def __init__(self, agg: Any, pipe: UpdatePipeline) -> None:
        self.agg, self.pipe = agg, pipe

    def add(self, order: int, u: Update, start: Mapping[str, Tensor], weight_s: float) -> bool:
        if is_finite({k: u.state[k] for k in self.agg.names}):
            u = self.pipe.process(u, start, _params(self.agg), order)
        return self.agg.add(order, u, start, weight_s)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.agg, name)
