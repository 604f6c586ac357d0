"""Aggregation rules over the whole list of a round's updates (``server.aggregator``).

FedAvg's mean is a running sum (:mod:`fleetsim.server.aggregation`); robust rules need
every update at once -- an order statistic, or distances between updates -- so they
collect the round's updates (:class:`CollectingAggregator`, and
:class:`CollectingBuffered` in async mode) and combine them at the end.

Rules combine *points*: per float tensor, the update's change from the model it trained
from (staleness-weighted in async mode, as :mod:`fleetsim.server.buffered` does) for
parameters, and its value for float buffers (batch-norm statistics), each with the mask
of the elements the device trained (sub-networks) and its sample weight. Untrained
elements of a point are exactly 0 (parameters) or the global value (buffers), so whole-
vector rules (Krum, the norm bound) see them as unchanged. The new model is the global
one plus the combined change (buffers: the combined value); an element no device trained
keeps its value.

- ``median``, ``trimmed_mean``: coordinate-wise over the devices that trained each
  element, unweighted (Yin et al., "Byzantine-Robust Distributed Learning: Towards
  Optimal Statistical Rates", ICML 2018).
- ``krum``, ``multi_krum``: Blanchard et al., "Machine Learning with Adversaries:
  Byzantine Tolerant Gradient Descent", NeurIPS 2017.
- ``norm_bound``: each update's change clipped to a norm, then the mean (Sun et al.,
  "Can You Really Backdoor Federated Learning?", 2019).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fleetsim.registry import Registry
from fleetsim.server.aggregation import Aggregator, is_finite
from fleetsim.updates import Update


@dataclass(frozen=True)
class Point:
    """One update as a rule sees it: per float tensor its values (changes for parameters,
    values for buffers), the full-shape bool mask of trained elements, and its weight."""

    values: Mapping[str, Tensor]
    masks: Mapping[str, Tensor]
    weight: float


class _Opts(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Rule:
    """Base of the aggregation rules: combine points tensor by tensor.

    ``base`` holds, per tensor, the value of an element nobody trained (0 for parameter
    changes, the global value for buffers)."""

    Options: ClassVar[type[BaseModel]] = _Opts

    def __init__(self, options: BaseModel) -> None:
        self.options = options
        #: names of the parameters (the rest of the float tensors are buffers); set by the
        #: aggregator that uses the rule
        self.params: frozenset[str] = frozenset()

    def needs(self) -> int:
        """Fewest updates the rule is defined for (a round with fewer keeps its model)."""
        return 1

    def combine(self, points: Sequence[Point], names: Sequence[str],
                base: Mapping[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError


RULES: Registry[type[Rule]] = Registry("aggregator")


def _stack(points: Sequence[Point], k: str) -> tuple[Tensor, Tensor]:
    return (torch.stack([p.values[k] for p in points]),
            torch.stack([p.masks[k] for p in points]))


def masked_mean(points: Sequence[Point], names: Sequence[str],
                base: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``sum_k w_k m_k x_k / sum_k w_k m_k`` per element (``base`` where nobody trained)."""
    out = {}
    for k in names:
        num = torch.zeros_like(base[k])
        den = torch.zeros_like(base[k])
        for p in points:
            mw = p.masks[k].to(num.dtype) * p.weight
            num.addcmul_(p.values[k], mw)
            den.add_(mw)
        out[k] = torch.where(den > 0, num / den.clamp_min(1e-30), base[k])
    return out


@RULES.register("mean")
class Mean(Rule):
    """Masked, sample-weighted mean (FedAvg; the default).

    As ``server.aggregator`` it is the running-sum
    :class:`~fleetsim.server.aggregation.Aggregator` itself."""

    def combine(self, points: Sequence[Point], names: Sequence[str],
                base: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return masked_mean(points, names, base)


def _sorted_trained(v: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    """Per element, the trained values sorted ascending first (untrained ones after, as
    +inf: updates are finite), and how many there are."""
    return torch.sort(torch.where(m, v, torch.full_like(v, math.inf)), dim=0).values, \
        m.sum(0)


@RULES.register("median")
class Median(Rule):
    """Coordinate-wise median over the devices that trained each element (Yin et al.).

    The mean of the two middle values for an even count; unweighted (Yin et al., ICML
    2018)."""

    def combine(self, points: Sequence[Point], names: Sequence[str],
                base: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for k in names:
            s, c = _sorted_trained(*_stack(points, k))
            lo = ((c - 1).clamp_min(0) // 2).unsqueeze(0)
            hi = (c // 2).clamp_max(len(points) - 1).unsqueeze(0)
            med = (s.gather(0, lo) + s.gather(0, hi)).squeeze(0) / 2
            out[k] = torch.where(c > 0, med, base[k])
        return out


class TrimmedMeanOptions(_Opts):
    trim: float = Field(0.1, ge=0, lt=0.5, description="beta: share of each element's "
                        "values cut at each end, floor(beta*c) of the c devices that trained "
                        "it (Yin et al.'s beta; below 0.5 so that one value is left)")


@RULES.register("trimmed_mean")
class TrimmedMean(Rule):
    """Coordinate-wise beta-trimmed mean over the devices that trained each element.

    Per element, the floor(beta c) largest and smallest of the c trained values are
    dropped and the rest averaged, unweighted (Yin et al., ICML 2018)."""

    Options = TrimmedMeanOptions

    def combine(self, points: Sequence[Point], names: Sequence[str],
                base: Mapping[str, Tensor]) -> dict[str, Tensor]:
        beta = self.options.trim  # type: ignore[attr-defined]
        out = {}
        for k in names:
            s, c = _sorted_trained(*_stack(points, k))
            b = torch.floor(c.to(torch.float64) * beta).to(c.dtype)
            idx = torch.arange(len(points)).view(-1, *([1] * (s.dim() - 1)))
            keep = (idx >= b) & (idx < c - b)
            total = torch.where(keep, s, torch.zeros_like(s)).sum(0)
            n = (c - 2 * b).clamp_min(1).to(s.dtype)
            out[k] = torch.where(c > 0, total / n, base[k])
        return out


class KrumOptions(_Opts):
    f: int = Field(1, ge=0, description="Byzantine devices tolerated; Krum needs n > 2f + 2 "
                   "updates (n: training.clients_per_round, or server.buffer_size in async)")


class MultiKrumOptions(KrumOptions):
    m: int = Field(2, ge=1, description="updates selected and averaged (m <= n - f; 1 is "
                   "Krum)")


def flat(p: Point, names: Sequence[str]) -> Tensor:
    """A point as one float64 vector (the tensors of ``names`` in order)."""
    return torch.cat([p.values[k].reshape(-1).to(torch.float64) for k in names])


def krum_scores(points: Sequence[Point], names: Sequence[str], f: int) -> Tensor:
    """Krum's score of each point: the sum of its squared distances to its n - f - 2
    nearest other points (Blanchard et al., NeurIPS 2017, Sec. 4)."""
    x = torch.stack([flat(p, names) for p in points])
    sq = (x * x).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0)
    n = len(points)
    d.fill_diagonal_(math.inf)
    nearest = torch.sort(d, dim=1).values[:, :n - f - 2]
    return nearest.sum(1)


@RULES.register("multi_krum")
class MultiKrum(Rule):
    """Multi-Krum: the m updates with the lowest Krum scores, averaged as by ``mean``.

    Ties go to the lower device id (earlier in the order added); Blanchard et al., 2017."""

    Options = MultiKrumOptions

    def _m(self) -> int:
        return self.options.m  # type: ignore[attr-defined]

    def needs(self) -> int:
        f = self.options.f  # type: ignore[attr-defined]
        return max(2 * f + 3, self._m() + f)

    def select(self, points: Sequence[Point], names: Sequence[str]) -> list[int]:
        """Indices of the selected points, in the order added."""
        scores = krum_scores(points, names, self.options.f)  # type: ignore[attr-defined]
        order = torch.argsort(scores, stable=True)
        return sorted(int(i) for i in order[:self._m()])

    def combine(self, points: Sequence[Point], names: Sequence[str],
                base: Mapping[str, Tensor]) -> dict[str, Tensor]:
        chosen = self.select(points, names)
        return masked_mean([points[i] for i in chosen], names, base)


@RULES.register("krum")
class Krum(MultiKrum):
    """Krum: the one update with the lowest score (Blanchard et al., 2017)."""

    Options = KrumOptions  # type: ignore[assignment]

    def _m(self) -> int:
        return 1


class NormBoundOptions(_Opts):
    max_norm: float = Field(gt=0, description="M: each update's change is scaled to an L2 "
                            "norm of at most M before the mean")


@RULES.register("norm_bound")
class NormBound(Rule):
    """Norm bounding: each update's change scaled to an L2 norm <= M, then ``mean``.

    ``d_k min(1, M / ||d_k||)``, the norm over all its parameters (Sun et al., 2019)."""

    Options = NormBoundOptions

    def combine(self, points: Sequence[Point], names: Sequence[str],
                base: Mapping[str, Tensor]) -> dict[str, Tensor]:
        bound = self.options.max_norm  # type: ignore[attr-defined]
        clipped = []
        for p in points:
            # parameters' changes only: buffers (statistics) are values, not moves
            norm = math.sqrt(sum(float((p.values[k].to(torch.float64) ** 2).sum())
                                 for k in names if k in self.params))
            scale = min(1.0, bound / norm) if norm > 0 else 1.0
            vals = {k: (v * scale if k in self.params else v) for k, v in p.values.items()}
            clipped.append(Point(vals, p.masks, p.weight))
        return masked_mean(clipped, names, base)


# --------------------------------------------------------------------------- aggregators


def _full_masks(u: Update, names: Sequence[str]) -> dict[str, Tensor]:
    out = {}
    for k in names:
        x, m = u.state[k], u.masks.get(k)
        out[k] = torch.ones_like(x, dtype=torch.bool) if m is None else m.expand_as(x)
    return out


class CollectingAggregator(Aggregator):
    """Synchronous rounds under a rule that needs every update: :meth:`add` keeps each
    update's point, :meth:`result` combines them.

    Parameters
    ----------
    rule : the aggregation rule
    global_state : the model the round started from
    buffers : names of float buffers (combined as values, not as changes)
    """

    def __init__(self, rule: Rule, global_state: Mapping[str, Tensor],
                 buffers: Iterable[str] = ()) -> None:
        self.rule = rule
        self.global_state = global_state
        self.buffers = frozenset(buffers)
        self.names = [k for k, v in global_state.items() if v.is_floating_point()]
        self.params = frozenset(k for k in self.names if k not in self.buffers)
        self.points: list[Point] = []
        self.count = 0
        self._last = -1
        self.skipped = False  # too few updates for the rule: the model was kept
        rule.params = self.params

    def _check(self, order: int, u: Update) -> bool:
        if order <= self._last:
            raise ValueError(f"updates must be added in increasing order ({order} after "
                             f"{self._last})")
        self._last = order
        return is_finite({k: u.state[k] for k in self.names})

    def add(self, u: Update) -> bool:
        """Keep ``u``'s point; False (nothing kept) if it is not finite."""
        if not self._check(u.device, u):
            return False
        self._keep(u, self.global_state, 1.0)
        return True

    def _keep(self, u: Update, start: Mapping[str, Tensor], scale: float) -> None:
        masks = _full_masks(u, self.names)
        vals = {}
        for k in self.names:
            x = u.state[k]
            if k in self.buffers:
                vals[k] = torch.where(masks[k], x, self.global_state[k])
            else:
                d = torch.where(masks[k], x - start[k], torch.zeros_like(x))
                vals[k] = d * scale if scale != 1.0 else d
        self.points.append(Point(vals, masks, float(u.weight)))
        self.count += 1

    def trained(self) -> dict[str, Tensor]:
        out = {k: torch.zeros_like(self.global_state[k], dtype=torch.bool) for k in self.names}
        for p in self.points:
            for k in self.names:
                out[k] |= p.masks[k]
        return out

    def result(self) -> dict[str, Tensor]:
        out = dict(self.global_state)
        if len(self.points) < self.rule.needs():
            # a rule undefined for so few updates (Krum's n > 2f + 2): the round keeps the
            # model, and says so (rounds.csv's aggregation_skipped)
            self.skipped = bool(self.points)
            return out
        base = {k: (self.global_state[k] if k in self.buffers
                    else torch.zeros_like(self.global_state[k])) for k in self.names}
        comb = self.rule.combine(self.points, self.names, base)
        for k in self.names:
            out[k] = comb[k] if k in self.buffers else self.global_state[k] + comb[k]
        return out


class CollectingBuffered(CollectingAggregator):
    """Asynchronous (FedBuff) aggregation under a rule: each point is the update's change
    from its own start model, times its staleness weight (as
    :class:`~fleetsim.server.buffered.BufferedAggregator` sums them)."""

    def add(self, order: int, u: Update, start: Mapping[str, Tensor],  # type: ignore[override]
            weight_s: float) -> bool:
        if not self._check(order, u):
            return False
        self._keep(u, start, weight_s)
        return True
