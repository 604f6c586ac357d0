"""The training step: SGD on the kept elements equals masked full-size SGD, bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

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
