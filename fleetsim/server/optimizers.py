"""Server optimizers: FedAvgM, FedAdam, FedYogi, FedAdagrad on the aggregated pseudo-gradient.

The aggregator gives the server a new model, the aggregate. The server optimizer treats
``delta = aggregate - global`` as a pseudo-gradient (a step direction, not a loss gradient:
it points the way the devices moved) and decides how far to go (Reddi et al., "Adaptive
Federated Optimization", ICLR 2021, Algorithms 1 and 2; FedAvgM: Hsu, Qi and Brown,
arXiv 1909.06335, 2019). ``sgd`` with lr 1 is FedAvg: the aggregate itself, bit for bit.

What fleetsim does where the paper leaves a choice (docs/server_optimizers.md gives the
sources and how Flower and FedScale differ):

- the update rules are those of Algorithm 2 as printed, with **no bias correction** of
  ``m`` or ``v``;
- the second moment starts at ``v_{-1} = tau^2``, the smallest value Algorithm 2's
  initialisation allows (``v_{-1} >= tau^2``); ``m_{-1} = 0``;
- ``adagrad`` keeps Algorithm 2's first moment (``beta1``); set ``betas: [0, ...]`` for the
  momentum-free Adagrad of the authors' code (Keras Adagrad) and of Flower;
- elements that no device trained in this aggregation (sub-model updates) keep their value
  and their optimizer state: their moments are neither decayed nor fed a zero
  pseudo-gradient, since a zero there would mean "the devices agreed not to move", which
  is not what happened;
- float buffers (batch-norm running statistics) are statistics, not weights: they take the
  aggregate as it is. Non-float tensors (``num_batches_tracked``) are copied from it.

Optimizer state is allocated at the first step, full size, in each parameter's dtype. No
randomness anywhere, and elementwise operations only, so a step gives the same bits for
the same inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from fleetsim.config import ServerOptimizerConfig
from fleetsim.registry import Registry

__all__ = [
    "SERVER_OPTIMIZERS",
    "ServerAdagrad",
    "ServerAdam",
    "ServerMomentum",
    "ServerOptimizer",
    "ServerSGD",
    "ServerYogi",
    "make_server_optimizer",
]


class ServerOptimizer:
    """Base class: the bookkeeping (buffers, non-float tensors, masks, lazy state).

    Subclasses implement :meth:`_update`, which sees one float parameter at a time.

    Parameters
    ----------
    cfg : the scenario's ``server.optimizer`` section (name, lr, betas, tau)
    buffers : names of float buffers (batch-norm running statistics); they take the
        aggregate unchanged
    """

    def __init__(self, cfg: ServerOptimizerConfig, buffers: Iterable[str] = ()) -> None:
        self.lr = float(cfg.lr)
        self.beta1, self.beta2 = (float(b) for b in cfg.betas)
        self.tau = float(cfg.tau)
        self.buffers = frozenset(buffers)
        #: per parameter name, its state tensors by slot name ("m", "v"); filled lazily
        self.state: dict[str, dict[str, Tensor]] = {}

    def step(self, global_state: Mapping[str, Tensor], aggregate: Mapping[str, Tensor],
             trained: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The new global state.

        Parameters
        ----------
        global_state : the model the aggregation started from
        aggregate : what the aggregator made of the updates (same names and shapes)
        trained : per float tensor name, a bool mask (broadcastable to the tensor) of the
            elements that some device trained in this aggregation; a name that is absent
            counts as trained everywhere. Untrained elements keep their value and their
            optimizer state.

        Returns
        -------
        dict : name -> tensor, in the aggregate's order. Buffers and non-float tensors are
            the aggregate's own tensor objects.
        """
        out: dict[str, Tensor] = {}
        for k, a in aggregate.items():
            if not a.is_floating_point() or k in self.buffers:
                out[k] = a
                continue
            x = global_state[k]
            if x.shape != a.shape:
                raise ValueError(f"server optimizer: {k!r} has shape {tuple(a.shape)} in the "
                                 f"aggregate but {tuple(x.shape)} in the global model")
            mask = trained.get(k)
            if mask is not None:
                mask = mask.to(dtype=torch.bool, device=a.device)
            out[k] = self._update(k, x, a, mask)
        return out

    def _update(self, k: str, x: Tensor, a: Tensor, mask: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _slot(self, k: str, slot: str, like: Tensor, fill: float = 0.0) -> Tensor:
        """State tensor ``slot`` of parameter ``k``, created full size on first use."""
        slots = self.state.setdefault(k, {})
        if slot not in slots:
            slots[slot] = torch.full_like(like, fill)
        elif slots[slot].shape != like.shape:
            raise ValueError(f"server optimizer: {k!r} changed shape from "
                             f"{tuple(slots[slot].shape)} to {tuple(like.shape)}")
        return slots[slot]

    @staticmethod
    def _keep(mask: Tensor | None, new: Tensor, old: Tensor) -> Tensor:
        """``new`` where trained, ``old`` elsewhere (``new`` everywhere without a mask)."""
        return new if mask is None else torch.where(mask, new, old)


class ServerSGD(ServerOptimizer):
    """``x + lr * delta``; with lr 1 the aggregate itself (FedAvg), bit for bit."""

    def _update(self, k: str, x: Tensor, a: Tensor, mask: Tensor | None) -> Tensor:
        if self.lr == 1.0:
            # FedAvg must stay the same bits as before server optimizers existed:
            # x + 1.0 * (a - x) can differ from a in the last place. The aggregator
            # already leaves untrained elements at the global value.
            return a
        return self._keep(mask, x + self.lr * (a - x), x)


class ServerMomentum(ServerOptimizer):
    """FedAvgM (Hsu et al. 2019): ``m = beta1 * m + delta``; ``x + lr * m``.

    The momentum is not damped by ``1 - beta1``, so once ``m`` has built up under a steady
    pseudo-gradient the step is about ``lr / (1 - beta1)`` times it.
    """

    def _update(self, k: str, x: Tensor, a: Tensor, mask: Tensor | None) -> Tensor:
        delta = a - x
        m_old = self._slot(k, "m", x)
        m = self._keep(mask, self.beta1 * m_old + delta, m_old)
        self.state[k]["m"] = m
        return self._keep(mask, x + self.lr * m, x)


class _Adaptive(ServerOptimizer):
    """Reddi et al. Algorithm 2: ``m = b1 m + (1 - b1) delta``; ``v`` by :meth:`_second`;
    ``x + lr * m / (sqrt(v) + tau)``; ``m_{-1} = 0``, ``v_{-1} = tau^2``; no bias correction.
    """

    def _second(self, v: Tensor, d2: Tensor) -> Tensor:
        raise NotImplementedError

    def _update(self, k: str, x: Tensor, a: Tensor, mask: Tensor | None) -> Tensor:
        delta = a - x
        m_old = self._slot(k, "m", x)
        v_old = self._slot(k, "v", x, self.tau * self.tau)
        m = self._keep(mask, self.beta1 * m_old + (1.0 - self.beta1) * delta, m_old)
        v = self._keep(mask, self._second(v_old, delta * delta), v_old)
        self.state[k]["m"] = m
        self.state[k]["v"] = v
        return self._keep(mask, x + self.lr * m / (v.sqrt() + self.tau), x)


class ServerAdam(_Adaptive):
    """FedAdam: ``v = b2 v + (1 - b2) delta^2``."""

    def _second(self, v: Tensor, d2: Tensor) -> Tensor:
        return self.beta2 * v + (1.0 - self.beta2) * d2


class ServerYogi(_Adaptive):
    """FedYogi: ``v = v - (1 - b2) delta^2 sign(v - delta^2)`` (additive, so ``v`` moves at
    most ``(1 - b2) delta^2`` per step and stays positive from ``v_{-1} = tau^2``)."""

    def _second(self, v: Tensor, d2: Tensor) -> Tensor:
        return v - (1.0 - self.beta2) * d2 * torch.sign(v - d2)


class ServerAdagrad(_Adaptive):
    """FedAdagrad: ``v = v + delta^2`` (``beta2`` unused)."""

    def _second(self, v: Tensor, d2: Tensor) -> Tensor:
        return v + d2


SERVER_OPTIMIZERS: Registry[type[ServerOptimizer]] = Registry("server optimizer")
SERVER_OPTIMIZERS.add("sgd", ServerSGD)
SERVER_OPTIMIZERS.add("momentum", ServerMomentum)
SERVER_OPTIMIZERS.add("adam", ServerAdam)
SERVER_OPTIMIZERS.add("yogi", ServerYogi)
SERVER_OPTIMIZERS.add("adagrad", ServerAdagrad)


def make_server_optimizer(cfg: ServerOptimizerConfig,
                          buffers: Iterable[str] = ()) -> ServerOptimizer:
    """The server optimizer ``cfg.name`` names, built from ``cfg``.

    An unknown name is a :class:`~fleetsim.errors.UserError` that lists the known ones.
    """
    cls = SERVER_OPTIMIZERS.get(cfg.name, key_path="server.optimizer.name")
    return cls(cfg, buffers)
