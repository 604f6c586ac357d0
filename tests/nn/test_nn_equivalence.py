"""The sliced sub-network computes exactly what the masked full network computes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from nn_cases import ALL_CASES, PLAIN, TINY, batch, make, registered
from torch import Tensor

from fleetsim.nn import DroppableNet, Keep, select_channels
from fleetsim.nn.slicing import MODES


def _loss_and_grads(model: DroppableNet, x: Tensor, y: Tensor, **kw: object
                    ) -> tuple[Tensor, dict[str, Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(x, **kw)
    F.cross_entropy(out, y).backward()
    grads = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
             for n, p in model.named_parameters()}
    return out.detach(), grads


def _kept_mask(model: DroppableNet, name: str, keep: Keep) -> Tensor:
    """True on the elements of parameter ``name`` that the sub-network uses."""
    t = model.get_parameter(name)
    spec = model.specs[name]
    mask = torch.ones(t.shape, dtype=torch.bool)
    if spec.out in keep:
        rows = torch.zeros(t.shape[0], dtype=torch.bool)
        rows[keep[spec.out]] = True
        mask &= rows.view(-1, *([1] * (t.dim() - 1)))
    if spec.inp in keep:
        cols = torch.zeros(t.shape[1] // spec.inp_repeat, dtype=torch.bool)
        cols[keep[spec.inp]] = True
        cols = cols.repeat_interleave(spec.inp_repeat)
        mask &= cols.view(1, -1, *([1] * (t.dim() - 2)))
    return mask


def _random_vector(model: DroppableNet, seed: int) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(len(model.groups), generator=g) * 0.8).tolist()


@pytest.mark.parametrize("arch", registered())
def test_every_registered_model_has_a_tiny_case(arch: str) -> None:
    assert arch in TINY and arch in PLAIN


@pytest.mark.parametrize("case", ALL_CASES)
def test_zero_vector_is_exactly_the_plain_full_network(case: str) -> None:
    model = make(case)
    x, y = batch(model)
    keep = select_channels(model.groups, [0.0] * len(model.groups), "random",
                           torch.Generator().manual_seed(0))
    assert keep is None
    state = copy.deepcopy(model.state_dict())
    out, grads = _loss_and_grads(model, x, y, keep=keep)
    after = copy.deepcopy(model.state_dict())

    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    ref = PLAIN[type(model).arch](model, x)
    F.cross_entropy(ref, y).backward()
    assert torch.equal(out, ref.detach())
    for n, p in model.named_parameters():
        assert torch.equal(grads[n], p.grad), n
    for n, v in model.state_dict().items():  # BN running statistics too
        assert torch.equal(after[n], v), n


@pytest.mark.parametrize("case", ALL_CASES)
def test_keeping_every_channel_explicitly_changes_nothing(case: str) -> None:
    model = make(case)
    x, _ = batch(model)
    full = {g.name: torch.arange(g.channels) for g in model.groups}
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(model(x, full), ref)
        assert torch.equal(model(x, full, masked=True), ref)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ALL_CASES)
def test_sliced_equals_masked_outputs_and_gradients(case: str, mode: str) -> None:
    model = make(case)
    state = copy.deepcopy(model.state_dict())
    for trial in range(2):
        vector = _random_vector(model, seed=10 * trial + MODES.index(mode))
        keep = select_channels(model.groups, vector, mode, torch.Generator().manual_seed(trial),
                               offset=3 + trial)
        assert keep is not None
        x, y = batch(model, seed=trial)
        model.load_state_dict(state)
        out_s, g_s = _loss_and_grads(model, x, y, keep=keep)
        stats_s = copy.deepcopy(model.state_dict())
        model.load_state_dict(state)
        out_m, g_m = _loss_and_grads(model, x, y, keep=keep, masked=True)
        stats_m = model.state_dict()

        torch.testing.assert_close(out_s, out_m, atol=1e-5, rtol=1e-5)
        for name in g_s:
            mask = _kept_mask(model, name, keep)
            torch.testing.assert_close(g_s[name][mask], g_m[name][mask], atol=1e-5, rtol=1e-4,
                                       msg=lambda m, n=name: f"{n}: {m}")
            assert torch.count_nonzero(g_s[name][~mask]) == 0, name
        # running statistics agree on kept channels (every model with batch norm has some)
        stats = [n for n in stats_s if n.endswith(("running_mean", "running_var"))]
        assert bool(stats) == any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        for name in stats:
            mask = _kept_mask(model, name.rsplit(".", 1)[0] + ".weight", keep)
            torch.testing.assert_close(stats_s[name][mask], stats_m[name][mask], atol=1e-6,
                                       rtol=1e-5)


@pytest.mark.parametrize("case", ["cnn4", "resnet8", "resnet20"])
def test_sliced_step_leaves_dropped_bn_statistics_untouched(case: str) -> None:
    model = make(case)
    before = copy.deepcopy(model.state_dict())
    keep = select_channels(model.groups, [0.5] * len(model.groups), "random",
                           torch.Generator().manual_seed(3))
    assert keep is not None
    x, y = batch(model, n=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(x, keep), y).backward()
    opt.step()
    checked = 0
    for name, v in model.state_dict().items():
        if not name.endswith(("running_mean", "running_var")):
            continue
        kept = _kept_mask(model, name.rsplit(".", 1)[0] + ".weight", keep)
        assert torch.equal(v[~kept], before[name][~kept]), name
        assert not torch.equal(v[kept], before[name][kept]), name
        checked += 1
    assert checked > 0
    # parameters of dropped channels are untouched by the SGD step as well
    for name, p in model.named_parameters():
        kept = _kept_mask(model, name, keep)
        assert torch.equal(p.detach()[~kept], before[name][~kept]), name


def test_resnet_rescales_the_residual_stream_once() -> None:
    """With rescale on, the kept channels of a stream are scaled by C/k once, not once per
    block: in training every batch norm absorbs the scale of its input, so the classifier
    input (and the logits less the bias) is exactly C/k times the rescale-off one, up to
    batch norm's epsilon."""
    on, off = make("resnet20"), make("resnet20")
    off.rescale = False
    keep = {g.name: torch.arange(g.channels // 2) for g in on.groups}
    x, _ = batch(on, n=8)
    bias = on.head.bias.detach()
    with torch.no_grad():
        logits_on, logits_off = on(x, keep) - bias, off(x, keep) - bias
    ratio = on.group_channels["stage3"] / len(keep["stage3"])
    assert ratio == 2.0
    torch.testing.assert_close(logits_on, logits_off * ratio, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("case", ALL_CASES)
def test_leaf_mode_gradients_are_the_kept_part_of_the_full_gradients(case: str) -> None:
    """``leaves=`` (what training uses) gives the sliced path's gradients, cut to size."""
    model = make(case)
    state = copy.deepcopy(model.state_dict())
    keep = select_channels(model.groups, _random_vector(model, seed=5), "random",
                           torch.Generator().manual_seed(5))
    assert keep is not None
    x, y = batch(model, seed=5)
    out_s, g_s = _loss_and_grads(model, x, y, keep=keep)
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    leaves: dict[str, Tensor] = {}
    out_l = model(x, keep, leaves=leaves)
    F.cross_entropy(out_l, y).backward()
    assert torch.equal(out_l.detach(), out_s)
    assert leaves, "some parameter must be cut"
    for name, p in model.named_parameters():
        if name in leaves:
            assert p.grad is None, name  # nothing full-size
            assert leaves[name].shape == model.cut(name, p.detach(), keep).shape
            assert torch.equal(leaves[name].grad, model.cut(name, g_s[name], keep)), name
        else:
            assert torch.equal(p.grad, g_s[name]), name


@pytest.mark.parametrize("case", ["cnn4", "femnist_cnn", "resnet8"])
def test_cut_then_put_restores_and_put_writes_only_kept_elements(case: str) -> None:
    model = make(case)
    keep = select_channels(model.groups, [0.5] * len(model.groups), "random",
                           torch.Generator().manual_seed(1))
    assert keep is not None
    for name, p in model.named_parameters():
        t = p.detach().clone()
        sub = model.cut(name, t, keep)
        model.put(name, t, sub.neg(), keep)
        kept = _kept_mask(model, name, keep)
        assert torch.equal(t[kept], -p.detach()[kept]), name
        assert torch.equal(t[~kept], p.detach()[~kept]), name


def test_a_parameter_used_twice_gets_one_leaf_with_both_gradients() -> None:
    """Weight tying in a plugin model: both uses must reach the same leaf."""
    from fleetsim.nn import build_model

    model = build_model("mlp", (1, 4, 4), 3, {"hidden": (8, 8)})
    keep = select_channels(model.groups, [0.5, 0.5], "random", torch.Generator().manual_seed(0))
    x = torch.randn(5, 1, 4, 4)

    def twice(m: DroppableNet, leaves: dict | None = None) -> Tensor:
        m._keep, m._leaves = keep, leaves
        try:
            w = m.p("layers.1.weight")
            return (w.sum() + m.p("layers.1.weight").pow(2).sum()) * x.sum()
        finally:
            m._keep, m._leaves = None, None

    twice(model).backward()
    ref = model.cut("layers.1.weight", model.layers[1].weight.grad, keep)
    leaves: dict[str, Tensor] = {}
    twice(model, leaves).backward()
    assert torch.equal(leaves["layers.1.weight"].grad, ref)


def test_put_handles_channels_last_tensors_and_index_changes() -> None:
    from fleetsim.nn.base import _cut, _put

    t = torch.randn(4, 6, 3, 3).contiguous(memory_format=torch.channels_last)
    o, i = torch.tensor([0, 2]), torch.tensor([1, 4, 5])
    ref = t.contiguous().clone()
    ref[o[:, None], i] = 7.0
    _put(t, o, i, 1, torch.full((2, 3, 3, 3), 7.0))
    assert torch.equal(t, ref)
    u = torch.arange(24.0).view(4, 6)
    assert _cut(u, o, i, 1).tolist() == [[1, 4, 5], [13, 16, 17]]
    i[0] = 0  # the same index tensor changed in place: no stale cached blocks
    assert _cut(u, o, i, 1).tolist() == [[0, 4, 5], [12, 16, 17]]
