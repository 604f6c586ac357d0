"""Server optimizers against hand-computed steps (Reddi et al. 2021, Algorithm 2; FedAvgM).

Expected values are written out by hand (as Python arithmetic on floats), never computed
with the module. Tensors are float64 so that the comparisons can be tight.
"""

from __future__ import annotations

import math

import pytest
import torch

from fleetsim.config import ServerOptimizerConfig
from fleetsim.errors import UserError
from fleetsim.server.aggregation import Aggregator, FedNovaAggregator, Update
from fleetsim.server.optimizers import (
    SERVER_OPTIMIZERS,
    ServerAdagrad,
    ServerAdam,
    ServerMomentum,
    ServerSGD,
    ServerYogi,
    make_server_optimizer,
)


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def opt(name: str, lr: float, b1: float, b2: float, tau: float = 1.0, buffers=()):
    cfg = ServerOptimizerConfig(name=name, lr=lr, betas=(b1, b2), tau=tau)
    return make_server_optimizer(cfg, buffers)


def close(a: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(a, t(*expected), rtol=1e-12, atol=1e-12)


ALL = {"w": torch.tensor(True)}


def test_fedadam_two_steps_with_an_untrained_element() -> None:
    # lr 0.5, beta1 0.5, beta2 0.5, tau 1: v starts at tau^2 = 1, m at 0
    o = opt("adam", 0.5, 0.5, 0.5, tau=1.0)
    assert isinstance(o, ServerAdam)
    x0 = t(1.0, 2.0, 3.0)
    # step 1: delta = [1, -7, 1]
    x1 = o.step({"w": x0}, {"w": t(2.0, -5.0, 4.0)}, ALL)["w"]
    # m = 0.5 * delta = [0.5, -3.5, 0.5]; v = 0.5 * 1 + 0.5 * delta^2 = [1, 25, 1]
    # x = x0 + 0.5 * m / (sqrt(v) + 1)
    e1 = [1.0 + 0.5 * 0.5 / 2, 2.0 - 0.5 * 3.5 / 6, 3.0 + 0.5 * 0.5 / 2]
    close(x1, e1)
    close(o.state["w"]["m"], [0.5, -3.5, 0.5])
    close(o.state["w"]["v"], [1.0, 25.0, 1.0])
    # step 2: element 2 untrained (its aggregate entry is junk and must be ignored);
    # delta = [-1, 1, -]
    agg2 = t(e1[0] - 1.0, e1[1] + 1.0, 100.0)
    x2 = o.step({"w": x1}, {"w": agg2}, {"w": torch.tensor([True, True, False])})["w"]
    # m = 0.5 m + 0.5 delta = [-0.25, -1.25, 0.5 kept]; v = 0.5 v + 0.5 delta^2 = [1, 13, 1 kept]
    e2 = [e1[0] - 0.5 * 0.25 / 2, e1[1] - 0.5 * 1.25 / (math.sqrt(13.0) + 1), e1[2]]
    close(x2, e2)
    close(o.state["w"]["m"], [-0.25, -1.25, 0.5])
    close(o.state["w"]["v"], [1.0, 13.0, 1.0])
    # step 3: element 2 trained again with delta 1 continues from the kept m 0.5, v 1:
    # m = 0.25 + 0.5 = 0.75, v = 0.5 + 0.5 = 1, x = 3.125 + 0.5 * 0.75 / 2
    x3 = o.step({"w": x2}, {"w": x2 + t(0.0, 0.0, 1.0)}, ALL)["w"]
    assert x3[2].item() == pytest.approx(3.125 + 0.5 * 0.75 / 2, abs=1e-12)


def test_fedyogi_two_steps() -> None:
    o = opt("yogi", 0.5, 0.5, 0.5, tau=1.0)
    assert isinstance(o, ServerYogi)
    x0 = t(1.0, 2.0)
    # delta = [2, 0.5], delta^2 = [4, 0.25]; v_-1 = 1
    # v = v - 0.5 delta^2 sign(v - delta^2) = [1 + 2, 1 - 0.125] = [3, 0.875]; m = [1, 0.25]
    x1 = o.step({"w": x0}, {"w": t(3.0, 2.5)}, ALL)["w"]
    e1 = [1.0 + 0.5 * 1.0 / (math.sqrt(3.0) + 1), 2.0 + 0.5 * 0.25 / (math.sqrt(0.875) + 1)]
    close(x1, e1)
    close(o.state["w"]["v"], [3.0, 0.875])
    # delta = [-1, 0.5]: v = [3 - 0.5, 0.875 - 0.125] = [2.5, 0.75] (Adam would give [2, 0.5625]);
    # m = [0.5 - 0.5, 0.125 + 0.25] = [0, 0.375]
    x2 = o.step({"w": x1}, {"w": t(e1[0] - 1.0, e1[1] + 0.5)}, ALL)["w"]
    close(o.state["w"]["v"], [2.5, 0.75])
    close(o.state["w"]["m"], [0.0, 0.375])
    close(x2, [e1[0], e1[1] + 0.5 * 0.375 / (math.sqrt(0.75) + 1)])


def test_fedadagrad_two_steps() -> None:
    o = opt("adagrad", 0.5, 0.5, 0.99, tau=1.0)  # beta2 is not used by adagrad
    assert isinstance(o, ServerAdagrad)
    # delta = [3, -1]: v = 1 + delta^2 = [10, 2]; m = 0.5 delta = [1.5, -0.5]
    x1 = o.step({"w": t(1.0, 2.0)}, {"w": t(4.0, 1.0)}, ALL)["w"]
    e1 = [1.0 + 0.5 * 1.5 / (math.sqrt(10.0) + 1), 2.0 - 0.5 * 0.5 / (math.sqrt(2.0) + 1)]
    close(x1, e1)
    # delta = [1, 1]: v = [11, 3]; m = [0.75 + 0.5, -0.25 + 0.5] = [1.25, 0.25]
    x2 = o.step({"w": x1}, {"w": x1 + 1.0}, ALL)["w"]
    close(o.state["w"]["v"], [11.0, 3.0])
    close(x2, [e1[0] + 0.5 * 1.25 / (math.sqrt(11.0) + 1),
               e1[1] + 0.5 * 0.25 / (math.sqrt(3.0) + 1)])
    # beta1 = 0: no momentum (Keras Adagrad in the authors' code, Flower): m = delta
    o0 = opt("adagrad", 0.5, 0.0, 0.99, tau=1.0)
    out = o0.step({"w": t(1.0)}, {"w": t(4.0)}, ALL)["w"]
    close(out, [1.0 + 0.5 * 3.0 / (math.sqrt(10.0) + 1)])


def test_fedavgm_two_steps_with_an_untrained_element() -> None:
    o = opt("momentum", 0.5, 0.5, 0.99)
    assert isinstance(o, ServerMomentum)
    # delta = [2, -4, 1]: m = delta; x = x + 0.5 m = [2, 0, 3.5]
    x1 = o.step({"w": t(1.0, 2.0, 3.0)}, {"w": t(3.0, -2.0, 4.0)}, ALL)["w"]
    close(x1, [2.0, 0.0, 3.5])
    # element 1 untrained (junk aggregate); delta = [2, -, 1]:
    # m = [0.5 * 2 + 2, -4 kept, 0.5 * 1 + 1] = [3, -4, 1.5]; x = [2 + 1.5, 0, 3.5 + 0.75]
    x2 = o.step({"w": x1}, {"w": t(4.0, 50.0, 4.5)}, {"w": torch.tensor([True, False, True])})
    close(x2["w"], [3.5, 0.0, 4.25])
    close(o.state["w"]["m"], [3.0, -4.0, 1.5])


@pytest.mark.parametrize("name, v0", [
    ("adam", 0.5 * 0.25 + 0.5 * 1.0),  # b2 v + (1 - b2) delta^2
    ("yogi", 0.25 + 0.5 * 1.0),  # v - (1 - b2) delta^2 sign(0.25 - 1)
    ("adagrad", 0.25 + 1.0),  # v + delta^2
])
def test_second_moment_starts_at_tau_squared(name: str, v0: float) -> None:
    # tau 0.5, so v_-1 = tau^2 = 0.25 (not tau, not 0); beta1 0: m = delta = 1
    o = opt(name, 1.0, 0.0, 0.5, tau=0.5)
    out = o.step({"w": t(0.0)}, {"w": t(1.0)}, ALL)["w"]
    close(o.state["w"]["v"], [v0])
    close(out, [1.0 / (math.sqrt(v0) + 0.5)])


def test_mask_broadcasts_over_a_weight() -> None:
    # a (2, 2) weight whose second output channel nobody trained: mask of shape (2, 1)
    o = opt("adam", 0.5, 0.5, 0.5, tau=1.0)
    x = torch.ones(2, 2, dtype=torch.float64)
    agg = torch.tensor([[2.0, 2.0], [9.0, 9.0]], dtype=torch.float64)
    out = o.step({"w": x}, {"w": agg}, {"w": torch.tensor([[True], [False]])})["w"]
    # row 0: delta 1, m 0.5, v 1 -> 1 + 0.5 * 0.5 / 2; row 1 keeps 1 and m 0, v tau^2 = 1
    e = 1.0 + 0.5 * 0.5 / 2
    torch.testing.assert_close(out, torch.tensor([[e, e], [1.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(o.state["w"]["m"][1], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(o.state["w"]["v"][1], torch.ones(2, dtype=torch.float64))


def test_sgd_lr_1_is_the_aggregate_bit_for_bit() -> None:
    o = opt("sgd", 1.0, 0.9, 0.99, buffers=["bn.running_mean"])
    assert isinstance(o, ServerSGD)
    # float32 where x + (a - x) != a: 1 - 1e8 rounds to -1e8, so that route gives 0, not 1
    g = {"w": torch.tensor([1e8, 0.3], dtype=torch.float32),
         "bn.running_mean": torch.tensor([0.0, 0.0]), "bn.num_batches_tracked": torch.tensor(3)}
    agg = {"w": torch.tensor([1.0, 0.7], dtype=torch.float32),
           "bn.running_mean": torch.tensor([0.25, -0.5]),
           "bn.num_batches_tracked": torch.tensor(7)}
    out = o.step(g, agg, {"w": torch.tensor([True, True]),
                          "bn.running_mean": torch.tensor([True, True])})
    assert list(out) == list(agg)
    for k in agg:
        assert torch.equal(out[k], agg[k]), k
        assert out[k].dtype == agg[k].dtype


def test_sgd_lr_half_moves_half_way_on_trained_elements() -> None:
    o = opt("sgd", 0.5, 0.9, 0.99)
    out = o.step({"w": t(1.0, 2.0, 3.0)}, {"w": t(3.0, 1.0, 0.0)},
                 {"w": torch.tensor([True, True, False])})
    close(out["w"], [2.0, 1.5, 3.0])


def test_buffers_and_integers_take_the_aggregate_under_adam() -> None:
    o = opt("adam", 0.1, 0.9, 0.99, tau=1e-3, buffers=["bn.running_var"])
    g = {"w": t(1.0), "bn.running_var": t(1.0, 1.0), "bn.num_batches_tracked": torch.tensor(3)}
    agg = {"w": t(2.0), "bn.running_var": t(0.5, 4.0), "bn.num_batches_tracked": torch.tensor(9)}
    out = o.step(g, agg, {"w": torch.tensor([True]), "bn.running_var": torch.tensor([True, True])})
    assert torch.equal(out["bn.running_var"], agg["bn.running_var"])
    assert torch.equal(out["bn.num_batches_tracked"], agg["bn.num_batches_tracked"])
    assert not torch.equal(out["w"], agg["w"])  # the weight did go through Adam
    assert set(o.state) == {"w"}


def test_registry_names_and_unknown_name() -> None:
    assert SERVER_OPTIMIZERS.names() == ["adagrad", "adam", "momentum", "sgd", "yogi"]
    with pytest.raises(UserError, match=r"unknown server optimizer 'nadam'.*adagrad, adam, "
                                        r"momentum, sgd, yogi"):
        SERVER_OPTIMIZERS.get("nadam")
    bad = ServerOptimizerConfig.model_construct(name="nadam", lr=1.0, betas=(0.9, 0.99),
                                                tau=1e-3)
    with pytest.raises(UserError, match=r"server\.optimizer\.name.*'nadam'"):
        make_server_optimizer(bad)


@pytest.mark.parametrize("cls", [Aggregator, FedNovaAggregator])
def test_aggregator_trained_masks(cls: type[Aggregator]) -> None:
    g = {"w": torch.zeros(3), "n": torch.tensor(0)}
    agg = cls(g)
    agg.add(Update(0, 2.0, {"w": torch.ones(3), "n": torch.tensor(0)},
                   {"w": torch.tensor([True, False, False])}, 1))
    agg.add(Update(1, 1.0, {"w": torch.ones(3), "n": torch.tensor(0)},
                   {"w": torch.tensor([False, False, True])}, 1))
    m = agg.trained()
    assert set(m) == {"w"}
    assert m["w"].dtype == torch.bool
    assert m["w"].tolist() == [True, False, True]
