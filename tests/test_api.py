"""The Python API: the doc page's examples run, and the tables have the documented columns."""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

import fleetsim
from fleetsim.results import ROUND_COLUMNS, STATUS, TIMELINE_COLUMNS
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def test_api_doc_examples_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S)
    assert len(blocks) >= 3
    shutil.copytree(ROOT / "scenarios", tmp_path / "scenarios")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        env: dict[str, object] = {}
        for code in blocks:
            exec(compile(code, "docs/api.md", "exec"), env)
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "final accuracy" in out and "simulated minutes" in out
    assert (tmp_path / "runs" / "api-example" / "run.h5").is_file()
    table = env["table"]
    assert isinstance(table, pd.DataFrame) and len(table) == 4  # 2 policies x 2 seeds
    assert sorted(table["policy"].unique()) == ["fedavg", "fedprox"]
    # a change by value: validated, method defaults and all
    short = env["short"]
    assert short.training.rounds == 2 and short.policy.name == "fedprox"
    assert short.policy.options == {"mu": 0.01}
    # the bad value's error is the command line's, word for word
    from fleetsim.cli import main

    os.chdir(tmp_path)
    try:
        assert main(["run", "scenarios/tiny.yaml", "--set", "training.rounds=3",
                     "--set", "training.deadline_s=-1"]) == 2
    finally:
        os.chdir(cwd)
    cli_err = " ".join(capsys.readouterr().err.removeprefix("error: ").split())
    api_err = " ".join(str(env["message"]).split())
    assert api_err == cli_err and "training.deadline_s" in api_err
    # the final model is the last aggregated state: a fresh trainer evaluating it gets the
    # run's last accuracy (the last round is always evaluated); the initial one does not
    import torch

    from fleetsim.build import trainer_settings
    from fleetsim.training import Trainer

    res, model = env["result"], env["model"]
    assert isinstance(model, torch.nn.Module)
    trainer = Trainer(trainer_settings(res.scenario))
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    acc, _ = trainer.evaluate(model.state_dict())
    assert acc == res.final_accuracy
    init_acc, _ = trainer.evaluate(initial)
    assert init_acc != res.final_accuracy
    # compare over objects: one row per (policy, seed), rounds stacked, classes too
    cmp = env["cmp"]
    assert isinstance(cmp, fleetsim.Comparison) and len(cmp.runs) == 4
    assert set(cmp.rounds["policy"]) == {"fedavg", "fedavg+stragglers=wait"}
    assert (cmp.runs["sim_time_s"] <= 90 + 1e-9).all()
    for (pol, seed), grp in cmp.rounds.groupby(["policy", "seed"]):
        ref = cmp.runs[(cmp.runs.policy == pol) & (cmp.runs.seed == seed)].iloc[0]
        assert grp["t_end_s"].iloc[-1] == ref["sim_time_s"]
    assert set(cmp.per_class["device_class"]) == {"fast", "slow"}


def test_run_returns_dataframes_with_the_documented_columns() -> None:
    sc = fleetsim.load_scenario(None, ["training.rounds=2"], text=TINY)
    res = fleetsim.run(sc)
    assert isinstance(res, fleetsim.Result)
    assert tuple(res.rounds.columns) == ROUND_COLUMNS
    assert tuple(res.timeline.columns) == (*TIMELINE_COLUMNS, "device_class")
    assert len(res.rounds) == 2 and list(res.rounds["round"]) == [0, 1]
    assert len(res.timeline) == sum(res.rounds["selected"])
    assert set(res.timeline["status"].cat.categories) == set(STATUS)
    # the same numbers as the engine's own log
    assert list(res.rounds["accuracy"]) == [r["accuracy"] for r in res.log.rounds]
    assert res.final_accuracy == res.log.rounds[-1]["accuracy"]
    assert not math.isnan(res.final_accuracy)


def test_same_scenario_same_bits_as_the_engine_run_twice() -> None:
    sc = fleetsim.load_scenario(None, ["training.rounds=2"], text=TINY)
    a, b = fleetsim.run(sc), fleetsim.run(sc)
    pd.testing.assert_frame_equal(a.rounds, b.rounds)
    pd.testing.assert_frame_equal(a.timeline, b.timeline)


def test_load_scenario_errors_like_the_cli() -> None:
    from fleetsim.errors import UserError

    with pytest.raises(UserError, match=r"policy\.name"):
        fleetsim.load_scenario(None, ["policy.name=nope"], text=TINY)


def test_curated_namespace() -> None:
    assert set(fleetsim.__all__) == {"Comparison", "Result", "__version__", "compare",
                                     "load_scenario", "run", "with_changes"}
    with pytest.raises(AttributeError):
        _ = fleetsim.not_there  # type: ignore[attr-defined]


def test_tensorboard_scalars_read_back(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sc = fleetsim.load_scenario(None, ["training.rounds=3", "output.tensorboard=true",
                                       f"output.tensorboard_dir={tmp_path / 'tb'}"],
                                text=TINY)
    res = fleetsim.run(sc)
    ev = EventAccumulator(str(tmp_path / "tb"))
    ev.Reload()
    acc = [(e.step, e.value) for e in ev.Scalars("fleetsim/accuracy")]
    want = [(int(r), a) for r, a in zip(res.rounds["round"], res.rounds["accuracy"])
            if not math.isnan(a)]
    assert len(acc) == len(want) == 3
    assert [s for s, _ in acc] == [s for s, _ in want]
    assert [v for _, v in acc] == pytest.approx([v for _, v in want], rel=1e-6)
    completed = [e.value for e in ev.Scalars("fleetsim/completed")]
    assert completed == list(res.rounds["completed"].astype(float))
    by_time = ev.Scalars("fleetsim/accuracy_vs_sim_s")
    assert [e.step for e in by_time] == [int(t) for t in res.rounds["t_end_s"]]


def test_tensorboard_through_the_cli_writes_beside_the_run(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from fleetsim.cli import main

    (tmp_path / "s.yaml").write_text(TINY)
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o"), "--quiet",
                 "--set", "training.rounds=2", "--set", "output.tensorboard=true"]) == 0
    events = list((tmp_path / "o" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    # a rerun replaces the earlier run's events instead of adding a second run to them
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o"), "--quiet",
                 "--set", "training.rounds=2", "--set", "output.tensorboard=true"]) == 0
    assert len(list((tmp_path / "o" / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_scenarios_built_in_python_get_validation_and_method_defaults() -> None:
    """However a scenario was built, `run` validates it like the CLI and applies its
    method's defaults (HeteroFL: static batch-norm statistics)."""
    import yaml

    from fleetsim.config import Scenario
    from fleetsim.errors import UserError

    doc = yaml.safe_load(TINY)
    doc["model"] = {"arch": "cnn4", "options": {"channels": [4, 4, 4, 4], "norm": "bn"}}
    doc["policy"] = {"name": "heterofl"}
    doc["training"]["rounds"] = 1
    raw = Scenario.model_validate(doc)
    assert "bn_stats" not in raw.model.options  # nothing applied yet
    res = fleetsim.run(raw)
    assert res.scenario.model.options["bn_stats"] == "static"
    loaded = fleetsim.load_scenario(None, ["policy.name=heterofl", "training.rounds=1",
                                           "model.arch=cnn4", "model.options={channels: "
                                           "[4, 4, 4, 4], norm: bn}"], text=TINY)
    assert res.rounds.equals(fleetsim.run(loaded).rounds)  # the same bits either way
    # model_copy skips pydantic's checks; run does not
    bad = raw.model_copy(update={"training": raw.training.model_copy(
        update={"deadline_s": -1.0})})
    with pytest.raises(UserError, match=r"training\.deadline_s"):
        fleetsim.run(bad)
    # a scenario from load_scenario, changed by model_copy, is validated again (the
    # issue's "Negative delay" deep inside SimPy), and its change is kept, not the file's
    bad = loaded.model_copy(update={"training": loaded.training.model_copy(
        update={"deadline_s": -1.0})})
    with pytest.raises(UserError, match=r"training\.deadline_s"):
        fleetsim.run(bad)
    two = loaded.model_copy(update={"training": loaded.training.model_copy(
        update={"rounds": 2})})
    assert len(fleetsim.run(two).rounds) == 2
    # with_changes on a Python-built scenario starts from what was set (as a file would)
    assert fleetsim.with_changes(raw, {"training.rounds": 2}).training.rounds == 2
    with pytest.raises(UserError, match="give local_steps or local_epochs, not both"):
        fleetsim.with_changes(raw, {"training.local_epochs": 1})  # TINY sets local_steps


def test_final_model_is_the_last_global_state_on_a_worker_pool() -> None:
    """In a pool the workers train and evaluate; the model in this process never holds the
    global state unless the result loads it."""
    from fleetsim.build import trainer_settings
    from fleetsim.training import Trainer

    sc = fleetsim.load_scenario(None, ["training.rounds=2", "training.backend=pool",
                                       "training.workers=2"], text=TINY)
    res = fleetsim.run(sc)
    acc, _ = Trainer(trainer_settings(res.scenario)).evaluate(res.model.state_dict())
    assert acc == res.final_accuracy


def test_compare_objects_with_out_is_a_folder_report_reads(tmp_path: Path) -> None:
    from fleetsim.report import write_report

    sc = fleetsim.load_scenario(None, ["training.rounds=2"], text=TINY)
    cmp = fleetsim.compare([sc], tmp_path / "out", policies=["fedavg", "fedprox"],
                           seeds=[0, 1])
    write_report(tmp_path / "out", formats=("png",))
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert sorted(summary["policy"]) == ["fedavg", "fedprox"]
    for pol, grp in cmp.runs.groupby("policy"):
        row = summary[summary.policy == pol].iloc[0]
        assert row["final_accuracy"] == pytest.approx(grp["final_accuracy"].mean())
