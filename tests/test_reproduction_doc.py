"""docs/reproduction.md's tables are exactly the study's summary.csv."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_reproduction_tables_match_summary() -> None:
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "check_reproduction.py")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_reproduction_commands_name_real_policies_and_scenarios() -> None:
    from fleetsim.policies import POLICIES

    doc = (REPO / "docs" / "reproduction.md").read_text()
    line = next(ln for ln in doc.splitlines() if "--policies" in ln)
    names = line.split('"')[1].split(",")
    assert {n.split(":")[0] for n in names} <= set(POLICIES.names())
    assert (REPO / "scenarios" / "paper" / "mnist.yaml").is_file()


def test_tables_give_range_bounds_split_and_one_seed_times(tmp_path: Path) -> None:
    """The study's tables from a summary.csv that `fleetsim report` writes today: the
    final accuracy's min-max over seeds, ≥/≤ on speed-up bounds, the evaluated split, and
    no [x, x] interval for a time only one seed gave."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from check_reproduction import tables
    finally:
        sys.path.pop(0)
    import numpy as np

    from fleetsim.report import RunData, summarise, summary_csv

    def run(policy: str, seed: int, t: list[float], acc: list[float], o: str) -> RunData:
        n = len(t)
        return RunData("mnist", policy, o, seed, {
            "round": np.arange(n), "t_start_s": np.concatenate([[0.0], t[:-1]]),
            "t_end_s": np.array(t, float), "accuracy": np.array(acc, float),
            "selected": np.full(n, 3), "completed": np.full(n, 2),
            "mean_kept_share": np.ones(n)})

    o = "fleet.traces.options.mean_dwell_s=5"
    runs = [run("fedavg", s, [40, 80], [0.7, 0.8], o) for s in range(3)]
    runs += [run("distreal", s, [20, 80], [0.7, a], o) for s, a in enumerate((0.9, 0.6, 0.75))]
    runs += [run("fjord", 0, [30, 80], [0.7, 0.8], o)]
    runs += [run("fjord", s, [30, 80], [0.5, 0.6], o) for s in (1, 2)]
    summary = tmp_path / "summary.csv"
    summary.write_text(summary_csv(summarise(runs, 0.7)))
    text = tables(summary)
    assert "(target accuracy 0.7, test split, compared at T" in text
    assert "min–max over seeds" in text
    line = {ln.split(" | ")[0][2:]: ln for ln in text.splitlines() if ln.startswith("| ")}
    assert "| 0.600–0.900 |" in line["distreal"] and "| 2.00 |" in line["distreal"]
    assert "0.5 (1 seed)" in line["fjord"] and "[0.5, 0.5]" not in line["fjord"]
    assert f"| ≤{40 / ((30 + 80 + 80) / 3):.2f} |" in line["fjord"]


def test_equal_time_tables_name_batch_norm_and_the_ablation_pivots(tmp_path: Path) -> None:
    """The rerun's tables (issue 26/28): each method's batch-norm mode and its accuracy at
    the common time; the ablation table one row per method, one column per mode."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from check_reproduction import ablation_table, tables
    finally:
        sys.path.pop(0)
    import numpy as np

    from fleetsim.report import RunData, summarise, summary_csv

    def run(policy: str, seed: int, acc: list[float], o: str, bn: str, src: str) -> RunData:
        t = [300.0, 600.0]
        return RunData("mnist", policy, o, seed, {
            "round": np.arange(2), "t_start_s": np.array([0.0, 300.0]),
            "t_end_s": np.array(t), "accuracy": np.array(acc, float),
            "selected": np.full(2, 3), "completed": np.full(2, 2),
            "mean_kept_share": np.ones(2)}, "test", 600.0, bn, src)

    o = "fleet.traces.options.mean_dwell_s=20"
    runs = [run("fedavg@lr=0.02", s, [0.8, 0.9 + s / 100], o, "running", "model default")
            for s in range(3)]
    runs += [run("distreal@lr=0.02", s, [0.7, 0.85], o, "batch", "method default")
             for s in range(3)]
    summary = tmp_path / "summary.csv"
    summary.write_text(summary_csv(summarise(runs, 0.9)))
    text = tables(summary)
    assert "compared at T = 10.0 min (time budget)" in text
    line = {ln.split(" | ")[0][2:]: ln for ln in text.splitlines() if ln.startswith("| ")}
    assert "| batch (method default) |" in line["distreal@lr=0.02"]
    assert "| 0.850 [0.850, 0.850] |" in line["distreal@lr=0.02"]
    abl = []
    for mode, shift in (("running", 0.05), ("batch", 0.0), ("static", 0.02)):
        src = "method default" if mode == "batch" else "method default: batch"
        abl += [run("distreal@lr=0.02", s, [0.7, 0.85 + shift], f"{o}+model.options.bn_stats="
                    f"{mode}", mode, src) for s in range(3)]
    abl_csv = tmp_path / "ablation.csv"
    abl_csv.write_text(summary_csv(summarise(abl, 0.9)))
    table = ablation_table(abl_csv)
    row = next(ln for ln in table.splitlines() if ln.startswith("| distreal"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert cells == ["0.900 [0.900, 0.900], 3/3", "**0.850 [0.850, 0.850], 0/3**",
                     "0.870 [0.870, 0.870], 0/3"]
    # a method without a batch-norm default: the model's (running) is its own
    fed = [run("fedavg@lr=0.02", s, [0.7, 0.9], f"{o}+model.options.bn_stats={m}", m,
               "scenario") for m in ("running", "batch") for s in range(3)]
    abl_csv.write_text(summary_csv(summarise(fed, 0.9)))
    row = next(ln for ln in ablation_table(abl_csv).splitlines()
               if ln.startswith("| fedavg"))
    assert row.count("**") == 2 and row.split("|")[2].strip().startswith("**")
