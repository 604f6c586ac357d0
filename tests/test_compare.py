"""fleetsim compare: grid expansion, determinism across --jobs, resume, failures."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetsim.batch import (
    Cell,
    PolicySpec,
    expand_grid,
    parse_seeds,
    parse_sets,
    plan,
    safe_name,
    split_top,
)
from fleetsim.build import load_scenario
from fleetsim.cli import main
from fleetsim.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "scenarios" / "tiny.yaml")
POLICIES = "fedavg,fedavg:stragglers=wait"
CELLS = [f"tiny/{p}/default/seed-{s}" for p in ("fedavg", "fedavg+stragglers=wait")
         for s in (0, 1)]


def compare_args(out: Path, jobs: int = 1, *more: str) -> list[str]:
    return ["compare", TINY, "--policies", POLICIES, "--seeds", "0-1", "--out", str(out),
            "--jobs", str(jobs), "--quiet", *more]


def rounds_bytes(out: Path) -> dict[str, bytes]:
    return {c: (out / c / "rounds.csv").read_bytes() for c in CELLS}


@pytest.fixture(scope="module")
def grid_jobs2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("jobs2")
    assert main(compare_args(out, 2)) == 0
    return out


# ----------------------------------------------------------------------------- parsing


def test_safe_name_is_readable_and_injective() -> None:
    assert safe_name("training.clients_per_round=3") == "training.clients_per_round=3"
    a, b = safe_name("model.options.hidden=[16, 16]"), safe_name("model.options.hidden=_16__16_")
    assert a != b and "/" not in a and " " not in a
    assert safe_name("x=a/b") != safe_name("x=a_b")
    assert len(safe_name("k=" + "v" * 500)) < 120
    assert not safe_name(".hidden").startswith(".")


def test_split_top_keeps_brackets_and_quotes() -> None:
    assert split_top("1,[16,16],'a,b',{x: 1, y: 2}", ",") == [
        "1", "[16,16]", "'a,b'", "{x: 1, y: 2}"]


def test_policy_spec() -> None:
    s = PolicySpec.parse("fedavg:stragglers=overcommit;overcommit=1.5")
    assert s == PolicySpec("fedavg", (("stragglers", "overcommit"), ("overcommit", "1.5")))
    assert s.label == "fedavg+stragglers=overcommit+overcommit=1.5"
    assert PolicySpec.parse("fedavg").label == "fedavg"
    # another policy starts from its own defaults; the scenario's policy keeps its options
    assert "policy.options={}" in s.overrides("distreal")
    assert "policy.options={}" not in s.overrides("fedavg")
    with pytest.raises(UserError, match="not key=value"):
        PolicySpec.parse("fedavg:stragglers")


def test_seeds_and_sets() -> None:
    assert parse_seeds("0-4") == (0, 1, 2, 3, 4)
    assert parse_seeds("0-2,9") == (0, 1, 2, 9)
    for bad in ("4-1", "a", "1,1", "-1"):
        with pytest.raises(UserError, match="--seeds"):
            parse_seeds(bad)
    axes = parse_sets(["training.clients_per_round=3,5", "model.options.hidden=[8,8]"])
    assert [a.values for a in axes] == [("3", "5"), ("[8,8]",)]
    for bad in (["training.rounds"], ["a=1", "a=2"], ["a=1,,2"], ["a=1,1"]):
        with pytest.raises(UserError, match="--set"):
            parse_sets(bad)


def test_grid_expansion_and_folders() -> None:
    g = expand_grid([TINY], POLICIES, "0-1",
                    ["training.clients_per_round=2,3", "training.rounds=2"])
    assert len(g.cells) == 2 * 2 * 2
    first: Cell = g.cells[0]
    assert first.rel_dir == "tiny/fedavg/training.clients_per_round=2/seed-0"
    assert first.constant == ("training.rounds=2",)
    assert {c.policy.label for c in g.cells} == {"fedavg", "fedavg+stragglers=wait"}
    # the scenario's own policy when --policies is not given; "default" without axes
    (only,) = expand_grid([TINY], None, "3", []).cells
    assert only.rel_dir == "tiny/fedavg/default/seed-3"


def test_a_dotted_policy_option_sets_a_scenario_key_for_that_policy_only() -> None:
    g = expand_grid([TINY], "fedavg:training.optimizer.lr=0.2,fedprox", "0", [])
    by_label = {c.policy.label: c for c in g.cells}
    assert set(by_label) == {"fedavg@lr=0.2", "fedprox"}
    lr = {label: load_scenario(TINY, c.set_args(g.base_policy[TINY])).training.optimizer.lr
          for label, c in by_label.items()}
    default_lr = load_scenario(TINY).training.optimizer.lr
    assert default_lr != 0.2
    assert lr == {"fedavg@lr=0.2": 0.2, "fedprox": default_lr}
    # the dotted key is a scenario key, not a policy option
    assert "policy.options.training.optimizer.lr=0.2" not in by_label[
        "fedavg@lr=0.2"].set_args("fedavg")
    with pytest.raises(UserError, match="unknown key"):
        expand_grid([TINY], "fedavg:training.nope=1", "0", [])


def test_a_baseline_is_found_at_its_tuned_setting() -> None:
    from fleetsim.batch import policy_of_label
    from fleetsim.report import resolve_baseline

    spec = PolicySpec.parse("fedavg:stragglers=wait;training.optimizer.lr=0.1")
    assert spec.label == "fedavg+stragglers=wait@lr=0.1"
    assert policy_of_label(spec.label) == "fedavg+stragglers=wait"
    tuned = ["fedavg@lr=0.05", "fedavg+stragglers=wait@lr=0.1", "fedprox@lr=0.02"]
    assert resolve_baseline(None, tuned) == "fedavg@lr=0.05"
    assert resolve_baseline("fedavg:stragglers=wait", tuned) == spec.label
    assert resolve_baseline("fedavg", ["fedavg", *tuned]) == "fedavg"  # exact name first
    assert resolve_baseline(None, ["fedprox@lr=0.02"]) is None
    with pytest.raises(UserError, match="not a policy of this batch"):
        resolve_baseline("fedavg", ["fedavg@lr=0.05", "fedavg@lr=0.1"])  # ambiguous


@pytest.mark.parametrize(("argv", "match"), [
    (["nope.yaml"], "does not exist"),
    ([TINY, "--policies", "fedavg,no-such-policy"], "unknown policy 'no-such-policy'"),
    ([TINY, "--policies", "fedavg:bogus=1"], "unknown option"),
    ([TINY, "--policies", "fedavg,fedavg"], "names a policy twice"),
    ([TINY, TINY], "share the results folder"),
    ([TINY, "--set", "training.nope=1"], "unknown key"),
    ([TINY, "--jobs", "0"], "--jobs"),
    ([TINY, "--address", "auto", "--backend", "local"], "--address"),
])
def test_up_front_errors(argv: list[str], match: str, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", *argv, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert match in " ".join(err.split())
    assert not (tmp_path / "o").exists()  # nothing ran, nothing written


# ----------------------------------------------------------------------------- running


def test_jobs_do_not_change_results(grid_jobs2: Path, tmp_path: Path) -> None:
    assert main(compare_args(tmp_path, 1)) == 0
    one, two = rounds_bytes(tmp_path), rounds_bytes(grid_jobs2)
    assert one == two
    # the two policies really differ, so the comparison above is not vacuous
    assert one[CELLS[0]] != one[CELLS[2]]
    assert all((tmp_path / c / "run.h5").is_file() for c in CELLS)
    assert not (tmp_path / "failures.csv").exists()


def test_rerun_skips_complete_cells(grid_jobs2: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    before = {c: (grid_jobs2 / c / "run.h5").stat().st_mtime_ns for c in CELLS}
    assert main(compare_args(grid_jobs2, 2)) == 0
    assert "0 ran, 4 already complete" in capsys.readouterr().out
    assert {c: (grid_jobs2 / c / "run.h5").stat().st_mtime_ns for c in CELLS} == before


def test_changed_scenario_is_not_mixed_in(grid_jobs2: Path) -> None:
    g = expand_grid([TINY], POLICIES, "0-1", ["training.rounds=2"])
    with pytest.raises(UserError, match="different scenario"):
        plan(g, grid_jobs2)


def _wait_for(pred, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_killed_batch_resumes_without_recomputing(grid_jobs2: Path, tmp_path: Path) -> None:
    out = tmp_path / "batch"
    # more seeds than the other tests: warm cells take a fraction of a second, and the
    # batch must still be running when it is killed
    cmd = [sys.executable, "-m", "fleetsim.cli", *compare_args(out, 1), "--seeds", "0-4"]
    cells = [f"tiny/{p}/default/seed-{s}" for p in ("fedavg", "fedavg+stragglers=wait")
             for s in range(5)]
    # own session: killing the group also kills the forkserver and the running cell,
    # like a crashed machine would
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert _wait_for(lambda: any((out / c / "run.h5").exists() for c in cells), 180), \
            proc.stderr.read().decode() if proc.poll() is not None else "no run finished"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = [c for c in cells if (out / c / "run.h5").exists()]
    assert 1 <= len(done) < len(cells)
    stats = {c: ((out / c / "run.h5").stat().st_ino, (out / c / "run.h5").stat().st_mtime_ns)
             for c in done}

    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"{len(cells) - len(done)} ran, {len(done)} already complete" in res.stdout
    for c in done:  # finished cells were not recomputed
        h5 = (out / c / "run.h5").stat()
        assert (h5.st_ino, h5.st_mtime_ns) == stats[c]
    assert all((out / c / "run.h5").is_file() for c in cells)
    assert rounds_bytes(out) == rounds_bytes(grid_jobs2)


def read_failures(out: Path) -> dict[str, dict[str, str]]:
    with (out / "failures.csv").open(newline="") as f:
        return {r["dir"]: r for r in csv.DictReader(f)}


def test_failing_cell_is_recorded_and_others_run(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # 1000 clients per round > 10 devices: that cell fails validation; the other runs
    rc = main(["compare", TINY, "--policies", "fedavg", "--seeds", "0", "--set",
               "training.clients_per_round=3,1000", "--out", str(tmp_path), "--quiet"])
    assert rc == 1
    assert "1 ran, 0 already complete, 1 failed" in capsys.readouterr().out
    bad = "tiny/fedavg/training.clients_per_round=1000/seed-0"
    fails = read_failures(tmp_path)
    assert list(fails) == [bad]
    assert "exceeds fleet.devices" in fails[bad]["error"]
    assert fails[bad]["seed"] == "0" and fails[bad]["policy"] == "fedavg"
    assert (tmp_path / "tiny/fedavg/training.clients_per_round=3/seed-0/run.h5").is_file()
    assert not (tmp_path / bad / "run.h5").exists()


def test_run_time_failure_then_success_clears_it(tmp_path: Path) -> None:
    # the trace file is checked only when the worker builds the fleet: a run-time failure
    traces = tmp_path / "traces.h5"
    argv = ["compare", TINY, "--policies", "fedavg", "--seeds", "0", "--set",
            f"fleet.traces.file=null,{traces}", "--out", str(tmp_path / "o"), "--quiet"]
    assert main(argv) == 1
    (bad,) = read_failures(tmp_path / "o")
    assert "trace file" in read_failures(tmp_path / "o")[bad]["error"]
    assert main(["traces", "generate", "--kind", "markov", "--devices", "10",
                 "--horizon-s", "86400", "--seed", "1", "-o", str(traces)]) == 0
    assert main(argv) == 0
    assert (tmp_path / "o" / bad / "run.h5").is_file()
    assert not (tmp_path / "o" / "failures.csv").exists()
