"""Backends: a worker pool (and Ray) train the same bits as the in-process backend.

Beyond the MLP with FedAvg (full model, no buffers), the same holds for sub-model
policies (random channels per device and round, or leading channels per class) on models
with batch norm, whose running statistics travel with every update: the final global
model, buffers included, and every round's row must be identical.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from fleetsim.backends import Pool
from fleetsim.build import backend_settings, build, load_scenario, trainer_settings
from fleetsim.cli import main
from fleetsim.training import Trainer, UpdateJob, build_data
from tests.conftest import TINY

# digits + MLP, 4 rounds of 3 devices; its slow class misses the deadline at times, so the
# rounds aggregate different numbers of updates
SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.yaml"


def _rounds_csv(tmp_path: Path, name: str, *overrides: str) -> bytes:
    out = tmp_path / name
    args = ["run", str(SCENARIO), "--out", str(out), "--quiet"]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    return (out / "rounds.csv").read_bytes()


def test_pool_gives_the_in_process_rounds_csv(tmp_path: Path) -> None:
    local = _rounds_csv(tmp_path, "local")
    pool = _rounds_csv(tmp_path, "pool", "training.backend=pool", "training.workers=2")
    assert local.count(b"\n") == 5  # header + 4 rounds, with accuracies
    assert b",30.0,3,2,1," in local  # a round with a late device
    assert pool == local


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    """One local Ray for every Ray test of this module (its start-up takes seconds)."""
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_backend_gives_the_in_process_rounds_csv(tmp_path: Path, ray_session: Any) -> None:
    local = _rounds_csv(tmp_path, "local")
    remote = _rounds_csv(tmp_path, "ray", "training.backend=ray", "training.workers=2")
    assert ray_session.is_initialized()  # the backend used the session, did not start its own
    assert remote == local


# sub-model policies on batch-norm models, on scenarios/tiny.yaml with faster devices (the
# slow class still misses the deadline at low availability)
SUBMODEL_CASES = {
    "cnn4-bn-federated_dropout": [
        "model.arch=cnn4", "model.options={channels: [4, 6, 8, 8], norm: bn}",
        "policy.name=federated_dropout", "policy.options={rate: 0.25}",
        "fleet.classes.0.peak_macs_per_s=4.0e6", "fleet.classes.1.peak_macs_per_s=3.0e5"],
    "resnet8-heterofl": [
        "model.arch=resnet8", "model.options={width: 0.25}",
        "policy.name=heterofl", "policy.options={widths: {fast: 1.0, slow: 0.5}}",
        "fleet.classes.0.peak_macs_per_s=1.0e7", "fleet.classes.1.peak_macs_per_s=2.0e6"],
}
_IN_PROCESS: dict[str, tuple[list[dict[str, Any]], dict[str, torch.Tensor]]] = {}


def _run(case: str, *backend: str) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Every round's row and the final global model (parameters and buffers)."""
    sc = load_scenario(SCENARIO, [*SUBMODEL_CASES[case], *backend])
    built = build(sc)
    try:
        log = built.engine.run()
    finally:
        assert built.backend is not None
        built.backend.close()
    state = built.engine.state
    assert state is not None
    return log.rounds, {k: v.clone() for k, v in state.items()}


def _in_process(case: str) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    if case not in _IN_PROCESS:
        rows, state = _IN_PROCESS[case] = _run(case)
        # the case exercises what it is meant to: sub-models were trained and aggregated,
        # and the model carries batch-norm statistics
        assert len(rows) == 4
        assert any(r["completed"] > 0 and r["mean_kept_share"] < 1.0 for r in rows)
        assert any(k.endswith("running_var") for k in state)
    return _IN_PROCESS[case]


def _assert_same(got: tuple[list[dict[str, Any]], dict[str, torch.Tensor]],
                 want: tuple[list[dict[str, Any]], dict[str, torch.Tensor]]) -> None:
    assert got[0] == want[0]  # every round's row, floats exactly
    assert got[1].keys() == want[1].keys()
    for k, v in want[1].items():
        assert torch.equal(got[1][k], v), k


@pytest.mark.parametrize("case", sorted(SUBMODEL_CASES))
def test_pool_trains_the_in_process_bits_for_sub_models_with_batch_norm(case: str) -> None:
    _assert_same(_run(case, "training.backend=pool", "training.workers=2"), _in_process(case))


@pytest.mark.parametrize("case", sorted(SUBMODEL_CASES))
def test_ray_trains_the_in_process_bits_for_sub_models_with_batch_norm(
        case: str, ray_session: Any) -> None:
    _assert_same(_run(case, "training.backend=ray", "training.workers=2"), _in_process(case))


ASYNC = ("server.mode=async", "server.concurrency=4", "server.buffer_size=2")


def test_ray_gives_the_in_process_files_in_async_mode(tmp_path: Path, ray_session: Any
                                                      ) -> None:
    local = _rounds_csv(tmp_path, "a-local", *ASYNC)
    remote = _rounds_csv(tmp_path, "a-ray", *ASYNC, "training.backend=ray",
                         "training.workers=2")
    assert local.count(b"\n") == 5 and remote == local
    assert _timeline(tmp_path / "a-local") == _timeline(tmp_path / "a-ray")


def _timeline(out: Path) -> bytes:
    import h5py

    with h5py.File(out / "run.h5") as f:
        return b"".join(f["timeline"][k][:].tobytes() for k in sorted(f["timeline"]))


def test_trainer_uses_the_data_it_is_given() -> None:
    sc = load_scenario(None, text=TINY)
    data = build_data(sc.data, sc.fleet.devices, sc.seed)
    t = Trainer(trainer_settings(sc), data)
    assert t.data is data[0] and t.partition is data[1]
    # and the same initial model as a trainer that loads its own data
    fresh = Trainer(trainer_settings(sc))
    assert all(torch.equal(v, fresh.initial_state()[k]) for k, v in t.initial_state().items())


def test_pool_shares_the_dataset_instead_of_copying_it() -> None:
    sc = load_scenario(None, text=TINY, overrides=["training.backend=pool",
                                                   "training.workers=1"])
    backend = Pool(trainer_settings(sc), backend_settings(sc))
    try:
        ds = backend.trainer.data
        assert all(t.is_shared() for t in (ds.x_train, ds.y_train, ds.x_test, ds.y_test))
        assert all(v.is_shared() for v in backend.shared.values())
    finally:
        backend.close()


# --------------------------------------------------------------------------- small rounds

# The shape of issue 17's workload, tiny: Dirichlet split, a few short rounds with no
# deadline on devices always online, evaluation after every round in evaluation batches
# (150) that the evaluation slices (100) do not divide, over 359 test digits
SMALL_ROUNDS = [
    "data.partition={name: dirichlet, options: {alpha: 0.5}}", "fleet.devices=12",
    "fleet.traces.options={levels: [1.0], mean_offline_s: 0}", "training.deadline_s=null",
    "training.clients_per_round=4", "training.local_steps=2", "training.batch_size=10",
    "training.optimizer={lr: 0.05, momentum: 0.0}", "eval.every_rounds=1",
    "eval.batch_size=150"]


def test_pool_gives_the_in_process_bits_on_small_rounds_evaluated_every_round() -> None:
    want = _run_small()
    assert len(want[0]) == 4 and all(0.0 < r["accuracy"] <= 1.0 for r in want[0])
    for workers in ("1", "2"):
        _assert_same(_run_small("training.backend=pool", f"training.workers={workers}"),
                     want)


def test_split_evaluation_scores_the_whole_test_set_as_plain_pytorch_does() -> None:
    import torch.nn.functional as F

    rows, state = _run_small("training.backend=pool", "training.workers=2")
    sc = load_scenario(SCENARIO, SMALL_ROUNDS)
    t = Trainer(trainer_settings(sc))
    x, y = t.data.x_test, t.data.y_test
    assert len(y) == 359  # four slices, the last one short; three evaluation batches
    t.load(state)
    t.model.eval()
    with torch.no_grad():
        out = t.model(x)  # all 360 at once
    assert rows[-1]["accuracy"] == float((out.argmax(1) == y).double().mean())
    assert rows[-1]["loss"] == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-6)


def _run_small(*backend: str) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    built = build(load_scenario(SCENARIO, [*SMALL_ROUNDS, *backend]))
    try:
        log = built.engine.run()
    finally:
        assert built.backend is not None
        built.backend.close()
    assert built.engine.state is not None
    return log.rounds, {k: v.clone() for k, v in built.engine.state.items()}


def test_pool_evaluates_in_its_workers_not_in_the_main_process(monkeypatch: Any) -> None:
    def refuse(*_: Any) -> None:
        raise AssertionError("evaluated in the main process")

    # the workers start from a clean forkserver process: the patch reaches only this one
    monkeypatch.setattr(Trainer, "eval_logits", refuse)
    rows, _ = _run_small("training.backend=pool", "training.workers=2")
    assert all(0.0 < r["accuracy"] <= 1.0 for r in rows)


def test_pool_does_not_overwrite_a_model_that_an_evaluation_still_reads() -> None:
    sc = load_scenario(SCENARIO, [*SMALL_ROUNDS, "training.backend=pool",
                                  "training.workers=2"])
    backend = Pool(trainer_settings(sc), backend_settings(sc))
    try:
        a = backend.initial_state()
        want = backend.trainer.evaluate(a)
        b = {k: torch.zeros_like(v) for k, v in a.items()}  # scores differently
        assert backend.trainer.evaluate(b) != want
        ev = backend.start_evaluation(a)
        assert ev.pending
        job = UpdateJob(0, 0, 1.0, ((),), (0,))
        trained = list(backend.train(b, [job]))  # a different model, while a is evaluated
        assert ev.result() == want
        # and the job trained from b, not a
        assert trained[0].update.state.keys() == a.keys()
        assert backend.trainer.train(b, job).loss_sum == trained[0].loss_sum
    finally:
        backend.close()


def test_pool_left_in_the_middle_of_a_round_still_trains_the_next() -> None:
    """Trained states come back in shared slots (two per worker); a round whose results
    are not all taken (an error in the engine) must give its slots back, or the next
    round would wait for ever."""
    import threading

    sc = load_scenario(SCENARIO, [*SMALL_ROUNDS, "training.backend=pool",
                                  "training.workers=1"])
    backend = Pool(trainer_settings(sc), backend_settings(sc))
    th = threading.Thread()
    try:
        state = backend.initial_state()
        jobs = [UpdateJob(d, 0, 1.0, ((),), (0, 0)) for d in range(6)]  # 3x the slots
        first = backend.train(state, jobs)
        next(first)
        first.close()  # abandoned after one result
        got: list[Any] = []
        th = threading.Thread(target=lambda: got.extend(backend.train(state, jobs)),
                              daemon=True)
        th.start()
        th.join(timeout=60)
        assert not th.is_alive(), "the pool waits for result slots that never come free"
        for job, res in zip(jobs, got, strict=True):
            want = backend.trainer.train(state, job)
            assert res.update.device == job.device and res.loss_sum == want.loss_sum
            assert all(torch.equal(res.update.state[k], v) for k, v in
                       want.update.state.items())
    finally:
        if th.is_alive():
            backend.pool.terminate()  # stuck workers would never join
        else:
            backend.close()
