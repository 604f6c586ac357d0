"""Masked, weighted aggregation of sub-network updates."""

from __future__ import annotations

import pytest
import torch

from fleetsim.build import load_scenario, trainer_settings
from fleetsim.server.aggregation import Aggregator, Update, is_finite
from fleetsim.training import Trainer, UpdateJob
from tests.conftest import TINY


def test_hand_computed_example() -> None:
    g = {"w": torch.tensor([1.0, 1.0, 1.0, 1.0]), "n": torch.tensor(7)}
    agg = Aggregator(g)
    # device 0 (weight 1) trained elements 0, 1; device 1 (weight 3) trained 1, 2
    agg.add(Update(0, 1.0, {"w": torch.tensor([2.0, 4.0, 9.0, 9.0]), "n": torch.tensor(0)},
                   {"w": torch.tensor([True, True, False, False])}, 5))
    agg.add(Update(1, 3.0, {"w": torch.tensor([9.0, 8.0, 6.0, 9.0]), "n": torch.tensor(0)},
                   {"w": torch.tensor([False, True, True, False])}, 5))
    out = agg.result()
    # element 0: only device 0 -> 2; element 1: (1*4 + 3*8)/4 = 7; element 2: 6;
    # element 3: nobody -> keeps 1; integer tensors are not averaged
    assert out["w"].tolist() == [2.0, 7.0, 6.0, 1.0]
    assert int(out["n"]) == 7


def test_full_updates_give_fedavg() -> None:
    g = {"w": torch.zeros(3)}
    xs = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 0.0, 1.0]),
          torch.tensor([0.0, 5.0, 2.0])]
    ws = [10.0, 30.0, 60.0]
    agg = Aggregator(g)
    for i, (x, w) in enumerate(zip(xs, ws)):
        agg.add(Update(i, w, {"w": x}, {}, 1))
    fedavg = sum(w * x for x, w in zip(xs, ws)) / sum(ws)
    torch.testing.assert_close(agg.result()["w"], fedavg)


def test_updates_out_of_device_order_are_refused() -> None:
    agg = Aggregator({"w": torch.zeros(1)})
    agg.add(Update(3, 1.0, {"w": torch.ones(1)}, {}, 1))
    with pytest.raises(ValueError, match="increasing device order"):
        agg.add(Update(2, 1.0, {"w": torch.ones(1)}, {}, 1))


def test_sub_network_updates_touch_only_trained_elements() -> None:
    text = TINY.replace("arch: mlp", "arch: cnn4").replace("options: {hidden: [16]}",
                                                           "options: {channels: [8, 8, 8, 8]}")
    sc = load_scenario(None, text=text)
    tr = Trainer(trainer_settings(sc))
    g = tr.initial_state()
    # one fixed sub-model for the whole round: ordered channels, half of every group
    job = UpdateJob(0, 0, 10.0, ((0.5, 0.5, 0.5, 0.5),), (0, 0, 0), mode="ordered",
                    reselect="round")
    res = tr.train(g, job)
    agg = Aggregator(g)
    agg.add(res.update)
    new = agg.result()
    w = "convs.1.weight"  # (out 8, in 8, 3, 3): rows 0-3 x cols 0-3 trained
    changed = (new[w] != g[w]).any(dim=(2, 3))
    assert changed[:4, :4].all()
    assert not changed[4:].any() and not changed[:, 4:].any()
    torch.testing.assert_close(new[w][:4, :4], res.update.state[w][:4, :4])


@pytest.mark.parametrize("values, finite", [
    ([0.0, 1.5, -2.0], True),
    ([], True),
    # finite, though their float32 sum overflows: the elementwise check must answer
    ([3.0e38, 3.0e38], True),
    ([-3.0e38, -3.0e38, 1.0], True),
    ([1.0, float("nan")], False),
    ([1.0, float("inf")], False),
    ([float("-inf"), 2.0], False),
    ([float("inf"), float("-inf")], False),
])
def test_is_finite_is_exact(values: list[float], finite: bool) -> None:
    state = {"w": torch.tensor(values, dtype=torch.float32),
             "steps": torch.tensor([7], dtype=torch.int64)}  # not floating: not checked
    assert is_finite(state) is finite
    # the same answer as the plain elementwise form
    assert finite == all(bool(torch.isfinite(v).all()) for v in state.values())
