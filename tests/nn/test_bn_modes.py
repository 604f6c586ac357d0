"""Batch-norm statistics (``bn_stats``): running, batch and static, against hand-computed
statistics (plain tensor ops, never the model's own batch norm)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fleetsim.nn import DroppableNet, Group, build_model
from fleetsim.nn.models import add_bn

EPS = 1e-5


class OneBN(DroppableNet):
    """Input (N, 3, 2, 2) -> one batch norm (group ``c``, 3 channels) -> the output."""

    arch = "one-bn"

    def __init__(self, bn_stats: str) -> None:
        super().__init__()
        self.bn_stats = bn_stats
        self.input_shape, self.num_classes = (3, 2, 2), 12
        self.groups = (Group("c", 3),)
        self.specs = {}
        add_bn(self, self, "norm", "norm", 3, "c")
        with torch.no_grad():
            self.norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
            self.norm.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
        self.finish_init()

    def functional(self, x: Tensor) -> Tensor:
        return self.bn(x, "norm")


def _by_hand(x: Tensor, mean: Tensor, var: Tensor, m: OneBN) -> Tensor:
    """Normalise ``x`` with the given per-channel statistics, then scale and shift."""
    def c(t: Tensor) -> Tensor:  # per channel, broadcast over (N, C, H, W)
        return t.detach().view(1, -1, 1, 1)

    w, b = m.norm.weight, m.norm.bias
    return (x - c(mean)) / torch.sqrt(c(var) + EPS) * c(w) + c(b)


def _stats(x: Tensor, unbiased: bool) -> tuple[Tensor, Tensor]:
    """Per-channel mean and variance of (N, C, H, W) by plain arithmetic."""
    v = x.transpose(0, 1).reshape(x.shape[1], -1)
    n = v.shape[1]
    mean = v.sum(1) / n
    var = ((v - mean[:, None]) ** 2).sum(1) / (n - 1 if unbiased else n)
    return mean, var


X_TEST = torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2) ** 1.5 / 10


def test_batch_mode_tracks_nothing_and_normalises_with_the_test_batch() -> None:
    m = OneBN("batch")
    assert m.norm.running_mean is None and m.norm.running_var is None
    assert not any("running" in k for k in m.state_dict())
    m.eval()
    out = m(X_TEST)
    mean, var = _stats(X_TEST, unbiased=False)
    assert torch.allclose(out, _by_hand(X_TEST, mean, var, m), atol=1e-5)
    # the statistics are the batch's own: another batch gives another normalisation
    assert torch.allclose(m(X_TEST[:1]), _by_hand(X_TEST[:1], *_stats(X_TEST[:1], False), m),
                          atol=1e-5)


@pytest.mark.parametrize("arch,opts,shape", [
    ("cnn4", {"channels": (4, 6, 8, 8), "norm": "bn"}, (1, 8, 8)),
    ("resnet8", {"width": 0.5}, (3, 8, 8)),
])
def test_batch_mode_models_have_no_running_statistics(arch: str, opts: dict, shape: tuple
                                                      ) -> None:
    torch.manual_seed(0)
    m = build_model(arch, shape, 5, {**opts, "bn_stats": "batch"})
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
    assert bns and all(b.running_mean is None for b in bns)
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(1))
    m.eval()
    # evaluation is batch-statistics: the same bits as a training-mode pass
    ev = m(x)
    m.train()
    assert torch.equal(ev, m(x))
    # and a sliced sub-network runs (sliced weights, batch statistics of its channels)
    keep = {g.name: torch.arange(max(1, g.channels // 2)) for g in m.groups}
    m.eval()
    assert m(x, keep).shape == (6, 5)


def test_running_mode_evaluates_with_the_buffers() -> None:
    m = OneBN("running")
    with torch.no_grad():
        m.norm.running_mean.copy_(torch.tensor([1.0, -2.0, 3.0]))
        m.norm.running_var.copy_(torch.tensor([4.0, 0.25, 9.0]))
    m.eval()
    out = m(X_TEST)
    assert torch.allclose(out, _by_hand(X_TEST, m.norm.running_mean, m.norm.running_var, m),
                          atol=1e-6)
    # training updates the buffers with momentum 0.1 towards the batch statistics
    m.train()
    before_m, before_v = m.norm.running_mean.clone(), m.norm.running_var.clone()
    m(X_TEST)
    mean, var = _stats(X_TEST, unbiased=True)
    assert torch.allclose(m.norm.running_mean, 0.9 * before_m + 0.1 * mean, atol=1e-6)
    assert torch.allclose(m.norm.running_var, 0.9 * before_v + 0.1 * var, atol=1e-6)


def test_static_mode_trains_on_batch_statistics_and_tracks_nothing_in_training() -> None:
    m = OneBN("static")
    m.train()
    out = m(X_TEST)
    assert torch.allclose(out, _by_hand(X_TEST, *_stats(X_TEST, False), m), atol=1e-5)
    assert torch.equal(m.norm.running_mean, torch.zeros(3))
    assert torch.equal(m.norm.running_var, torch.ones(3))
    assert int(m.norm.num_batches_tracked) == 0


def test_static_mode_recomputes_the_cumulative_average_and_evaluates_with_it() -> None:
    m = OneBN("static")
    g = torch.Generator().manual_seed(3)
    train = torch.randn(7, 3, 2, 2, generator=g) * 2 + 1
    batches = [train[:3], train[3:6], train[6:]]
    with torch.no_grad():  # stale values that the recomputation must replace
        m.norm.running_mean.fill_(5.0)
        m.norm.running_var.fill_(7.0)
        m.norm.num_batches_tracked.fill_(5)
    m.recompute_bn_stats(iter(batches))
    assert not m.training
    # HeteroFL's momentum=None: the mean over batches of each batch's mean and unbiased var
    means = torch.stack([_stats(b, unbiased=True)[0] for b in batches])
    vars_ = torch.stack([_stats(b, unbiased=True)[1] for b in batches])
    assert torch.allclose(m.norm.running_mean, means.mean(0), atol=1e-6)
    assert torch.allclose(m.norm.running_var, vars_.mean(0), atol=1e-5)
    assert m.norm.momentum == 0.1  # restored
    out = m(X_TEST)
    assert torch.allclose(out, _by_hand(X_TEST, means.mean(0), vars_.mean(0), m), atol=1e-5)


def _static_trainer():  # type: ignore[no-untyped-def]
    from fleetsim.build import load_scenario, trainer_settings
    from fleetsim.training import Trainer
    from tests.conftest import TINY

    sc = load_scenario(None, ["model.arch=cnn4", "model.options={channels: [2, 3, 4, 4], "
                              "norm: bn, bn_stats: static}", "eval.batch_size=300"],
                       text=TINY)
    return Trainer(trainer_settings(sc))


def test_trainer_evaluate_recomputes_static_statistics_on_the_training_set() -> None:
    t = _static_trainer()
    state = t.initial_state()
    # a global state whose statistics are nonsense: evaluation must not use them
    state = {k: (torch.full_like(v, 50.0) if "running" in k else v) for k, v in state.items()}
    acc, loss = t.evaluate(state)
    conv = t.model.convs[0]
    x = t.data.x_train
    assert len(x) > 300  # several batches, the last one shorter
    batches = [x[lo:lo + 300] for lo in range(0, len(x), 300)]
    stats = [_stats(F.conv2d(b, conv.weight, conv.bias, padding=1), unbiased=True)
             for b in batches]
    mean = torch.stack([s[0] for s in stats]).mean(0)
    var = torch.stack([s[1] for s in stats]).mean(0)
    assert torch.allclose(t.model.bns[0].running_mean, mean, atol=1e-5)
    assert torch.allclose(t.model.bns[0].running_var, var, rtol=1e-4, atol=1e-6)
    # the global state is untouched, and evaluating again gives the same numbers
    assert all(torch.all(v == 50.0) for k, v in state.items() if "running" in k)
    assert t.evaluate(state) == (acc, loss)


def test_trainer_evaluate_leaves_running_mode_statistics_alone() -> None:
    from fleetsim.build import load_scenario, trainer_settings
    from fleetsim.training import Trainer
    from tests.conftest import TINY

    sc = load_scenario(None, ["model.arch=cnn4", "model.options={channels: [2, 3, 4, 4], "
                              "norm: bn}"], text=TINY)
    t = Trainer(trainer_settings(sc))
    state = t.initial_state()
    state = {k: (torch.full_like(v, 3.0) if "running" in k else v) for k, v in state.items()}
    t.evaluate(state)
    assert torch.all(t.model.bns[0].running_mean == 3.0)


def test_bn_stats_needs_batch_norm() -> None:
    from fleetsim.errors import UserError

    with pytest.raises(UserError, match="bn_stats"):
        build_model("cnn4", (1, 8, 8), 5, {"bn_stats": "static"})
