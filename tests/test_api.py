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
