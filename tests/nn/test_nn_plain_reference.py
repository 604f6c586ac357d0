"""The sliced sub-network against an independent reference: plain ``torch.nn`` modules.

``test_nn_equivalence`` compares the sliced path with the masked path, but both run the
same ``functional()``: a wrong rescale, a ``drop`` in the wrong place or a missing one would
be wrong in both and pass. Here every architecture is written out again as a textbook
PyTorch module (``nn.Conv2d``, ``nn.Linear``, ``nn.BatchNorm2d``, called directly), the
dropped filters of the sub-network are removed from it by *zeroing their weights* (and
their batch norm's affine parameters, so a dropped channel stays exactly zero), and the
kept activations are scaled by C/k (kept share 1/(1-d), with k the kept count) wherever a
group's channels leave their layer: after its activation (and pooling), and in a ResNet
on every tensor entering a residual stream, never on the sum. Which parameter rows and
columns belong to which group is written out here too, not read from the model's specs.

Outputs, the gradients of the kept weights and the kept batch-norm statistics of the
sliced sub-network (in the leaf mode that training uses) must match the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from nn_cases import ALL_CASES, TINY, VARIANTS, batch, make
from torch import Tensor, nn

from fleetsim.nn import DroppableNet, Keep, select_channels
from fleetsim.nn.slicing import MODES

# name -> (row group, column group, columns per column channel): which channels of which
# group index dim 0 and dim 1 of each parameter or buffer
Layout = dict[str, tuple[str | None, str | None, int]]


def _options(case: str) -> tuple[str, tuple[int, ...], int, dict[str, Any]]:
    arch, extra = VARIANTS.get(case, (case, {}))
    shape, classes, opts = TINY[arch]
    return arch, shape, classes, {**opts, **extra}


class _Unit(nn.Module):
    """A bias-free convolution and its batch norm (a ResNet's conv-BN pair)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class Reference(nn.Module):
    """A plain PyTorch model with the parameter names of the fleetsim model it mirrors.

    ``scale[g]`` multiplies group g's activations where they leave their layer (C/k for a
    dropped group with rescaling on, 1 otherwise); ``layout`` says which group indexes
    which dimension of each tensor.
    """

    layout: Layout
    scale: dict[str, float]

    def run(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def s(self, group: str) -> float:
        return self.scale.get(group, 1.0)


class PlainMLP(Reference):
    def __init__(self, shape: tuple[int, ...], classes: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        d_in = 1
        for s in shape:
            d_in *= s
        widths = [d_in, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(widths))
        self.head = nn.Linear(widths[-1], classes)
        self.groups = [f"h{i}" for i in range(len(hidden))]
        self.layout = {}
        for i, g in enumerate(self.groups):
            prev = self.groups[i - 1] if i else None
            self.layout[f"layers.{i}.weight"] = (g, prev, 1)
            self.layout[f"layers.{i}.bias"] = (g, None, 1)
        self.layout["head.weight"] = (None, self.groups[-1], 1)
        self.layout["head.bias"] = (None, None, 1)

    def run(self, x: Tensor) -> Tensor:
        h = x.flatten(1)
        for layer, g in zip(self.layers, self.groups):
            h = F.relu(layer(h)) * self.s(g)
        return self.head(h)


class PlainCNN4(Reference):
    def __init__(self, shape: tuple[int, ...], classes: int, channels: tuple[int, ...],
                 norm: str) -> None:
        super().__init__()
        cin, h, w = shape
        self.use_bn = norm == "bn"
        widths = [cin, *channels]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1)
                                   for a, b in pairwise(widths))
        self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in channels) if self.use_bn \
            else nn.ModuleList()
        hw = (h // 4) * (w // 4)
        self.head = nn.Linear(channels[-1] * hw, classes)
        self.groups = [f"c{i}" for i in range(4)]
        self.layout = {}
        for i, g in enumerate(self.groups):
            prev = self.groups[i - 1] if i else None
            self.layout[f"convs.{i}.weight"] = (g, prev, 1)
            self.layout[f"convs.{i}.bias"] = (g, None, 1)
            if self.use_bn:
                for n in ("weight", "bias", "running_mean", "running_var"):
                    self.layout[f"bns.{i}.{n}"] = (g, None, 1)
        self.layout["head.weight"] = (None, "c3", hw)
        self.layout["head.bias"] = (None, None, 1)

    def run(self, x: Tensor) -> Tensor:
        h = x
        for i, g in enumerate(self.groups):
            h = self.convs[i](h)
            if self.use_bn:
                h = self.bns[i](h)
            h = F.relu(h)
            if i % 2 == 1:
                h = F.max_pool2d(h, 2)
            h = h * self.s(g)
        return self.head(h.flatten(1))


class PlainTwoConv(Reference):
    """femnist_cnn and mcmahan_cnn: conv5x5, pool, conv5x5, pool, dense, classifier."""

    def __init__(self, shape: tuple[int, ...], classes: int, channels: tuple[int, int],
                 hidden: int) -> None:
        super().__init__()
        cin, h, w = shape
        c1, c2 = channels
        self.conv1 = nn.Conv2d(cin, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
        hw = (h // 4) * (w // 4)
        self.fc1 = nn.Linear(c2 * hw, hidden)
        self.head = nn.Linear(hidden, classes)
        self.layout = {
            "conv1.weight": ("conv1", None, 1), "conv1.bias": ("conv1", None, 1),
            "conv2.weight": ("conv2", "conv1", 1), "conv2.bias": ("conv2", None, 1),
            "fc1.weight": ("fc1", "conv2", hw), "fc1.bias": ("fc1", None, 1),
            "head.weight": (None, "fc1", 1), "head.bias": (None, None, 1),
        }

    def run(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2) * self.s("conv1")
        h = F.max_pool2d(F.relu(self.conv2(h)), 2) * self.s("conv2")
        h = F.relu(self.fc1(h.flatten(1))) * self.s("fc1")
        return self.head(h)


class PlainResNet(Reference):
    """He et al. 2016, 4.2: stem, three stages of n basic blocks, projection shortcuts
    where a stage starts (stride 2 from stage 2 on), global average pooling.

    Groups: the residual stream of stage s is ``stage{s}`` (stem or previous stage's
    stream in, block outputs and projections out), the first convolution of block b of
    stage s is ``stage{s}.block{b}``.
    """

    def __init__(self, shape: tuple[int, ...], classes: int, n: int, width: float) -> None:
        super().__init__()
        widths = [max(1, round(c * width)) for c in (16, 32, 64)]
        self.layout = {}
        self.stem = _Unit(shape[0], widths[0], 3, 1)
        self._unit_layout("stem", "stage1", None)
        self.blocks = nn.ModuleList()
        self.plan: list[tuple[str, str, bool]] = []  # (inner group, stream group, projects)
        prev_c, prev_g = widths[0], "stage1"
        for s, c in enumerate(widths, start=1):
            stream = f"stage{s}"
            for b in range(n):
                k = len(self.blocks)
                stride = 2 if (s > 1 and b == 0) else 1
                project = s > 1 and b == 0
                inner = f"{stream}.block{b}"
                blk = nn.Module()
                blk.conv1 = _Unit(prev_c, c, 3, stride)
                blk.conv2 = _Unit(c, c, 3, 1)
                self._unit_layout(f"blocks.{k}.conv1", inner, prev_g)
                self._unit_layout(f"blocks.{k}.conv2", stream, inner)
                if project:
                    blk.shortcut = _Unit(prev_c, c, 1, stride)
                    self._unit_layout(f"blocks.{k}.shortcut", stream, prev_g)
                self.blocks.append(blk)
                self.plan.append((inner, stream, project))
                prev_c, prev_g = c, stream
        self.head = nn.Linear(prev_c, classes)
        self.layout["head.weight"] = (None, prev_g, 1)
        self.layout["head.bias"] = (None, None, 1)

    def _unit_layout(self, name: str, out: str, inp: str | None) -> None:
        self.layout[f"{name}.conv.weight"] = (out, inp, 1)
        for n in ("weight", "bias", "running_mean", "running_var"):
            self.layout[f"{name}.bn.{n}"] = (out, None, 1)

    def run(self, x: Tensor) -> Tensor:
        h = F.relu(self.stem(x)) * self.s("stage1")
        for blk, (inner, stream, project) in zip(self.blocks, self.plan):
            t = F.relu(blk.conv1(h)) * self.s(inner)
            t = blk.conv2(t) * self.s(stream)
            if project:
                h = blk.shortcut(h) * self.s(stream)
            h = F.relu(t + h)
        return self.head(h.mean((2, 3)))


def build_reference(case: str) -> Reference:
    arch, shape, classes, o = _options(case)
    builders: dict[str, Callable[[], Reference]] = {
        "mlp": lambda: PlainMLP(shape, classes, tuple(o["hidden"])),
        "cnn4": lambda: PlainCNN4(shape, classes, tuple(o["channels"]), o.get("norm", "none")),
        "femnist_cnn": lambda: PlainTwoConv(shape, classes, tuple(o["channels"]), o["hidden"]),
        "mcmahan_cnn": lambda: PlainTwoConv(shape, classes, tuple(o["channels"]), o["hidden"]),
        "resnet8": lambda: PlainResNet(shape, classes, 1, o["width"]),
        "resnet20": lambda: PlainResNet(shape, classes, 3, o["width"]),
    }
    return builders[arch]()


def _rows_cols(t: Tensor, layout: tuple[str | None, str | None, int], keep: Keep
               ) -> tuple[Tensor, Tensor | None]:
    """Kept row indices and (for dim >= 2) kept column indices of tensor ``t``."""
    out, inp, repeat = layout
    rows = keep[out] if out in keep else torch.arange(t.shape[0])
    if t.dim() < 2:
        return rows, None
    if inp in keep:
        cols = (keep[inp][:, None] * repeat + torch.arange(repeat)).reshape(-1)
    else:
        cols = torch.arange(t.shape[1])
    return rows, cols


def _kept_part(t: Tensor, layout: tuple[str | None, str | None, int], keep: Keep) -> Tensor:
    rows, cols = _rows_cols(t, layout, keep)
    t = t.index_select(0, rows)
    return t if cols is None else t.index_select(1, cols)


def reference_for(model: DroppableNet, case: str, keep: Keep) -> Reference:
    """The plain model with ``model``'s weights, dropped filters zeroed, and C/k scales."""
    ref = build_reference(case)
    ref.load_state_dict(model.state_dict())  # strict: same names, same shapes
    ref.train(model.training)
    full_channels = {}
    with torch.no_grad():
        for name, p in ref.named_parameters():
            out, _, _ = ref.layout[name]
            if out is None:
                continue
            full_channels[out] = p.shape[0]
            if out in keep:
                dropped = torch.ones(p.shape[0], dtype=torch.bool)
                dropped[keep[out]] = False
                p[dropped] = 0.0  # the filter (and its BN gamma and beta) is gone
    ref.scale = {g: full_channels[g] / len(idx) for g, idx in keep.items()} \
        if model.rescale else {}
    return ref


def _vector(model: DroppableNet, trial: int) -> list[float]:
    g = torch.Generator().manual_seed(100 + trial)
    if trial == 0:  # every group drops something
        return (0.25 + 0.5 * torch.rand(len(model.groups), generator=g)).tolist()
    return (torch.rand(len(model.groups), generator=g) * 0.8).tolist()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ALL_CASES)
def test_sliced_sub_network_equals_plain_torch_with_dropped_filters_zeroed(
        case: str, mode: str) -> None:
    for trial in range(2):
        model = make(case, seed=trial)
        keep = select_channels(model.groups, _vector(model, trial), mode,
                               torch.Generator().manual_seed(trial), offset=3 + trial)
        assert keep is not None
        if trial == 0:
            assert set(keep) == {g.name for g in model.groups}
        ref = reference_for(model, case, keep)
        assert set(ref.layout) == set(model.state_dict()) - {
            k for k in model.state_dict() if k.endswith("num_batches_tracked")}
        x, y = batch(model, n=4, seed=trial)

        leaves: dict[str, Tensor] = {}
        out = model(x, keep, leaves=leaves)
        F.cross_entropy(out, y).backward()
        ref_out = ref.run(x)
        F.cross_entropy(ref_out, y).backward()

        torch.testing.assert_close(out.detach(), ref_out.detach(), atol=1e-5, rtol=1e-5)
        ref_params = dict(ref.named_parameters())
        checked = 0
        for name, p in model.named_parameters():
            want = _kept_part(ref_params[name].grad, ref.layout[name], keep)
            got = leaves[name].grad if name in leaves else p.grad
            assert got is not None, name
            assert got.shape == want.shape, name  # physically the sub-network's size
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4,
                                       msg=lambda m, n=name: f"{case} {mode} {n}: {m}")
            checked += 1
        assert checked == len(ref_params)
        # batch norm: the sub-network's running statistics of kept channels match
        ref_bufs = dict(ref.named_buffers())
        stats = [n for n, _ in model.named_buffers() if n.endswith(("mean", "var"))]
        for name in stats:
            got = _kept_part(model.get_buffer(name), ref.layout[name], keep)
            want = _kept_part(ref_bufs[name], ref.layout[name], keep)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        arch, _, _, opts = _options(case)
        assert bool(stats) == (arch.startswith("resnet") or opts.get("norm") == "bn")


def test_the_reference_is_sensitive_to_the_rescale() -> None:
    """A sanity check of the reference itself: without the C/k scale it disagrees."""
    model = make("femnist_cnn")
    keep = select_channels(model.groups, [0.5, 0.5, 0.5], "ordered")
    assert keep is not None
    ref = reference_for(model, "femnist_cnn", keep)
    x, _ = batch(model)
    with torch.no_grad():
        same = model(x, keep)
        torch.testing.assert_close(same, ref.run(x), atol=1e-5, rtol=1e-5)
        ref.scale = {}
        assert not torch.allclose(same, ref.run(x), atol=1e-3)
