"""measure() counts what the sliced forward really executes, and the sub-network is smaller."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from nn_cases import ALL_CASES, batch, make
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from fleetsim.nn import DroppableNet, Keep, build_model, kept_counts, select_channels


def _vectors(model: DroppableNet) -> list[list[float]]:
    n = len(model.groups)
    g = torch.Generator().manual_seed(7)
    return [[0.0] * n, [0.5] * n, [0.75] * n,
            *((torch.rand(n, generator=g) * 0.9).tolist() for _ in range(2))]


def _sliced_param_count(model: DroppableNet, counts: dict[str, int]) -> int:
    """Elements of the sliced parameters, from the specs alone (independent of forward)."""
    total = 0
    for name, p in model.named_parameters():
        spec = model.specs[name]
        shape = list(p.shape)
        if spec.out is not None:
            shape[0] = counts[spec.out]
        if spec.inp is not None:
            shape[1] = counts[spec.inp] * spec.inp_repeat
        total += math.prod(shape)
    return total


@pytest.mark.parametrize("case", ALL_CASES)
def test_measured_macs_equal_flop_counter_of_sliced_forward(case: str) -> None:
    model = make(case)
    x, _ = batch(model, n=3)
    full_checked = 0
    for i, vector in enumerate(_vectors(model)):
        keep = select_channels(model.groups, vector, "random", torch.Generator().manual_seed(i))
        counts = model.kept_counts(keep)
        assert counts == kept_counts(model.groups, vector)
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(x, keep)
        measured = model.measure(counts)
        assert measured.macs * x.shape[0] == fc.get_total_flops() // 2, vector
        assert fc.get_total_flops() % 2 == 0
        assert measured.params == _sliced_param_count(model, counts), vector
        if keep is None:
            assert measured.params == sum(p.numel() for p in model.parameters())
            full_checked += 1
    assert full_checked == 1  # the zero vector: the full network was checked too


@pytest.mark.parametrize("case", ALL_CASES)
def test_measure_of_full_network_matches_no_counts(case: str) -> None:
    model = make(case)
    full = model.measure()
    same = model.measure({g.name: g.channels for g in model.groups})
    assert (full.macs, full.params, full.activations) == (same.macs, same.params,
                                                          same.activations)
    half = model.measure(kept_counts(model.groups, [0.5] * len(model.groups)))
    assert half.macs < full.macs and half.params < full.params
    assert half.activations < full.activations


def test_measure_follows_the_model_not_a_stale_twin() -> None:
    # the meta twin is cached per model object: a new model (whose id() may be the freed
    # one's) of the same arch but another width must not reuse the old twin
    macs = []
    for width in (1.0, 0.5, 1.0):
        m = build_model("resnet8", (3, 8, 8), 10, {"width": width})
        macs.append(m.measure().macs)
        del m
    assert macs[0] == macs[2] != macs[1]


def test_known_full_sizes() -> None:
    mc = build_model("mcmahan_cnn", (1, 28, 28), 10)
    assert sum(p.numel() for p in mc.parameters()) == 1_663_370  # as in McMahan et al. 2017
    fe = build_model("femnist_cnn", (1, 28, 28), 62)
    assert sum(p.numel() for p in fe.parameters()) == 6_603_710  # LEAF's FEMNIST CNN
    r20 = build_model("resnet20", (3, 32, 32), 10)
    assert 40e6 < r20.measure().macs < 42e6  # ~41 MMACs, the usual ResNet-20 figure
    assert len(r20.groups) == 12 and r20.groups[0].name == "stage1"


class _ShapeSpy:
    """Records the weight shapes that convolutions and dense layers receive."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.conv: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self.linear: list[tuple[int, ...]] = []
        real_conv, real_linear = F.conv2d, F.linear

        def conv(x: Tensor, w: Tensor, *a: object, **kw: object) -> Tensor:
            self.conv.append((tuple(x.shape), tuple(w.shape)))
            return real_conv(x, w, *a, **kw)  # type: ignore[arg-type]

        def linear(x: Tensor, w: Tensor, *a: object, **kw: object) -> Tensor:
            self.linear.append(tuple(w.shape))
            return real_linear(x, w, *a, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(F, "conv2d", conv)
        monkeypatch.setattr(F, "linear", linear)


def test_femnist_sub_network_convolutions_are_physically_smaller(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model = make("femnist_cnn")  # conv1 4, conv2 6, fc1 10 (see nn_cases.TINY)
    keep: Keep = {"conv1": torch.tensor([0, 2]), "conv2": torch.tensor([1, 3, 5]),
                  "fc1": torch.arange(4)}
    spy = _ShapeSpy(monkeypatch)
    x, _ = batch(model, n=2)
    model(x, keep)
    assert spy.conv == [((2, 1, 8, 8), (2, 1, 5, 5)), ((2, 2, 4, 4), (3, 2, 5, 5))]
    assert spy.linear == [(4, 3 * 2 * 2), (model.num_classes, 4)]


def test_resnet_sub_network_convolutions_are_physically_smaller(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model = make("resnet8")  # widths 8, 16, 32
    keep = select_channels(model.groups, [0.5] * len(model.groups), "ordered")
    assert keep is not None
    spy = _ShapeSpy(monkeypatch)
    x, _ = batch(model, n=2)
    model(x, keep)
    kept = model.kept_counts(keep)
    weights = [w for _, w in spy.conv]
    assert weights[0] == (kept["stage1"], 3, 3, 3)  # stem
    assert weights[1] == (kept["stage1.block0"], kept["stage1"], 3, 3)
    assert weights[2] == (kept["stage1"], kept["stage1.block0"], 3, 3)
    assert (kept["stage2"], kept["stage1"], 1, 1) in weights  # projection
    assert all(w[0] < 32 for w in weights)
    assert spy.linear == [(model.num_classes, kept["stage3"])]


@pytest.mark.parametrize("case", ["cnn4", "resnet20", "mlp"])
def test_masked_mode_runs_full_size(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make(case)
    keep = select_channels(model.groups, [0.5] * len(model.groups), "ordered")
    spy = _ShapeSpy(monkeypatch)
    x, _ = batch(model, n=2)
    model(x, keep, masked=True)
    seen = sorted([w for _, w in spy.conv] + spy.linear)
    full = sorted(tuple(p.shape) for p in model.parameters() if p.dim() > 1)
    assert seen == full
