"""User networks (model.arch: user): the sliced sub-network equals an independent masked
reference built from the plain modules, MACs equal PyTorch's flop counter, sub-networks
are physically smaller, and factory mistakes are one-paragraph UserErrors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from fleetsim.errors import UserError
from fleetsim.nn import DroppableNet, Keep, build_model, select_channels
from fleetsim.nn.slicing import MODES
from fleetsim.nn.user import UserNet

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "models"
NETS = Path(__file__).resolve().parent / "user_nets.py"

# tiny instances of the shipped examples: every group keeps several channels
CASES: dict[str, tuple[str, dict[str, Any], tuple[int, ...], int]] = {
    "mobilenetv2": ("mobilenetv2.py:make_net",
                    {"width": 0.25, "last": 32, "stem": 16,
                     "blocks": [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 1]]}, (3, 8, 8), 5),
    "resnet18": ("resnet18.py:make_net", {"width": 0.125}, (3, 8, 8), 5),
    # concatenations (DenseNet-style), into a convolution and flattened into the head
    "dense": (f"{Path(__file__).resolve().parent / 'user_nets.py'}:make", {"kind": "Dense"},
              (3, 8, 8), 5),
}


def make(case: str, seed: int = 0) -> UserNet:
    ref, kwargs, shape, classes = CASES[case]
    torch.manual_seed(seed)
    m = build_model("user", shape, classes, {"factory": f"{EXAMPLES / ref}", "kwargs": kwargs})
    assert isinstance(m, UserNet)
    return m.train()


def _masked_params(model: UserNet, keep: Keep) -> dict[str, Tensor]:
    """The plain network's parameters with dropped filters zeroed, as functions of the
    full parameters: rows of dropped output channels are 0 (conv filters and biases,
    batch-norm scales and shifts); columns of dropped input channels are 0 and those of
    kept ones scaled by C/k where a layer sums over its input channels (inverted
    dropout; a depthwise filter sums over one channel and is not scaled)."""
    out = {}
    for name, p in model.net.named_parameters():
        spec = model.specs[f"net.{name}"]
        mask = torch.ones(p.shape)
        if spec.out in keep:
            rows = torch.zeros(p.shape[0])
            rows[keep[spec.out]] = 1.0
            mask = mask * rows.view(-1, *([1] * (p.dim() - 1)))
        parts = spec.inp_parts or (
            ((spec.inp, p.shape[1] // spec.inp_repeat),) if p.dim() > 1 else ())
        if any(g in keep for g, _ in parts):
            cols = []
            for g, c in parts:  # a concatenation: each part scaled by its own C/k
                part = torch.zeros(c) if g in keep else torch.ones(c)
                if g in keep:
                    part[keep[g]] = c / len(keep[g])
                cols.append(part)
            mask = mask * torch.cat(cols).repeat_interleave(spec.inp_repeat).view(
                1, -1, *([1] * (p.dim() - 2)))
        out[name] = p * mask
    return out


def _vectors(model: DroppableNet, n: int = 2, seed: int = 0) -> list[list[float]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(len(model.groups), generator=g) * 0.8).tolist() for _ in range(n)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_sliced_equals_the_plain_network_with_dropped_filters_zeroed(case: str,
                                                                     mode: str) -> None:
    model = make(case)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):  # its masks depend on the tensor's size
            m.eval()
    state = copy.deepcopy(model.state_dict())
    for trial, vector in enumerate(_vectors(model, seed=MODES.index(mode))):
        keep = select_channels(model.groups, vector, mode,
                               torch.Generator().manual_seed(trial), offset=2 + trial)
        assert keep is not None and len(keep) > len(model.groups) // 2
        g = torch.Generator().manual_seed(trial)
        x = torch.randn((8, *model.input_shape), generator=g)
        y = torch.randint(0, model.num_classes, (8,), generator=g)

        model.load_state_dict(state)
        model.zero_grad(set_to_none=True)
        out = model(x, keep)
        F.cross_entropy(out, y).backward()
        grads = {n: p.grad for n, p in model.net.named_parameters()}
        stats = copy.deepcopy(model.state_dict())

        model.load_state_dict(state)
        model.zero_grad(set_to_none=True)
        ref = functional_call(model.net, _masked_params(model, keep), (x,))
        F.cross_entropy(ref, y).backward()

        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        for name, p in model.net.named_parameters():
            # many batch norms over few values: float error grows, so relative to scale
            scale = float(p.grad.abs().max())
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-3, atol=max(1e-5, 1e-4 * scale),
                                       msg=lambda m, n=name: f"{n}: {m}")
        # running statistics of kept channels follow the reference's; dropped ones stay
        ref_stats = model.state_dict()
        for name, v in stats.items():
            if not name.endswith(("running_mean", "running_var")):
                continue
            spec = model.specs[name]
            kept = torch.zeros(v.shape[0], dtype=torch.bool)
            kept[keep[spec.out] if spec.out in keep else slice(None)] = True
            torch.testing.assert_close(v[kept], ref_stats[name][kept], rtol=1e-4, atol=1e-6)
            assert torch.equal(v[~kept], state[name][~kept]), name


@pytest.mark.parametrize("case", sorted(CASES))
def test_masked_mode_equals_sliced(case: str) -> None:
    model = make(case).eval()
    keep = select_channels(model.groups, [0.5] * len(model.groups), "random",
                           torch.Generator().manual_seed(4))
    x = torch.randn((3, *model.input_shape))
    with torch.no_grad():
        torch.testing.assert_close(model(x, keep, masked=True), model(x, keep),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_full_network_is_the_plain_network(case: str) -> None:
    model = make(case)
    x = torch.randn((4, *model.input_shape))
    torch.manual_seed(3)  # nn.Dropout in training draws from the global generator
    out = model(x)
    torch.manual_seed(3)
    assert torch.equal(out, model.net(x))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_measured_macs_equal_the_flop_counter_of_the_sliced_network(case: str,
                                                                    mode: str) -> None:
    model = make(case)
    x = torch.randn((3, *model.input_shape))
    with torch.no_grad(), FlopCounterMode(display=False) as full_fc:
        model(x)
    full = model.measure()
    assert full.macs * 3 == full_fc.get_total_flops() // 2
    assert full.params == sum(p.numel() for p in model.parameters())
    for i, vector in enumerate(_vectors(model, n=3, seed=10 + MODES.index(mode))):
        keep = select_channels(model.groups, vector, mode, torch.Generator().manual_seed(i),
                               offset=i)
        counts = model.kept_counts(keep)
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(x, keep)
        measured = model.measure(counts)
        assert measured.macs * 3 == fc.get_total_flops() // 2, vector
        # physically smaller: the executed network does fewer operations
        assert fc.get_total_flops() < full_fc.get_total_flops()
        assert measured.params < full.params and measured.activations < full.activations


def test_sub_network_convolutions_are_physically_smaller(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    model = make("resnet18")
    keep = select_channels(model.groups, [0.5] * len(model.groups), "ordered")
    assert keep is not None
    seen: list[tuple[int, ...]] = []
    real = F.conv2d

    def spy(x: Tensor, w: Tensor, *a: object, **kw: object) -> Tensor:
        seen.append(tuple(w.shape))
        return real(x, w, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(F, "conv2d", spy)
    x = torch.randn(2, 3, 8, 8)
    model(x)
    full, seen[:] = list(seen), []
    model(x, keep)
    # the stem writes group 'conv1' (8 filters, 4 kept) from the 3 image channels
    assert full[0] == (8, 3, 3, 3) and seen[0] == (4, 3, 3, 3)
    assert len(seen) == len(full) == 20  # stem, 16 block convolutions, 3 projections
    for cut, whole in zip(seen[1:], full[1:]):  # every group keeps half its channels
        assert (cut[0] * 2, cut[1] * 2, *cut[2:]) == whole


def test_groups_none_runs_the_network_as_written_with_flop_counter_macs() -> None:
    m = build_model("user", (3, 8, 8), 5, {"factory": f"{NETS}:make", "groups": "none",
                                           "kwargs": {"kind": "Shuffle"}})
    assert m.groups == ()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        y = m(x)
    assert torch.equal(y, m.net(x))
    measured = m.measure()
    assert measured.macs * 2 == fc.get_total_flops() // 2 > 0
    # conv1 3->8 3x3 and conv2 8->8 3x3 on 8x8, fc 8->5
    assert measured.macs == 64 * 8 * 27 + 64 * 8 * 72 + 8 * 5
    assert measured.params == sum(p.numel() for p in m.parameters())
    from fleetsim.costs import measure_on_cpu

    assert measure_on_cpu(m, None).macs == measured.macs


def _error(options: dict[str, Any], shape: tuple[int, ...] = (3, 8, 8)) -> str:
    with pytest.raises(UserError) as info:
        build_model("user", shape, 5, options)
    return " ".join(str(info.value).split())


def test_factory_mistakes_are_user_errors() -> None:
    msg = _error({"factory": "nowhere.py:make_net"})
    assert "model.options.factory" in msg and "nowhere.py does not exist" in msg
    msg = _error({"factory": f"{NETS}:make_nett"})
    assert "defines no 'make_nett'" in msg and "make_cnn4" in msg
    msg = _error({"factory": f"{NETS}"})
    assert "model.options.factory" in msg and "file.py:name" in msg
    msg = _error({"factory": f"{NETS}:not_a_module"})
    assert "returned a int" in msg
    msg = _error({"factory": f"{NETS}:wrong_output"})
    assert "returns shape (2, 2)" in msg and "(batch, 5)" in msg
    msg = _error({"factory": f"{NETS}:broken"})
    assert "RuntimeError: out of ideas" in msg and "user_nets.py" in msg
    msg = _error({"factory": f"{NETS}:make_cnn4", "kwargs": {"chanels": [1, 2, 3, 4]}})
    assert "TypeError" in msg and "chanels" in msg
    msg = _error({"factory": "fleetsim_no_such_module:make"})
    assert "cannot be imported" in msg
