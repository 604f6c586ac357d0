"""The DSE's convergence proxy: relative to a d = 0 reference on common streams, repeats
on independent streams, divergence detected, static batch norm recomputed on the DSE's
training split."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fleetsim.training as training
from fleetsim.build import dse_job, load_scenario
from fleetsim.dse_proxy import Evaluator, ProxyResult
from fleetsim.errors import UserError
from tests.conftest import TINY

DSE = ["model.options.hidden=[16,16]", "dse.budget_steps=3", "dse.warmup_steps=5",
       "dse.repeats=3", "dse.workers=1"]
CNN = ["model.arch=cnn4", "model.options={channels: [4, 4, 4, 4], norm: bn}"]


def evaluator(tmp_path: Path, *extra: str, **kw: object) -> Evaluator:
    sc = load_scenario(None, [*DSE, f"dse.cache_dir={tmp_path}", *extra], text=TINY)
    job = dse_job(sc)
    return Evaluator(job.dse, job.trainer, **kw)  # type: ignore[arg-type]


class _Batches:
    """Records the (round key, mini-batch indices) of every training job."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[int, list[np.ndarray]]] = []
        real = training.batch_indices

        def record(part, device, round, steps, batch, seed, samples=None):  # type: ignore[no-untyped-def]
            out = real(part, device, round, steps, batch, seed, samples)
            self.calls.append((round, out))
            return out

        monkeypatch.setattr(training, "batch_indices", record)


def test_full_network_candidate_is_exactly_the_reference(tmp_path: Path) -> None:
    # Common random numbers: the d = 0 candidate trains on the reference's streams, so it
    # repeats its bits and its excess is exactly 0 in every repeat (a candidate drawn on
    # other mini-batches would differ by the batches' luck, ~0.01-0.1 nats here).
    ev = evaluator(tmp_path)
    res = ev.proxy((0.0, 0.0))
    assert res.excess == (0.0, 0.0, 0.0) and not res.diverged
    assert res.mean == 0.0 and res.spread == 0.0
    # the reference itself did move away from the warm start: the 0 is not vacuous
    assert all(abs(x - ev.reference.warm_loss) > 1e-4 for x in ev.reference.losses)


def test_excess_is_candidate_minus_reference_on_the_same_batches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ev = evaluator(tmp_path)
    seen = _Batches(monkeypatch)
    vec = (0.5, 0.25)
    res = ev.proxy(vec)
    # candidate's jobs: one per repeat, on the repeats' keys, in order
    assert [r for r, _ in seen.calls] == list(ev.reference.streams) == [1, 2, 3]
    # by hand: train the candidate from the warm start on repeat 2's key, measure the
    # validation loss of the result with plain PyTorch on the held-out samples
    t = ev.trainer
    job = training.UpdateJob(0, 2, 1.0, (vec,), (0,) * 3)
    state = t.train(ev.reference.warm, job).update.state
    t.load(state)
    t.model.eval()
    with torch.no_grad():
        loss = float(F.cross_entropy(t.model(t.data.x_test), t.data.y_test))
    assert res.excess[1] == pytest.approx(loss - ev.reference.losses[1], abs=1e-6)
    # the reference of each repeat trained on the candidate's mini-batches of that repeat
    ref_seen = _Batches(monkeypatch)
    evaluator(tmp_path)  # builds its reference (warm-up on key 0, then keys 1..3)
    ref_jobs = {r: b for r, b in ref_seen.calls}
    assert sorted(ref_jobs) == [0, 1, 2, 3]
    for r, batches in seen.calls[:3]:
        assert all(np.array_equal(a, b) for a, b in zip(batches, ref_jobs[r]))


def test_repeats_use_different_streams(tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _Batches(monkeypatch)
    ev = evaluator(tmp_path)
    ev.proxy((0.5, 0.5))
    rounds = [r for r, _ in seen.calls]
    assert rounds == [0, 1, 2, 3, 1, 2, 3]  # warm-up, references, candidate
    first = {r: b[0] for r, b in seen.calls}
    for a in range(4):
        for b in range(a + 1, 4):
            assert not np.array_equal(first[a], first[b]), (a, b)
    res = ev.proxy((0.5, 0.5))
    assert len(set(res.excess)) == 3  # three different values, not one repeated
    # another set of streams: other keys, same warm start, other reference losses
    other = evaluator(tmp_path, streams=(4, 5, 6))
    for k, v in ev.reference.warm.items():
        assert torch.equal(v, other.reference.warm[k]), k
    assert set(other.reference.losses).isdisjoint(ev.reference.losses)
    with pytest.raises(ValueError, match="warm-up"):
        evaluator(tmp_path, streams=(0, 1))


def test_mean_and_spread_by_hand() -> None:
    r = ProxyResult((0.1, 0.3, 0.2), False)
    assert r.mean == pytest.approx(0.2)
    assert r.spread == pytest.approx(0.1)  # sample standard deviation (ddof 1)
    assert ProxyResult((0.4,), False).spread == 0.0
    bad = ProxyResult((0.1, math.nan, math.nan), True)
    assert math.isnan(bad.mean) and math.isnan(bad.spread)
    back = ProxyResult.from_json(bad.to_json())  # the cache's JSON has no NaN
    assert back.diverged and back.excess[0] == 0.1 and math.isnan(back.excess[2])


def break_training(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Candidates whose first rate is >= 0.5 come back diverged: NaN weights, or finite
    weights blown up so that the loss explodes (far above the untrained model's). Those
    are the cheapest vectors, which a search without the divergence rule puts on the
    front (tests/test_dse.py uses it too)."""
    real = training.Trainer.train

    def train(self, state, job):  # type: ignore[no-untyped-def]
        res = real(self, state, job)
        if job.vectors[0][0] >= 0.5:
            for k, v in res.update.state.items():
                if v.is_floating_point() and "weight" in k:
                    v.mul_(math.nan if how == "nan" else 1e3)
        return res

    monkeypatch.setattr(training.Trainer, "train", train)


@pytest.mark.parametrize("how", ["nan", "explode"])
def test_divergence_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                how: str) -> None:
    ev = evaluator(tmp_path)
    break_training(monkeypatch, how)
    bad = ev.proxy((0.5, 0.0))
    assert bad.diverged and math.isnan(bad.mean)
    good = ev.proxy((0.25, 0.5))
    assert not good.diverged and math.isfinite(good.mean)


def test_diverging_reference_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"training\.optimizer\.lr"):
        evaluator(tmp_path, "training.optimizer.lr=1e6")


def test_static_bn_recomputes_statistics_on_the_training_split(tmp_path: Path) -> None:
    ev = evaluator(tmp_path, *CNN, "model.options.bn_stats=static",
                   "eval.batch_size=100000")
    t = ev.trainer
    state = {k: v.clone() for k, v in ev.reference.warm.items()}
    loss = ev.val_loss(state)
    # by hand: the first batch norm's statistics are the mean and unbiased variance of the
    # first convolution's output over the DSE's training split (one batch: it is smaller
    # than eval.batch_size), validation samples excluded
    x = t.data.x_train
    h = F.conv2d(x, state["convs.0.weight"], state["convs.0.bias"], padding=1)
    rm = t.model.get_submodule("bns.0").running_mean
    rv = t.model.get_submodule("bns.0").running_var
    torch.testing.assert_close(rm, h.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rv, h.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5)
    ds, _ = training.build_data(load_scenario(None, [], text=TINY).data, 1, 0)
    assert len(x) + len(t.data.x_test) == len(ds.x_train)  # together: the training set
    assert len(t.data.x_test) == round(0.2 * len(ds.x_train))  # dse.val_fraction
    # the state's own statistics do not matter: they are recomputed
    for k in state:
        if "running_mean" in k:
            state[k] += 5.0
    assert ev.val_loss(state) == loss
    # whereas with running statistics they are what evaluation uses
    run = evaluator(tmp_path, *CNN, "model.options.bn_stats=running")
    rs = {k: v.clone() for k, v in run.reference.warm.items()}
    base = run.val_loss(rs)
    for k in rs:
        if "running_mean" in k:
            rs[k] += 5.0
    assert run.val_loss(rs) != base


@pytest.mark.parametrize("stats", ["running", "batch", "static"])
def test_every_bn_mode_gives_a_proxy(tmp_path: Path, stats: str) -> None:
    ev = evaluator(tmp_path, *CNN, f"model.options.bn_stats={stats}")
    assert ev.proxy((0.0,) * 4).excess == (0.0, 0.0, 0.0)
    res = ev.proxy((0.5,) * 4)
    assert not res.diverged and all(math.isfinite(x) and x != 0 for x in res.excess)
