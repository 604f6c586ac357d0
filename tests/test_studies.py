"""Issue 26: studies a reviewer accepts -- equal-time comparison, results per device
class, guardrails, paper-ready outputs. Every expected number is counted by hand from the
runs' own CSV files or recomputed with plain Python/numpy."""

from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pytest

from fleetsim.cli import main
from fleetsim.fleet import Fleet
from fleetsim.per_class import jain

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "scenarios" / "tiny.yaml")
STATUS = ("completed", "late", "dropped", "not_needed", "rejected", "too_slow", "stale")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _curve(run_dir: Path) -> tuple[list[float], list[float]]:
    rows = _rows(run_dir / "rounds.csv")
    pts = [(float(r["t_end_s"]), float(r["accuracy"])) for r in rows if r["accuracy"]]
    return [t for t, _ in pts], [a for _, a in pts]


@pytest.fixture(scope="module")
def unequal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FedAvg discarding stragglers (rounds end at the 30 s deadline) against FedAvg
    waiting for them (rounds as long as the slowest device): the same number of rounds
    ends at very different simulated times."""
    out = tmp_path_factory.mktemp("unequal")
    assert main(["compare", TINY, "--policies", "fedavg,fedavg:stragglers=wait",
                 "--seeds", "0-2", "--set", "training.rounds=4", "--out", str(out),
                 "--quiet"]) == 0
    return out


def test_report_compares_at_the_earliest_end_and_warns(
        unequal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(unequal), "--formats", "png"]) == 0
    runs = {p: [unequal / "tiny" / p / "default" / f"seed-{s}" for s in range(3)]
            for p in ("fedavg", "fedavg+stragglers=wait")}
    ends = {p: [float(_rows(d / "rounds.csv")[-1]["t_end_s"]) for d in ds]
            for p, ds in runs.items()}
    t_common = min(min(v) for v in ends.values())
    # the rounds really differ in length: more than 10% apart
    assert np.mean(ends["fedavg+stragglers=wait"]) > 1.1 * np.mean(ends["fedavg"])
    summary = {r["policy"]: r for r in _rows(unequal / "summary.csv")}
    for p, dirs in runs.items():
        # hand: the last evaluated accuracy at or before T, per seed
        at = []
        for d in dirs:
            t, a = _curve(d)
            before = [x for tt, x in zip(t, a) if tt <= t_common]
            at.append(before[-1] if before else math.nan)
        row = summary[p]
        assert float(row["common_time_s"]) == pytest.approx(t_common)
        assert row["common_time_rule"] == "earliest end"
        assert float(row["end_time_s"]) == pytest.approx(np.mean(ends[p]))
        ok = [x for x in at if not math.isnan(x)]
        assert float(row["accuracy_at_common_time"]) == pytest.approx(np.mean(ok))
    md = (unequal / "report.md").read_text()
    assert "the earliest end among the compared runs" in md
    assert "**Warning:**" in md and "more than 10% apart" in md
    assert "training.time_budget_s" in md


def test_compare_points_to_the_time_budget(unequal: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # run again: nothing recomputed, but the note about unequal ends is printed
    assert main(["compare", TINY, "--policies", "fedavg,fedavg:stragglers=wait",
                 "--seeds", "0-2", "--set", "training.rounds=4", "--out", str(unequal),
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "more than 10% apart" in err and "training.time_budget_s" in err


def test_a_common_time_budget_is_the_comparison_time_and_no_warning(
        tmp_path: Path) -> None:
    out = tmp_path / "fair"
    assert main(["compare", TINY, "--policies", "fedavg,fedavg:stragglers=wait",
                 "--seeds", "0-2", "--set", "training.rounds=null",
                 "--set", "training.time_budget_s=150", "--out", str(out), "--quiet"]) == 0
    assert main(["report", str(out), "--formats", "png"]) == 0
    for row in _rows(out / "summary.csv"):
        assert float(row["common_time_s"]) == 150.0
        assert row["common_time_rule"] == "time budget"
        assert float(row["end_time_s"]) == pytest.approx(150.0)
        assert row["interval"] == "95% CI" and row["warnings"] == ""
    md = (out / "report.md").read_text()
    assert "every run's training.time_budget_s" in md and "**Warning:**" not in md
    assert "## Warnings" not in md


# ----------------------------------------------------------------------------- per class


def test_per_class_columns_against_hand_counts(tmp_path: Path) -> None:
    """One run of tiny (two classes of five devices): every per-class figure is counted
    from the timeline with plain Python, the classes taken from the fleet itself."""
    import yaml

    from fleetsim.config import Scenario

    out = tmp_path / "one"
    assert main(["compare", TINY, "--policies", "fedavg", "--seeds", "0",
                 "--set", "training.rounds=6", "--out", str(out), "--quiet"]) == 0
    assert main(["report", str(out)]) == 0
    h5 = out / "tiny" / "fedavg" / "default" / "seed-0" / "run.h5"
    with h5py.File(h5) as f:
        tl = {k: f["timeline"][k][:] for k in f["timeline"]}
        sc = Scenario.model_validate(yaml.safe_load(f.attrs["scenario_text"]))
        names = json.loads(f.attrs["class_names"])
    fleet = Fleet(sc.fleet, sc.seed)
    assert names == ["fast", "slow"]
    assert list(tl["device_class"]) == [int(fleet.class_of[d]) for d in tl["device"]]
    got = {r["device_class"]: r for r in _rows(out / "per_class.csv")}
    for k, name in enumerate(names):
        members = [d for d in range(fleet.n) if fleet.class_of[d] == k]
        rows = [i for i in range(len(tl["device"])) if fleet.class_of[tl["device"][i]] == k]
        sel = len(rows)
        count = {s: sum(1 for i in rows if STATUS[tl["status"][i]] == s) for s in STATUS}
        done = [i for i in rows if STATUS[tl["status"][i]] == "completed"]
        x = [sum(1 for i in done if tl["device"][i] == d) for d in members]
        hand_jain = (sum(x) ** 2 / (len(x) * sum(v * v for v in x))) if sum(x) else math.nan
        r = got[name]
        assert int(r["devices"]) == len(members) and float(r["selected"]) == sel
        for s in ("completed", "late", "dropped", "too_slow"):
            assert float(r[f"{s}_share"]) == pytest.approx(count[s] / sel)
        assert float(r["macs_contributed"]) == pytest.approx(sum(tl["macs"][i] for i in done))
        assert float(r["macs_wasted"]) == pytest.approx(
            sum(tl["macs"][i] for i in rows if i not in done))
        assert float(r["bytes"]) == pytest.approx(
            sum(int(tl["bytes_down"][i]) + int(tl["bytes_up"][i]) for i in rows))
        if math.isnan(hand_jain):
            assert r["jain_participation"] == ""
        else:
            assert float(r["jain_participation"]) == pytest.approx(hand_jain)
    # the run is not degenerate: the fast class contributed, the slow one was late
    assert float(got["fast"]["completed_share"]) > 0 and float(got["slow"]["late_share"]) > 0
    md = (out / "report.md").read_text()
    assert "## Per device class" in md and "| fedavg | slow |" in md
    for ext in ("png", "pdf", "svg"):
        assert (out / f"per_class.{ext}").is_file()


def test_jain_by_hand() -> None:
    assert jain([1, 1, 1, 1]) == 1.0
    assert jain([4, 0, 0, 0]) == pytest.approx(0.25)  # 1/n: one device did all
    assert jain([2, 1, 1, 0]) == pytest.approx(16 / (4 * 6))
    assert math.isnan(jain([0, 0])) and math.isnan(jain([]))


# ----------------------------------------------------------------------------- guardrails


def _warnings(run_dir: Path) -> list[str]:
    with h5py.File(run_dir / "run.h5") as f:
        return json.loads(f.attrs["warnings"])


def test_no_aggregation_warns_everywhere(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    # a 0.01 s deadline: no device can download the model in time
    out = tmp_path / "b"
    assert main(["compare", TINY, "--policies", "fedavg", "--seeds", "0-2",
                 "--set", "training.deadline_s=0.01", "--out", str(out), "--quiet"]) == 0
    run = out / "tiny" / "fedavg" / "default" / "seed-0"
    assert sum(int(r["completed"]) for r in _rows(run / "rounds.csv")) == 0
    assert any("no update was aggregated" in w for w in _warnings(run))
    assert main(["report", str(out), "--formats", "png"]) == 0
    md = (out / "report.md").read_text()
    assert "## Warnings" in md and "no update was aggregated" in md
    assert "no update was aggregated" in _rows(out / "summary.csv")[0]["warnings"]
    capsys.readouterr()
    assert main(["run", TINY, "--set", "training.deadline_s=0.01", "--out",
                 str(tmp_path / "r")]) == 0
    assert "warning: no update was aggregated" in capsys.readouterr().err


def test_devices_below_one_batch_warn_and_samples_are_printed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 1437 training digits over 300 devices: 4-5 samples each, batch size 16
    assert main(["run", TINY, "--set", "fleet.devices=300", "--set", "training.rounds=1",
                 "--out", str(tmp_path / "r")]) == 0
    cap = capsys.readouterr()
    with h5py.File(tmp_path / "r" / "run.h5") as f:
        lo, med, hi = json.loads(f.attrs["samples_per_device"])
    assert hi < 16
    assert f"training samples per device: min {lo}, median {med:g}, max {hi}" in cap.out
    assert "warning: 300 of 300 devices hold fewer training samples than one mini-batch" \
        in cap.err
    assert any("fewer training samples than one mini-batch" in w
               for w in _warnings(tmp_path / "r"))


def test_a_healthy_run_has_no_warning(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", TINY, "--out", str(tmp_path / "r")]) == 0
    cap = capsys.readouterr()
    assert "warning" not in cap.err and "training samples per device: min 143" in cap.out
    assert _warnings(tmp_path / "r") == []


def test_two_seeds_give_a_range_not_a_ci(unequal: Path, tmp_path: Path) -> None:
    import shutil

    two = tmp_path / "two"
    shutil.copytree(unequal, two)
    for p in ("fedavg", "fedavg+stragglers=wait"):
        shutil.rmtree(two / "tiny" / p / "default" / "seed-2")
    assert main(["report", str(two), "--formats", "png"]) == 0
    rows = _rows(two / "summary.csv")
    for row in rows:
        finals = []
        for s in (0, 1):
            finals.append(_curve(two / "tiny" / row["policy"] / "default" / f"seed-{s}")[1][-1])
        assert row["interval"] == "min-max"
        assert float(row["final_accuracy_lo"]) == min(finals)
        assert float(row["final_accuracy_hi"]) == max(finals)
        assert "2 seeds, so its intervals are the min-max range" in row["warnings"]
    md = (two / "report.md").read_text()
    assert "(min–max, 2 seeds)" in md and "not 95% confidence intervals" in md
    # three seeds (the fixture itself): a 95% CI and no such warning
    assert main(["report", str(unequal), "--formats", "png"]) == 0
    assert all(r["interval"] == "95% CI" and "min-max" not in r["warnings"]
               for r in _rows(unequal / "summary.csv"))


# ----------------------------------------------------------------------------- outputs


def _pdf_pages(data: bytes) -> int:
    """Pages of a PDF, from its page objects (matplotlib writes them uncompressed)."""
    import re

    return len(re.findall(rb"/Type\s*/Page[^s]", data))


def test_report_writes_pdf_svg_png(unequal: Path, tmp_path: Path) -> None:
    import shutil

    style = "paper"
    out = tmp_path / style
    shutil.copytree(unequal, out)
    assert main(["report", str(out), "--style", style, "--tex-columns",
                 "policy,bn,acc_at_t,time,speedup,mb,wasted"]) == 0
    names = ["accuracy_vs_time", "accuracy_vs_rounds", "round_durations", "kept_share",
             "speedup", "per_class"]
    for name in names:
        pdf = (out / f"{name}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF-1.") and pdf.rstrip().endswith(b"%%EOF")
        assert _pdf_pages(pdf) == 1
        root = ET.parse(out / f"{name}.svg").getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        width_pt = float(root.get("width", "0").removesuffix("pt"))
        png = (out / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        png_w = int.from_bytes(png[16:20], "big")
        # one column: 3.3 in wide (72 pt an inch, 300 dpi), fonts embedded as TrueType
        assert width_pt == pytest.approx(3.3 * 72, abs=0.5)
        assert png_w == pytest.approx(3.3 * 300, abs=2)
        assert b"/FontFile2" in pdf and b"/Subtype /Type3" not in pdf
        # text stays text in the SVG (svg.fonttype none): titles can be edited
        assert any(el.tag.endswith("text") for el in root.iter())
    tex = (out / "table.tex").read_text()
    assert "\\begin{tabular}{llrrrrr}" in tex
    assert "Policy & BN & Acc. at $T$ & Time to target" in tex


def test_unknown_tex_column_is_a_user_error(unequal: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(unequal), "--tex-columns", "policy,nope"]) == 2
    assert main(["report", str(unequal), "--formats", "png,gif"]) == 2
    assert "--formats" in capsys.readouterr().err
    assert main(["report", str(unequal), "--tex-columns", "policy,nope"]) == 2
    err = capsys.readouterr().err
    assert "--tex-columns" in err and "'nope'" in err and "acc_at_t" in err


def test_report_help_prints_one_percent_sign(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    out = capsys.readouterr().out
    assert "95%" in out and "%%" not in out


def test_report_names_each_runs_batch_norm_mode(tmp_path: Path) -> None:
    """Issue 28: which normalisation each method ran with, and whether that is the
    method's paper default, the model's, or a departure."""
    out = tmp_path / "bn"
    assert main(["compare", TINY, "--policies",
                 "fedavg,heterofl,heterofl:model.options.bn_stats=running,"
                 "fedavg:model.options.bn_stats=batch",
                 "--seeds", "0", "--set", "model.arch=cnn4",
                 "--set", "model.options={channels: [4, 4, 4, 4], norm: bn}",
                 "--set", "training.rounds=1", "--out", str(out), "--quiet"]) == 0
    assert main(["report", str(out), "--formats", "png", "--tex-columns", "policy,bn"]) == 0
    got = {r["policy"]: (r["bn_stats"], r["bn_stats_source"])
           for r in _rows(out / "summary.csv")}
    assert got == {"fedavg": ("running", "model default"),
                   "heterofl": ("static", "method default"),
                   "heterofl@bn_stats=running": ("running", "method default: static"),
                   "fedavg@bn_stats=batch": ("batch", "scenario")}
    md = (out / "report.md").read_text()
    assert "| heterofl | 1 | static (method default) |" in md
    assert "| heterofl@bn_stats=running | 1 | running (method default: static) |" in md
    assert "heterofl & static" in (out / "table.tex").read_text()
    # a model without batch norm has no mode to name
    plain = tmp_path / "plain"
    assert main(["compare", TINY, "--policies", "fedavg", "--seeds", "0", "--set",
                 "training.rounds=1", "--out", str(plain), "--quiet"]) == 0
    assert main(["report", str(plain), "--formats", "png"]) == 0
    assert _rows(plain / "summary.csv")[0]["bn_stats"] == ""
    assert "| fedavg | 1 | – |" in (plain / "report.md").read_text()


def test_end_time_warning_threshold_by_hand() -> None:
    from fleetsim.guardrails import end_times_apart

    assert end_times_apart({"a": 100.0, "b": 111.0}, "s") is not None  # 11% apart
    assert end_times_apart({"a": 100.0, "b": 109.0}, "s") is None  # 9% apart
    assert end_times_apart({"a": 100.0}, "s") is None


def test_per_class_rows_count_never_selected_devices() -> None:
    """A hand-made timeline: class 0 has devices 0, 1, 2 (2 never selected), class 1 has
    devices 3, 4. Device 0 aggregated twice, device 1 once: x = (2, 1, 0), Jain =
    3^2 / (3 * 5) = 0.6, not the 0.9 of the selected devices alone."""
    from fleetsim.per_class import per_class_rows

    code = {s: i for i, s in enumerate(STATUS)}
    tl = {"device": np.array([0, 0, 1, 1, 3, 4, 3]),
          "device_class": np.array([0, 0, 0, 0, 1, 1, 1]),
          "status": np.array([code[s] for s in ("completed", "completed", "completed",
                                                "late", "dropped", "too_slow", "late")]),
          "macs": np.array([10.0, 10.0, 10.0, 4.0, 1.0, 0.0, 2.0]),
          "bytes_down": np.array([5, 5, 5, 5, 5, 5, 5]),
          "bytes_up": np.array([3, 3, 3, 1, 0, 0, 0])}
    rows = per_class_rows(tl, STATUS, ["a", "b"], [3, 2])
    a, b = rows
    assert a["selected"] == 4 and a["completed_share"] == 0.75 and a["late_share"] == 0.25
    assert a["macs_contributed"] == 30.0 and a["macs_wasted"] == 4.0
    assert a["bytes"] == 4 * 5 + 3 + 3 + 3 + 1
    assert a["jain_participation"] == pytest.approx(0.6)
    assert b["selected"] == 3 and b["dropped_share"] == pytest.approx(1 / 3)
    assert b["too_slow_share"] == pytest.approx(1 / 3) and b["completed_share"] == 0
    assert math.isnan(b["jain_participation"])  # nobody of class b was aggregated


def test_a_policy_without_an_evaluation_by_t_says_so(tmp_path: Path) -> None:
    from fleetsim.report import RunData, report_md, summarise

    def run(policy: str, seed: int, t: list[float], acc: list[float]) -> RunData:
        n = len(t)
        return RunData("s", policy, "default", seed, {
            "round": np.arange(n), "t_start_s": np.concatenate([[0.0], t[:-1]]),
            "t_end_s": np.array(t), "accuracy": np.array(acc), "selected": np.full(n, 2),
            "completed": np.full(n, 1), "mean_kept_share": np.ones(n)})

    runs = [run("fast", s, [50.0, 100.0], [0.5, 0.6]) for s in range(3)]
    runs += [run("slow", s, [150.0 - 60 * (s == 0), 300.0], [0.4, 0.7]) for s in range(3)]
    rows = summarise(runs, 0.6)
    slow = next(r for r in rows if r.policy == "slow")
    assert slow.common_s == 100.0 and slow.at_common.n == 1  # only seed 0 evaluated by T
    md = report_md(tmp_path, rows, 0.6, None, 0)
    assert "0.400 (1 seed); 2 of 3 seeds not evaluated by T" in md
    runs = [r for r in runs if not (r.policy == "slow" and r.seed == 0)]
    md = report_md(tmp_path, summarise(runs, 0.6), 0.6, None, 0)
    assert "| slow | 2 | – | 5 | not evaluated by T |" in md
