"""fleetsim report: numbers checked by hand against the rounds files, and the outputs."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest

from fleetsim.cli import main
from fleetsim.errors import UserError
from fleetsim.report import (
    RunData,
    default_target,
    mean_band,
    mean_ci,
    report_md,
    resolve_baseline,
    summarise,
    summary_csv,
    table_tex,
    tex_escape,
    time_to_target,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "scenarios" / "tiny.yaml")
POLICIES = ("fedavg", "fedavg+stragglers=wait")
SEEDS = (0, 1)
OUTPUTS = ("summary.csv", "report.md", "table.tex", "accuracy_vs_time.png",
           "round_durations.png", "kept_share.png", "speedup.png")


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("batch")
    assert main(["compare", TINY, "--policies", "fedavg,fedavg:stragglers=wait", "--seeds",
                 "0-1", "--out", str(out), "--jobs", "2", "--quiet"]) == 0
    return out


def rounds_rows(out: Path, policy: str, seed: int) -> list[dict[str, str]]:
    with (out / "tiny" / policy / "default" / f"seed-{seed}" / "rounds.csv").open() as f:
        return list(csv.DictReader(f))


def by_hand(out: Path, target: float) -> dict[str, dict[str, object]]:
    """The report's numbers, computed from rounds.csv with plain Python."""
    res: dict[str, dict[str, object]] = {}
    for p in POLICIES:
        times, ends, finals, sel, comp = [], [], [], 0, 0
        for s in SEEDS:
            rows = rounds_rows(out, p, s)
            evaluated = [r for r in rows if r["accuracy"] != ""]
            hit = [float(r["t_end_s"]) for r in evaluated if float(r["accuracy"]) >= target]
            times.append(hit[0] if hit else None)
            ends.append(hit[0] if hit else float(rows[-1]["t_end_s"]))
            finals.append(float(evaluated[-1]["accuracy"]))
            sel += sum(int(r["selected"]) for r in rows)
            comp += sum(int(r["completed"]) for r in rows)
        reached = [t for t in times if t is not None]
        res[p] = {"time": sum(reached) / len(reached) if reached else math.nan,
                  "final_min": min(finals), "final_max": max(finals),
                  # for speed-ups: a seed that never reached the target counts with the
                  # end of its run (a lower bound on its time)
                  "censored_time": sum(ends) / len(ends), "censored": len(reached) < len(ends),
                  "reached": len(reached),
                  "never": " ".join(str(s) for s, t in zip(SEEDS, times) if t is None),
                  "final": sum(finals) / len(finals), "in_time": comp / sel}
    return res


def read_summary(out: Path) -> dict[str, dict[str, str]]:
    with (out / "summary.csv").open() as f:
        return {r["policy"]: r for r in csv.DictReader(f)}


def num(text: str) -> float:
    return float(text) if text else math.nan


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12)


@pytest.mark.parametrize("target", [0.5, 0.6])
def test_time_to_accuracy_matches_hand_computation(batch: Path, target: float,
                                                   capsys: pytest.CaptureFixture[str]
                                                   ) -> None:
    assert main(["report", str(batch), "--target-accuracy", str(target),
                 "--baseline", "fedavg"]) == 0
    assert str(batch / "report.md") in capsys.readouterr().out  # says where files went
    hand, got = by_hand(batch, target), read_summary(batch)
    assert list(got) == list(POLICIES)  # baseline first
    # the interval check below runs only for policies that reached the target: some must
    assert any(int(got[p]["reached"]) for p in POLICIES)
    for p in POLICIES:
        row = got[p]
        assert num(row["target_accuracy"]) == target
        assert same(num(row["time_to_target_s"]), hand[p]["time"])  # type: ignore[arg-type]
        assert int(row["reached"]) == hand[p]["reached"]
        assert row["never_reached_seeds"] == hand[p]["never"]
        assert same(num(row["final_accuracy"]), hand[p]["final"])  # type: ignore[arg-type]
        assert num(row["final_accuracy_min"]) == hand[p]["final_min"]
        assert num(row["final_accuracy_max"]) == hand[p]["final_max"]
        assert row["eval_split"] == "test"
        assert same(num(row["in_time_share"]), hand[p]["in_time"])  # type: ignore[arg-type]
        assert num(row["rounds"]) == 4
        if int(row["reached"]):
            assert num(row["time_to_target_s_lo"]) <= num(row["time_to_target_s"]) \
                <= num(row["time_to_target_s_hi"])
    b, o = hand["fedavg"], hand["fedavg+stragglers=wait"]
    row = got["fedavg+stragglers=wait"]
    if b["reached"] and o["reached"] and not (b["censored"] and o["censored"]):
        assert same(num(row["speedup"]), b["censored_time"] / o["censored_time"])  # type: ignore[operator]
        assert row["speedup_bound"] == (">=" if b["censored"] else "<=" if o["censored"]
                                        else "")
    else:
        assert math.isnan(num(row["speedup"]))
    assert num(got["fedavg"]["speedup"]) == 1.0 or not b["reached"]


def test_outputs_and_default_target(batch: Path) -> None:
    assert main(["report", str(batch)]) == 0
    for name in OUTPUTS:
        assert (batch / name).stat().st_size > 0
    for name in OUTPUTS[3:]:
        assert (batch / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finals = {p: by_hand(batch, 1.0)[p]["final"] for p in POLICIES}
    expected = math.floor(0.9 * max(finals.values()) * 100 + 1e-9) / 100  # type: ignore
    got = read_summary(batch)
    assert {num(r["target_accuracy"]) for r in got.values()} == {expected}
    md = (batch / "report.md").read_text()
    assert "## tiny — default" in md and "| fedavg+stragglers=wait |" in md
    assert "Time to target" in md and "Speedup vs fedavg" in md
    tex = (batch / "table.tex").read_text()
    for rule in ("\\toprule", "\\midrule", "\\bottomrule", "\\begin{tabular}"):
        assert rule in tex
    assert "fedavg+stragglers=wait" in tex
    assert not list(batch.glob("*.tmp"))  # every output was renamed into place


def test_report_errors(tmp_path: Path, batch: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "no complete runs" in capsys.readouterr().err
    assert main(["report", str(batch), "--baseline", "nope"]) == 2
    assert "--baseline 'nope'" in capsys.readouterr().err
    assert main(["report", str(batch), "--target-accuracy", "1.5"]) == 2
    # a spec form of the baseline names the same folder
    assert resolve_baseline("fedavg:stragglers=wait", list(POLICIES)) == POLICIES[1]


# ----------------------------------------------------------------------------- units


def fake_run(policy: str, seed: int, t_end: list[float], acc: list[float],
             selected: int = 3, completed: int = 2) -> RunData:
    n = len(t_end)
    t = np.array(t_end, float)
    return RunData("s", policy, "default", seed, {
        "round": np.arange(n), "t_start_s": np.concatenate([[0.0], t[:-1]]), "t_end_s": t,
        "accuracy": np.array(acc, float), "selected": np.full(n, selected),
        "completed": np.full(n, completed), "mean_kept_share": np.ones(n)})


def test_time_to_target_skips_unevaluated_rounds() -> None:
    r = fake_run("a", 0, [10, 20, 30, 40], [0.2, math.nan, 0.7, 0.9])
    assert time_to_target(r, 0.5) == 30.0
    assert time_to_target(r, 0.9) == 40.0
    assert math.isnan(time_to_target(r, 0.95))


def test_mean_ci_bootstrap_and_fallbacks() -> None:
    e = mean_ci([1.0, 2.0, 3.0, 4.0, 10.0])
    assert e.method == "bca" and e.lo < e.mean < e.hi and e.mean == 4.0
    assert mean_ci([1.0, 2.0, 3.0, 4.0, 10.0]) == e  # fixed bootstrap seed
    one = mean_ci([5.0])
    assert (one.mean, one.lo, one.hi, one.method) == (5.0, 5.0, 5.0, "percentile")
    same_values = mean_ci([2.0, 2.0, 2.0])
    assert (same_values.lo, same_values.hi) == (2.0, 2.0)
    assert mean_ci([math.nan, 3.0]).n == 1
    assert mean_ci([]).n == 0 and math.isnan(mean_ci([]).mean)


def test_summary_never_reached_speedup_and_default_target() -> None:
    runs = [fake_run("fedavg", 0, [10, 20], [0.5, 0.8]),
            fake_run("fedavg", 1, [10, 20], [0.5, 0.6]),  # never reaches 0.7
            fake_run("fast", 0, [5, 10], [0.75, 0.8]),
            fake_run("fast", 1, [5, 10], [0.6, 0.8])]
    fed, fast = summarise(runs, 0.7)
    assert fed.policy == "fedavg" and fed.never_reached == (1,) and fed.time_s.mean == 20.0
    assert fast.time_s.mean == 7.5 and fast.speedup == 20.0 / 7.5 and fed.speedup == 1.0
    assert fed.in_time_share == 2 / 3
    # 90% of the best mean final accuracy (fast: 0.8), rounded down to 0.01
    assert default_target(runs) == 0.72


def test_mean_band_holds_final_value_after_a_run_ends() -> None:
    a = (np.array([1.0, 3.0]), np.array([0.2, 0.6]))
    b = (np.array([2.0, 5.0]), np.array([0.4, 1.0]))
    band = mean_band([a, b], points=4)
    assert band is not None
    grid, mean, lo, hi = band
    assert grid.tolist() == [2.0, 3.0, 4.0, 5.0]
    assert np.allclose(hi, [0.4, 0.6, 0.8, 1.0]) and np.allclose(lo, [0.4, 0.6, 0.6, 0.6])
    assert np.allclose(mean, [0.4, 0.6, 0.7, 0.8])
    assert mean_band([]) is None


def test_tex_escape() -> None:
    assert tex_escape("a_b&c%") == r"a\_b\&c\%"
    with pytest.raises(UserError):
        summarise([fake_run("x", 0, [1], [0.5])], target=0.0)


def test_table_gives_final_accuracy_range_over_seeds() -> None:
    runs = [fake_run("fedavg", s, [10, 20], [0.5, a]) for s, a in enumerate((0.8, 0.6, 0.7))]
    runs += [fake_run("one", 0, [10, 20], [0.5, 0.9])]
    fed, one = summarise(runs, 0.7)
    assert fed.final_range == (0.6, 0.8) and fed.final.mean == pytest.approx(0.7)
    md = report_md(Path("out"), [fed, one], 0.7, "fedavg", 0)
    line = next(ln for ln in md.splitlines() if ln.startswith("| fedavg"))
    assert "| 0.600–0.800 |" in line
    assert "Final accuracy, min–max" in md and "measured on the test split" in md
    one_line = next(ln for ln in md.splitlines() if ln.startswith("| one"))
    assert "0.900–0.900" not in one_line  # one seed has no range
    tex = table_tex([fed, one], "fedavg")
    assert "0.600--0.800" in tex and "Final min--max" in tex
    assert all(ln.count("&") == 11 for ln in tex.splitlines() if ln.endswith("\\\\"))
    rows = list(csv.DictReader(io.StringIO(summary_csv([fed, one]))))
    assert (rows[0]["final_accuracy_min"], rows[0]["final_accuracy_max"]) == ("0.6", "0.8")


def test_report_says_which_split_was_evaluated(tmp_path: Path) -> None:
    out = tmp_path / "b"
    assert main(["compare", TINY, "--policies", "fedprox", "--seeds", "0", "--out", str(out),
                 "--quiet", "--set", "training.rounds=1", "--set",
                 "data.validation_fraction=0.2", "--set", "eval.split=validation"]) == 0
    (out / "speedup.png").write_bytes(b"old")
    assert main(["report", str(out)]) == 0
    (row,) = read_summary(out).values()
    assert row["eval_split"] == "validation"
    assert "measured on the validation split" in (out / "report.md").read_text()
    # no baseline (no fedavg, none given): no speed-up figure, and no stale one left
    assert not (out / "speedup.png").exists()
    assert "speedup.png" not in (out / "report.md").read_text()
    assert main(["report", str(out), "--baseline", "fedprox"]) == 0
    assert (out / "speedup.png").read_bytes()[:4] == b"\x89PNG"
