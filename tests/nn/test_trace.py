"""The tracer derives the built-in models' hand-written groups, and refuses what it
cannot follow with an error naming the graph node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fleetsim.errors import UserError
from fleetsim.nn import DroppableNet, Keep, build_model
from fleetsim.nn.trace import UntraceableModel

NETS = Path(__file__).resolve().parent / "user_nets.py"


def user(fn: str, shape: tuple[int, ...], classes: int, **kwargs: Any) -> DroppableNet:
    return build_model("user", shape, classes, {"factory": f"{NETS}:{fn}", "kwargs": kwargs})


# built-in arch and options, the plain twin's factory and kwargs, input shape, classes
TWINS = {
    "cnn4": (("cnn4", {"channels": (4, 6, 8, 8), "norm": "bn"}),
             ("make_cnn4", {"channels": (4, 6, 8, 8)}), (1, 8, 8), 5),
    "resnet8": (("resnet8", {"width": 0.5}), ("make_resnet", {"width": 0.5}), (3, 8, 8), 5),
    "resnet20": (("resnet20", {"width": 0.25}), ("make_resnet", {"width": 0.25,
                                                                  "per_stage": 3}),
                 (3, 8, 8), 3),
}


def _group_map(hand: DroppableNet, derived: DroppableNet) -> dict[str, str]:
    """Hand-written group -> derived group, read off the two models' specs; asserts that
    every tensor is cut the same way under it and that it is one-to-one."""
    assert {f"net.{n}" for n in hand.specs} == set(derived.specs)
    pairs: dict[str, str] = {}
    for name, spec in hand.specs.items():
        d = derived.specs[f"net.{name}"]
        for h, g in ((spec.out, d.out), (spec.inp, d.inp)):
            assert (h is None) == (g is None), (name, spec, d)
            if h is not None:
                assert pairs.setdefault(h, g) == g, (name, h, g)  # type: ignore[arg-type]
        assert (spec.inp_repeat if spec.inp else 1) == (d.inp_repeat if d.inp else 1), name
    assert sorted(pairs) == sorted(g.name for g in hand.groups)
    assert sorted(pairs.values()) == sorted(g.name for g in derived.groups)  # one-to-one
    for g in hand.groups:
        assert derived.group_channels[pairs[g.name]] == g.channels, g.name
    return pairs


@pytest.mark.parametrize("case", sorted(TWINS))
def test_derived_groups_equal_the_hand_written_ones(case: str) -> None:
    (arch, opts), (fn, kwargs), shape, classes = TWINS[case]
    hand = build_model(arch, shape, classes, opts)
    derived = user(fn, shape, classes, **kwargs)
    pairs = _group_map(hand, derived)
    assert len(pairs) == len(hand.groups) == {"cnn4": 4, "resnet8": 6, "resnet20": 12}[case]


@pytest.mark.parametrize("case", sorted(TWINS))
def test_derived_sub_network_computes_what_the_built_in_one_does(case: str) -> None:
    """Same weights, same kept channels (through the group map): the same logits and
    gradients, so the rescale sits where the built-ins' drop() calls do."""
    (arch, opts), (fn, kwargs), shape, classes = TWINS[case]
    torch.manual_seed(0)
    hand = build_model(arch, shape, classes, opts).train()
    derived = user(fn, shape, classes, **kwargs).train()
    derived.load_state_dict({f"net.{k}": v for k, v in hand.state_dict().items()})
    pairs = _group_map(hand, derived)
    g = torch.Generator().manual_seed(1)
    keep: Keep = {n: torch.randperm(c, generator=g)[:max(1, c // 2)].sort().values
                  for n, c in hand.group_channels.items()}
    x = torch.randn((4, *shape), generator=g)
    out_h = hand(x, keep)
    out_d = derived(x, {pairs[n]: idx for n, idx in keep.items()})
    torch.testing.assert_close(out_d, out_h, rtol=1e-5, atol=1e-5)
    out_h.square().sum().backward()
    out_d.square().sum().backward()
    for name, p in hand.named_parameters():
        q = derived.get_parameter(f"net.{name}")
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


def _refused(kind: str) -> str:
    with pytest.raises(UntraceableModel) as info:
        user("make", (3, 8, 8), 5, kind=kind)
    return " ".join(str(info.value).split())


def test_a_channel_shuffle_is_refused_naming_the_node() -> None:
    msg = _refused("Shuffle")
    assert "graph node 'view'" in msg and ".view()" in msg
    assert "channel shuffle" in msg and "user_nets.py" in msg and "h.view(n, 2" in msg


def test_data_dependent_control_flow_is_refused_naming_the_line() -> None:
    msg = _refused("Branchy")
    assert "cannot be traced by torch.fx" in msg and "if h.sum() > 0" in msg
    assert "user_nets.py" in msg and "Branchy" in msg


@pytest.mark.parametrize("kind, words", [
    ("Grouped", ["graph node 'conv2'", "grouped convolution", "groups=2"]),
    ("ChannelMean", ["graph node 'mean'", "reduction over the batch or channel dim"]),
    ("Shared", ["graph node 'conv2_1'", "called a second time"]),
    ("NormOfConcat", ["graph node 'bn'", "its input is a concatenation"]),
])
def test_other_constructs_are_refused_naming_the_node(kind: str, words: list[str]) -> None:
    msg = _refused(kind)
    assert all(w in msg for w in words), msg
    assert "model.options.groups: none" in msg


def test_a_training_flag_fixed_when_traced_is_refused() -> None:
    # F.dropout(training=self.training) is not followed at all: found at its node
    msg = _refused("TrainingFlag")
    assert "graph node 'dropout'" in msg


def test_a_concatenation_read_only_by_the_output_is_fine() -> None:
    m = user("make", (3, 8, 8), 5, kind="ConcatAtOutput")
    assert [g.name for g in m.groups] == ["a"]  # fc1/fc2 write the (pinned) logits


def test_untraceable_is_a_user_error() -> None:
    assert issubclass(UntraceableModel, UserError)


def test_a_python_branch_on_the_mode_is_caught_by_the_forward_check() -> None:
    msg = _refused("ModeBranch")
    assert "computes something other than its forward" in msg and "self.training" in msg


def test_concatenations_cut_a_layer_by_each_part() -> None:
    m = user("make", (3, 8, 8), 5, kind="Dense")
    assert [(g.name, g.channels) for g in m.groups] == [("a", 4), ("b", 6), ("c", 5)]
    assert m.specs["net.c.weight"].inp_parts == (("a", 4), ("b", 6))
    fc = m.specs["net.fc.weight"]
    assert fc.inp_parts == (("a", 4), ("b", 6), ("c", 5)) and fc.inp_repeat == 4
    keep = {"a": torch.tensor([1, 3]), "c": torch.tensor([0, 4])}
    idx = fc.in_index(keep)
    assert idx is not None and idx.tolist() == [1, 3, *range(4, 10), 10, 14]
    assert m.cut("net.fc.weight", m.net.fc.weight, keep).shape == (5, 10 * 4)
