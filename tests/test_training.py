"""The training step: SGD on the kept elements equals masked full-size SGD, bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fleetsim.build import trainer_settings
from fleetsim.nn import build_model, select_channels
from fleetsim.training import sgd_update


def _kept(model: torch.nn.Module, name: str, keep: dict) -> torch.Tensor:
    """True on the elements of parameter ``name`` in sub-network ``keep``."""
    p = model.get_parameter(name)
    m = torch.zeros_like(p, dtype=torch.bool)
    model.put(name, m, torch.ones_like(model.cut(name, m, keep)), keep)  # type: ignore[operator]
    return m


def _masked_reference(model: torch.nn.Module, keep: dict, lr: float, mom: float, wd: float,
                      bufs: dict[str, torch.Tensor]) -> None:
    """Full-size SGD on full-size gradients (zero outside the sub-network) where weight
    decay and momentum are masked to the trained elements (plain SGD for a tensor the
    sub-network keeps whole)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            m = _kept(model, name, keep)
            if bool(m.all()):
                g = p.grad.add(p, alpha=wd)
                p.add_(bufs[name].mul_(mom).add_(g), alpha=-lr)
                continue
            g = p.grad + wd * p * m
            bufs[name].copy_(torch.where(m, bufs[name] * mom + g, bufs[name]))
            p.add_(bufs[name] * m, alpha=-lr)


@pytest.mark.parametrize("arch", ["cnn4", "femnist_cnn"])
def test_sub_network_sgd_equals_masked_full_size_sgd(arch: str) -> None:
    torch.manual_seed(0)
    opts = {"channels": (4, 8, 8, 8), "norm": "bn"} if arch == "cnn4" else \
        {"channels": (4, 8), "hidden": 16}
    model = build_model(arch, (1, 12, 12), 5, opts).train()
    ref = copy.deepcopy(model)
    lr, mom, wd = 0.1, 0.9, 1e-3
    bufs = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    ref_bufs = copy.deepcopy(bufs)
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(1)
    for step in range(4):
        x, y = torch.randn(6, 1, 12, 12), torch.randint(0, 5, (6,))
        keep = select_channels(model.groups, [0.5, 0.25, 0.0, 0.5][:len(model.groups)],
                               "random", gen)
        for p in params.values():
            p.grad = None
        leaves: dict[str, torch.Tensor] = {}
        F.cross_entropy(model(x, keep, leaves=leaves), y).backward()
        sgd_update(model, params, keep, leaves, lr, mom, wd, bufs)

        ref.zero_grad(set_to_none=True)
        F.cross_entropy(ref(x, keep), y).backward()
        _masked_reference(ref, keep, lr, mom, wd, ref_bufs)
        for k, v in ref.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), (step, k)
        for k in bufs:
            assert torch.equal(bufs[k], ref_bufs[k]), (step, k)


# -- FedProx: the proximal term's gradient, against a hand-written step --------------------

PROX_LR, PROX_MU = 0.2, 1.0


def _prox_trainer(hidden: int = 8):  # type: ignore[no-untyped-def]
    """A trainer whose device 0 holds 8 known samples and trains on all 8 per mini-batch
    (batch 8), so every step's gradient is that of the same plain loss."""
    import numpy as np

    from fleetsim.build import load_scenario
    from fleetsim.data import Partition
    from fleetsim.training import Trainer
    from tests.conftest import TINY

    sc = load_scenario(None, [f"model.options.hidden=[{hidden}]", "training.batch_size=8",
                              f"training.optimizer.lr={PROX_LR}"], text=TINY)
    t = Trainer(trainer_settings(sc))
    own = np.array([3, 17, 40, 41, 99, 250, 512, 700], dtype=np.int64)
    t.partition = Partition(own, np.array([0, len(own)], dtype=np.int64))
    return t, torch.from_numpy(own)


def _plain_loss(w: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                kept: int, hidden: int) -> torch.Tensor:
    """The MLP's loss written out: hidden units ``:kept`` only, scaled by hidden / kept."""
    h = torch.relu(x.flatten(1) @ w["layers.0.weight"][:kept].T + w["layers.0.bias"][:kept])
    h = h * (hidden / kept)
    return F.cross_entropy(h @ w["head.weight"][:, :kept].T + w["head.bias"], y)


def _by_hand(w0: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, steps: int,
             mu: float, kept: int, hidden: int) -> dict[str, torch.Tensor]:
    """``steps`` steps of w <- w - lr (g + mu (w - w0)) on the elements the sub-network
    with the leading ``kept`` hidden units holds; g from autograd on the plain loss."""
    sub = {"layers.0.weight": (slice(0, kept),), "layers.0.bias": (slice(0, kept),),
           "head.weight": (slice(None), slice(0, kept)), "head.bias": (slice(None),)}
    w = {k: v.clone() for k, v in w0.items()}
    for _ in range(steps):
        leaves = {k: v.clone().requires_grad_() for k, v in w.items()}
        g = dict(zip(leaves, torch.autograd.grad(_plain_loss(leaves, x, y, kept, hidden),
                                                 list(leaves.values()))))
        for k, s in sub.items():
            w[k][s] = w[k][s] - PROX_LR * (g[k][s] + mu * (w[k][s] - w0[k][s]))
    return w


@pytest.mark.parametrize(("vector", "kept"), [((0.0,), 8), ((0.5,), 4)])
def test_fedprox_step_is_w_minus_lr_times_grad_plus_mu_times_distance(
        vector: tuple[float, ...], kept: int) -> None:
    """From step 2 on, w != w_global: each step must be w - lr (g + mu (w - w_global)),
    on the kept elements only (elements outside the sub-network never move)."""
    from fleetsim.training import UpdateJob

    t, own = _prox_trainer()
    w0 = {k: v for k, v in t.initial_state().items()}
    x, y = t.data.x_train[own], t.data.y_train[own]
    steps = 3
    results = {}
    for mu in (0.0, PROX_MU):
        job = UpdateJob(0, 0, 1.0, (vector,), (0,) * steps, mode="ordered", prox_mu=mu)
        got = t.train(w0, job).update.state
        want = _by_hand(w0, x, y, steps, mu, kept, 8)
        for k in want:
            torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5,
                                       msg=lambda m, k=k, mu=mu: f"mu={mu} {k}: {m}")
        results[mu] = got
    # the proximal term moved the weights by far more than the tolerance
    moved = max(float((results[PROX_MU][k] - results[0.0][k]).abs().max()) for k in w0)
    assert moved > 1e-3
    if kept < 8:  # dropped hidden units: their weights are exactly the global ones
        for mu, got in results.items():
            assert torch.equal(got["layers.0.weight"][kept:], w0["layers.0.weight"][kept:]), mu
            assert torch.equal(got["head.weight"][:, kept:], w0["head.weight"][:, kept:]), mu
