"""The engine: exact timing, offline drop-outs, FedAvg equivalence, determinism."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fleetsim.build import build, load_scenario
from fleetsim.engine import INF
from fleetsim.nn import build_model
from fleetsim.results import write_run
from fleetsim.rng import int_seed
from fleetsim.training import batch_indices
from tests.conftest import TINY, make_traces

ONE_DEVICE = """
name: one
seed: 3
data: {dataset: digits, partition: {name: iid}}
model: {arch: mlp, options: {hidden: [16]}}
fleet:
  devices: 1
  classes:
    - {name: only, share: 1.0, peak_macs_per_s: 1.0e9, uplink_mbps: 1.0e6,
       downlink_mbps: 1.0e6, latency_s: 0.0}
  traces: {generator: constant}
training:
  rounds: 3
  clients_per_round: 1
  deadline_s: null
  local_steps: 5
  batch_size: 16
  optimizer: {lr: 0.1}
eval: {every_rounds: 1}
"""


def test_fedavg_one_device_equals_centralised_sgd(tmp_path: Path) -> None:
    sc = load_scenario(None, text=ONE_DEVICE)
    built = build(sc)
    log = built.engine.run()
    assert [r["completed"] for r in log.rounds] == [1, 1, 1]
    trainer = built.backend.trainer  # type: ignore[union-attr]
    # centralised: the same initial weights, the same batches, torch's own SGD
    torch.manual_seed(int_seed(sc.seed, "init"))
    ref = build_model("mlp", trainer.data.input_shape, trainer.data.num_classes,
                      {"hidden": [16]})
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for r in range(3):
        for idx in batch_indices(trainer.partition, 0, r, 5, 16, sc.seed):
            t = torch.from_numpy(idx)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(ref(trainer.data.x_train[t]), trainer.data.y_train[t]).backward()
            opt.step()
    state = built.engine.state
    assert state is not None
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=1e-6)


def test_device_offline_mid_step_drops_at_offline_time(write_trace_file, tmp_path: Path
                                                       ) -> None:  # type: ignore[no-untyped-def]
    ts = make_traces([([0.0], [1.0])], [([0.0, 7.5], [1, 0])])
    write_trace_file("off.h5", ts)
    text = ONE_DEVICE.replace("traces: {generator: constant}", "traces: {file: off.h5}")
    text = text.replace("rounds: 3", "rounds: 1").replace("deadline_s: null", "deadline_s: 100")
    (tmp_path / "s.yaml").write_text(text + "\n")
    sc = load_scenario(tmp_path / "s.yaml", ["training.mode=timing", "training.local_steps=20"])
    built = build(sc)
    # one mini-batch = exactly one simulated second at availability 1
    macs = built.engine.costs.step_macs(None, 16)
    sc = load_scenario(tmp_path / "s.yaml", ["training.mode=timing", "training.local_steps=20",
                                             f"fleet.classes.0.peak_macs_per_s={macs}"])
    log = build(sc).engine.run()
    (o,) = log.timeline
    assert o.status == "dropped"
    assert o.t_end == 7.5
    assert o.steps == 7  # steps 1..7 ended before 7.5 s, step 8 was cut off
    assert log.rounds[0]["completed"] == 0 and log.rounds[0]["dropped"] == 1


def test_step_times_follow_the_cost_model_exactly(tmp_path: Path) -> None:
    text = ONE_DEVICE.replace("rounds: 3", "rounds: 2")
    sc = load_scenario(None, ["training.mode=timing"], text=text)
    built = build(sc)
    eng = built.engine
    log = eng.run()
    path = eng.fleet.path(0)
    nbytes = eng.costs.model_bytes()
    work = 5 * eng.costs.step_macs(None, 16) / 1.0e9
    expect = path.download_s(nbytes) + work + path.upload_s(nbytes)
    assert log.timeline[0].t_end == pytest.approx(expect, rel=1e-12)
    assert log.rounds[1]["t_start_s"] == pytest.approx(expect, rel=1e-12)


def test_deadline_discards_late_work(tmp_path: Path) -> None:
    sc = load_scenario(None, ["training.mode=timing", "training.deadline_s=0.5",
                              "fleet.classes.0.peak_macs_per_s=1e4"],
                       text=ONE_DEVICE)
    log = build(sc).engine.run()
    assert all(r["completed"] == 0 and r["late"] == 1 for r in log.rounds)
    assert [r["t_end_s"] - r["t_start_s"] for r in log.rounds] == pytest.approx([0.5] * 3)
    assert all(o.t_end == o.t_start + 0.5 for o in log.timeline)


def test_same_seed_same_rounds_file_different_seed_differs(tmp_path: Path) -> None:
    def rounds_csv(seed: int, name: str) -> bytes:
        sc = load_scenario(None, [f"seed={seed}"], text=TINY)
        built = build(sc)
        log = built.engine.run()
        write_run(tmp_path / name, sc, log)
        return (tmp_path / name / "rounds.csv").read_bytes()

    a = rounds_csv(0, "a")
    assert a == rounds_csv(0, "b")
    assert a != rounds_csv(1, "c")


def test_overcommit_keeps_exactly_k() -> None:
    sc = load_scenario(None, ["training.mode=timing", "policy.options.stragglers=overcommit",
                              "training.deadline_s=null"], text=TINY)
    log = build(sc).engine.run()
    assert len(log.rounds) == 3
    for r in log.rounds:
        assert r["selected"] == 6  # ceil(1.3 * 4)
        assert r["completed"] == 4
        assert r["not_needed"] == 2


def test_wait_mode_waits_for_everyone() -> None:
    sc = load_scenario(None, ["training.mode=timing", "policy.options.stragglers=wait",
                              "training.deadline_s=0.001"], text=TINY)
    log = build(sc).engine.run()
    assert all(r["completed"] + r["dropped"] == r["selected"] for r in log.rounds)
    assert all(o.t_end < INF for o in log.timeline)


def test_fleet_that_never_comes_online_is_a_clear_error(write_trace_file, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:  # type: ignore[no-untyped-def]
    from fleetsim.cli import main

    write_trace_file("off.h5", make_traces([([0.0], [1.0])], [([0.0], [0])]))
    text = ONE_DEVICE.replace("traces: {generator: constant}", "traces: {file: off.h5}")
    (tmp_path / "s.yaml").write_text(text)
    code = main(["run", str(tmp_path / "s.yaml"), "--set", "training.mode=timing",
                 "--set", "training.idle_wait_s=1e6", "--quiet"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "no device was online" in err and "Traceback" not in err


def test_round_is_evaluated_beside_the_next_rounds_training_and_told_after_it() -> None:
    """A backend whose evaluations are pending: the engine takes round r's result only
    after training round r+1, and the callbacks hear of round r, accuracy included,
    only then (and in order)."""
    from fleetsim.backends import Evaluation, InProcess
    from fleetsim.callbacks import Callback

    events: list[tuple[str, int, float]] = []

    class Later(Evaluation):
        pending = True

        def __init__(self, backend: Recording, r: int, state: dict) -> None:
            self.backend, self.r, self.state = backend, r, state

        def result(self) -> tuple[float, float]:
            events.append(("result", self.r, math.nan))
            return self.backend.trainer.evaluate(self.state)

    class Recording(InProcess):
        evals = 0
        trains = 0

        def start_evaluation(self, state: dict) -> Evaluation:
            events.append(("start", self.evals, math.nan))
            self.evals += 1
            return Later(self, self.evals - 1, state)

        def train(self, state, jobs):  # type: ignore[no-untyped-def]
            events.append(("train", self.trains, math.nan))
            self.trains += 1
            yield from super().train(state, jobs)

    class Told(Callback):
        def on_round_end(self, row: dict) -> None:
            events.append(("told", row["round"], row["accuracy"]))

    sc = load_scenario(None, text=TINY, overrides=[
        "training.deadline_s=null", "fleet.traces.options={levels: [1.0], mean_offline_s: 0}"])
    want = build(sc).engine.run().rounds
    built = build(sc, callbacks=[Told()])
    built.engine.backend = Recording(built.backend.settings, trainer=built.backend.trainer)
    rows = built.engine.run().rounds
    assert rows == want  # the same figures as evaluating at once
    assert [e[:2] for e in events] == [
        ("train", 0), ("start", 0),
        ("train", 1), ("result", 0), ("told", 0), ("start", 1),
        ("train", 2), ("result", 1), ("told", 1), ("start", 2),
        ("result", 2), ("told", 2)]
    told = [e[2] for e in events if e[0] == "told"]
    assert told == [r["accuracy"] for r in want] and not any(map(math.isnan, told))
