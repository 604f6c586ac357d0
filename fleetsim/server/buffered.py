"""Buffered asynchronous aggregation (FedBuff; FedAsync with a buffer of one).

Each update trained from the global model of its own start version; the server adds its
change ``x_k - x_start`` to the current model, weighted by the device's sample count and by
a staleness function of ``s = current version - start version``:

    x <- x + sum_k w_k s(tau_k) m_k (x_k - x_start_k) / sum_k w_k m_k

elementwise over the devices that trained each element (``m_k``), so that with no
staleness (s = 1) and every update starting from the current model this is exactly
FedAvg's weighted average. Staleness shrinks an update's step; it does not renormalise
it away (Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation",
AISTATS 2022, Algorithm 1). Float buffers (batch-norm statistics) are averaged as they
are. Updates are added in job order (start order), which also orders start versions, so
the sums are the same bits in any backend. Non-finite updates are rejected, as in
:mod:`fleetsim.server.aggregation`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fleetsim.config import StalenessConfig
from fleetsim.server.aggregation import Aggregator, is_finite
from fleetsim.updates import Update


def staleness_weight(cfg: StalenessConfig, s: int) -> float:
    """Weight of an update ``s`` versions stale (1 when fresh)."""
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "polynomial":
        return float((1.0 + s) ** -cfg.a)
    # hinge (Xie et al., "Asynchronous Federated Optimization", 2019)
    return 1.0 if s <= cfg.b else 1.0 / (cfg.a * (s - cfg.b) + 1.0)


class BufferedAggregator(Aggregator):
    """Running sums of staleness-weighted changes, into buffers of the model's shapes.

    Shares :class:`~fleetsim.server.aggregation.Aggregator`'s sums and masks; what differs
    is what is summed (changes from each update's own start, staleness-weighted) and
    that updates come in start order rather than device order.

    Parameters
    ----------
    global_state : the current global model (the changes are added to it)
    buffers : names of float buffers (statistics: averaged, not moved by changes)
    """

    def add(self, order: int, u: Update, start: Mapping[str, Tensor],  # type: ignore[override]
            weight_s: float) -> bool:
        """Add update ``u`` (trained from ``start``) with staleness weight ``weight_s``;
        ``order`` (the job's start index) must increase. False: not finite, not added."""
        if order <= self._last:
            raise ValueError(f"updates must be added in start order ({order} after "
                             f"{self._last})")
        self._last = order
        if not is_finite({k: u.state[k] for k in self.names}):
            return False
        self.count += 1
        w = float(u.weight)
        for k in self.names:
            x, m = u.state[k], u.masks.get(k)
            mw = torch.full_like(x, w) if m is None else m.to(x.dtype) * w
            if k in self.buffers:
                self.num[k].addcmul_(x, mw)
            else:
                self.num[k].addcmul_(x - start[k], mw, value=weight_s)
            self.den[k].add_(mw)
        return True

    def result(self) -> dict[str, Tensor]:
        """The aggregate: the global model moved by the weighted changes."""
        out = dict(self.global_state)
        for k in self.names:
            den = self.den[k]
            step = self.num[k] / den.clamp_min(1e-30)
            new = step if k in self.buffers else self.global_state[k] + step
            out[k] = torch.where(den > 0, new, self.global_state[k])
        return out
