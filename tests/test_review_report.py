"""Review (issue 13, the parts not yet reviewed): report numbers a reviewer can trust.

Speedups over seeds that never reach the target, settings sorted as numbers, and
one-seed intervals shown as such.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from fleetsim.report import (
    RunData,
    natural_key,
    report_md,
    summarise,
    summary_csv,
    table_tex,
)


def run(policy: str, seed: int, t_end: list[float], acc: list[float],
        overrides: str = "default") -> RunData:
    n = len(t_end)
    t = np.array(t_end, float)
    return RunData("s", policy, overrides, seed, {
        "round": np.arange(n), "t_start_s": np.concatenate([[0.0], t[:-1]]), "t_end_s": t,
        "accuracy": np.array(acc, float), "selected": np.full(n, 3),
        "completed": np.full(n, 2), "mean_kept_share": np.ones(n)})


def by_policy(rows: list) -> dict:  # type: ignore[type-arg]
    return {s.policy: s for s in rows}


def test_speedup_of_a_policy_that_misses_the_target_in_some_seeds_is_a_bound() -> None:
    # "lucky" reaches 0.7 at 10 s in seed 0 only; seeds 1 and 2 end at 100 s without it.
    # Its mean over the seeds that reached (10 s) against fedavg's 50 s used to give a
    # speedup of 5.0, as if it were five times faster; every seed of it needs > 10 s, and
    # the only sound statement is an upper bound: at most 50 / mean(10, 100, 100).
    runs = [run("fedavg", s, [50, 100], [0.7, 0.8]) for s in range(3)]
    runs += [run("lucky", 0, [10, 100], [0.7, 0.8]),
             run("lucky", 1, [50, 100], [0.5, 0.6]),
             run("lucky", 2, [50, 100], [0.5, 0.6])]
    s = by_policy(summarise(runs, 0.7))
    assert s["lucky"].never_reached == (1, 2)
    assert s["lucky"].speedup_bound == "<="
    assert math.isclose(s["lucky"].speedup, 50.0 / np.mean([10.0, 100.0, 100.0]))
    assert s["fedavg"].speedup == 1.0 and s["fedavg"].speedup_bound == ""
    row = next(csv.DictReader(io.StringIO(summary_csv(list(s.values())))))
    assert "speedup_bound" in row
    md = report_md(Path("out"), list(s.values()), 0.7, "fedavg", 0)
    assert "≤" in md
    assert "$\\leq$" in table_tex(list(s.values()), "fedavg")


def test_speedup_against_a_censored_baseline_is_a_lower_bound() -> None:
    runs = [run("fedavg", 0, [40, 80], [0.7, 0.8]),
            run("fedavg", 1, [40, 80], [0.5, 0.6])]  # never: needs more than 80 s
    runs += [run("fast", s, [10, 20], [0.7, 0.8]) for s in range(2)]
    s = by_policy(summarise(runs, 0.7))
    assert s["fast"].speedup_bound == ">="
    assert math.isclose(s["fast"].speedup, np.mean([40.0, 80.0]) / 10.0)


def test_speedup_both_censored_is_unknown() -> None:
    runs = [run("fedavg", 0, [40, 80], [0.7, 0.8]), run("fedavg", 1, [40, 80], [0.5, 0.6]),
            run("slow", 0, [40, 80], [0.5, 0.7]), run("slow", 1, [40, 80], [0.5, 0.6])]
    s = by_policy(summarise(runs, 0.7))
    assert math.isnan(s["slow"].speedup)


def test_speedup_pairs_seeds() -> None:
    # the baseline has seeds 0-2, the policy only seed 0 (the others failed): the policy
    # must be compared with the baseline's seed 0, not with its mean over three seeds
    runs = [run("fedavg", 0, [10, 20], [0.7, 0.8]), run("fedavg", 1, [90, 100], [0.7, 0.8]),
            run("fedavg", 2, [90, 100], [0.7, 0.8]), run("other", 0, [20, 40], [0.7, 0.8])]
    s = by_policy(summarise(runs, 0.7))
    assert s["other"].speedup == 10.0 / 20.0 and s["other"].speedup_bound == ""


def test_settings_and_policies_sort_as_numbers() -> None:
    runs = [run("fedavg", 0, [10], [0.9], overrides=f"training.clients_per_round={k}")
            for k in (10, 2, 5)]
    runs += [run(f"federated_dropout+rate={r}", 0, [10], [0.9],
                 overrides="training.clients_per_round=2") for r in ("0.5", "0.25", "0.125")]
    rows = summarise(runs, 0.5)
    settings = list(dict.fromkeys(s.overrides for s in rows))
    assert settings == [f"training.clients_per_round={k}" for k in (2, 5, 10)]
    pols = [s.policy for s in rows if s.overrides.endswith("=2")]
    assert pols == ["fedavg", "federated_dropout+rate=0.125", "federated_dropout+rate=0.25",
                    "federated_dropout+rate=0.5"]
    assert sorted(["a=1e-2", "a=1e-3", "a=0.5"], key=natural_key) == ["a=1e-3", "a=1e-2",
                                                                      "a=0.5"]


def test_one_seed_shows_no_interval() -> None:
    rows = summarise([run("fedavg", 0, [10, 20], [0.7, 0.8])], 0.7)
    md = report_md(Path("out"), rows, 0.7, "fedavg", 0)
    line = next(ln for ln in md.splitlines() if ln.startswith("| fedavg"))
    assert "[10, 10]" not in line and "1 seed" in line
    assert "[0.800, 0.800]" not in line
    assert "[0.800, 0.800]" not in table_tex(rows, "fedavg")
