"""Non-finite updates are rejected and counted; FedNova averages statistics; FedProx
reports the task loss; updates are weighted by their devices' sample counts."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from fleetsim.backends import InProcess
from fleetsim.build import build, load_scenario, trainer_settings
from fleetsim.results import read_rounds, write_run
from fleetsim.rng import int_seed
from fleetsim.server.aggregation import Aggregator, FedNovaAggregator, Update
from fleetsim.training import Trainer, UpdateJob, UpdateResult, batch_indices

FOUR = """
name: diverge
seed: 2
data: {dataset: digits, partition: {name: iid}}
model: {arch: mlp, options: {hidden: [16]}}
fleet:
  devices: 4
  classes:
    - {name: only, share: 1.0, peak_macs_per_s: 1.0e9, uplink_mbps: 1.0e4,
       downlink_mbps: 1.0e4, latency_s: 0.0}
  traces: {generator: constant}
training:
  rounds: 3
  clients_per_round: 4
  deadline_s: null
  local_steps: 3
  batch_size: 16
  optimizer: {lr: 0.1}
eval: {every_rounds: 1}
"""

BAD = 2  # the device whose training diverges


class ExplodingDevice(InProcess):
    """Trains device BAD with a learning rate of 1e30 (its weights overflow to inf/NaN)."""

    def train(self, state: Mapping[str, Tensor], jobs: Sequence[UpdateJob]
              ) -> Iterator[UpdateResult]:
        t = self.trainer
        for job in jobs:
            if job.device != BAD:
                yield t.train(state, job)
                continue
            opt = t.opt
            t.opt = opt.model_copy(update={"lr": 1e30})
            try:
                yield t.train(state, job)
            finally:
                t.opt = opt


def test_one_diverged_device_leaves_the_global_model_finite_and_equal_to_the_rest(
        tmp_path: Path) -> None:
    sc = load_scenario(None, ["training.rounds=1"], text=FOUR)
    built = build(sc)
    eng = built.engine
    start = {k: v.clone() for k, v in eng.state.items()}  # type: ignore[union-attr]
    eng.backend = ExplodingDevice(trainer_settings(sc),
                                  trainer=built.backend.trainer)  # type: ignore[union-attr]
    log = eng.run()
    row = log.rounds[0]
    assert row["rejected"] == 1 and row["completed"] == 3
    assert {o.device: o.status for o in log.timeline}[BAD] == "rejected"
    assert math.isfinite(row["accuracy"]) and math.isfinite(row["train_loss"])
    # the reference: plain weighted average of the three healthy updates, by hand
    trainer = Trainer(trainer_settings(sc))
    ups = [trainer.train(start, o.job).update for o in log.timeline  # type: ignore[arg-type]
           if o.device != BAD and o.job is not None]
    assert len(ups) == 3
    total = sum(u.weight for u in ups)
    floats = [k for k, v in eng.state.items() if v.is_floating_point()]  # type: ignore[union-attr]
    assert floats
    for k in floats:
        v = eng.state[k]  # type: ignore[index]
        ref = sum(u.weight * u.state[k] for u in ups) / total
        assert torch.isfinite(v).all()
        torch.testing.assert_close(v, ref, rtol=1e-6, atol=1e-7)
    write_run(tmp_path / "out", sc, log)
    assert read_rounds(tmp_path / "out" / "rounds.csv")["rejected"].tolist() == [1.0]
    assert "rejected" in (tmp_path / "out" / "rounds.csv").read_text().splitlines()[0]


def test_aggregator_rejects_nan_and_inf_and_adds_nothing() -> None:
    g = {"w": torch.tensor([1.0, 1.0])}
    agg = Aggregator(g)
    assert agg.add(Update(0, 1.0, {"w": torch.tensor([3.0, 5.0])}, {}, 1))
    assert not agg.add(Update(1, 1.0, {"w": torch.tensor([math.nan, 0.0])}, {}, 1))
    assert not agg.add(Update(2, 5.0, {"w": torch.tensor([0.0, math.inf])}, {}, 1))
    assert agg.count == 1
    assert agg.result()["w"].tolist() == [3.0, 5.0]


def test_fednova_averages_batch_norm_statistics_instead_of_normalising_them() -> None:
    # 1 versus 100 local steps: running_var must be the plain weighted mean, not
    # x + tau_eff * mean((x_k - x) / tau_k), which goes negative here
    g = {"w": torch.tensor([0.0]), "bn.running_var": torch.tensor([1.0])}
    agg = FedNovaAggregator(g, buffers={"bn.running_var"})
    agg.add(Update(0, 1.0, {"w": torch.tensor([1.0]), "bn.running_var": torch.tensor([0.2])},
                   {}, 1))
    agg.add(Update(1, 1.0, {"w": torch.tensor([100.0]),
                            "bn.running_var": torch.tensor([3.0])}, {}, 100))
    out = agg.result()
    assert out["bn.running_var"].item() == pytest.approx(1.6)  # (0.2 + 3.0) / 2
    # weights keep FedNova's rule: tau_eff = 50.5, mean d/tau = (1 + 1) / 2 = 1
    assert out["w"].item() == 50.5


def test_fednova_with_a_batch_norm_model_evaluates_finite() -> None:
    text = FOUR.replace("arch: mlp, options: {hidden: [16]}",
                        "arch: cnn4, options: {channels: [4, 4, 8, 8], norm: bn}")
    sc = load_scenario(None, ["policy.name=fednova", "policy.options.steps_range=[1,100]",
                              "training.rounds=2"], text=text)
    log = build(sc).engine.run()
    assert all(math.isfinite(r["accuracy"]) for r in log.rounds)
    state = build(sc).engine
    del state


def test_fedprox_reports_the_task_loss_without_the_penalty() -> None:
    sc = load_scenario(None, text=FOUR)
    trainer = Trainer(trainer_settings(sc))
    start = trainer.initial_state()
    mu, lr = 50.0, 0.1
    job = UpdateJob(0, 0, 1.0, ((0.0,),), (0, 0), prox_mu=mu)
    res = trainer.train(start, job)
    # by hand: step 1 starts at w_global (penalty and its gradient 0), so w1 = w0 - lr g0;
    # the reported loss is the mean of the two cross-entropies, nothing else
    torch.manual_seed(int_seed(sc.seed, "init"))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 10))
    flat = [start[k] for k in start if start[k].is_floating_point()]
    with torch.no_grad():
        for p, v in zip(net.parameters(), flat, strict=True):
            p.copy_(v)
    x, y = trainer.data.x_train, trainer.data.y_train
    losses = []
    for idx in batch_indices(trainer.partition, 0, 0, 2, 16, sc.seed):
        t = torch.from_numpy(idx)
        loss = F.cross_entropy(net(x[t]), y[t])
        losses.append(float(loss.detach()))
        prox = sum(((p - v) ** 2).sum() for p, v in zip(net.parameters(), flat, strict=True))
        net.zero_grad()
        (loss + 0.5 * mu * prox).backward()
        with torch.no_grad():
            for p in net.parameters():
                p.add_(p.grad, alpha=-lr)
    assert res.mean_loss == pytest.approx(sum(losses) / 2, rel=1e-5)


def test_updates_are_weighted_by_their_devices_sample_counts() -> None:
    text = FOUR.replace("devices: 4", "devices: 2").replace("clients_per_round: 4",
                                                            "clients_per_round: 2")
    text = text.replace("partition: {name: iid}",
                        "partition: {name: dirichlet, options: {alpha: 0.3}}")
    sc = load_scenario(None, ["training.rounds=1"], text=text)
    built = build(sc)
    start = {k: v.clone() for k, v in built.engine.state.items()}  # type: ignore[union-attr]
    log = built.engine.run()
    n = built.engine.n_samples
    assert n[0] != n[1]  # unequal data, or the test says nothing
    trainer = Trainer(trainer_settings(sc))
    a, b = (trainer.train(start, o.job).update for o in sorted(log.timeline,  # type: ignore[arg-type]
                                                                key=lambda o: o.device))
    assert (a.weight, b.weight) == (float(n[0]), float(n[1]))
    floats = [k for k, v in built.engine.state.items() if v.is_floating_point()]  # type: ignore[union-attr]
    assert floats
    for k in floats:
        v = built.engine.state[k]  # type: ignore[index]
        ref = (n[0] * a.state[k] + n[1] * b.state[k]) / (n[0] + n[1])
        torch.testing.assert_close(v, ref.to(v.dtype), rtol=1e-6, atol=1e-7)
