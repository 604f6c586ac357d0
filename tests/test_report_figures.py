"""The report's figures, as a paper needs them: read from the figures' axes (Agg), no
pixel comparisons."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fleetsim.report import RunData, summarise
from fleetsim.report_figures import (
    figure_accuracy_vs_time,
    figure_distributions,
    figure_speedup,
    panel_title,
    policy_hatches,
    policy_styles,
    short_labels,
)
from fleetsim.timeunits import pick_time_unit

TEN = ("distreal", "uniform-adaptive", "distreal-static", "fedavg+stragglers=wait",
       "fedprox", "fednova", "federated_dropout", "heterofl", "fjord", "fedrolex")


def run(policy: str, seed: int, t_end: list[float], acc: list[float],
        overrides: str = "default", split: str = "test") -> RunData:
    n = len(t_end)
    t = np.array(t_end, float)
    return RunData("s", policy, overrides, seed, {
        "round": np.arange(n), "t_start_s": np.concatenate([[0.0], t[:-1]]), "t_end_s": t,
        "accuracy": np.array(acc, float), "selected": np.full(n, 3),
        "completed": np.full(n, 2), "mean_kept_share": np.linspace(0.5, 1.0, n)}, split)


@pytest.fixture(autouse=True)
def _close_figures() -> object:
    yield
    plt.close("all")


def visible_axes(fig: object) -> list:  # type: ignore[type-arg]
    return [ax for ax in fig.axes if ax.get_visible()]  # type: ignore[attr-defined]


def legend_texts(fig: object) -> list[str]:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]  # type: ignore[attr-defined]


def dwell_batch() -> tuple[list[RunData], list]:  # type: ignore[type-arg]
    """Three settings given out of numeric order, eleven policies, two seeds."""
    runs = []
    for dwell in (20, 5, 80):
        o = f"fleet.traces.options.mean_dwell_s={dwell}"
        for seed in (0, 1):
            runs.append(run("fedavg", seed, [100, 200, 300], [0.5, 0.7, 0.8], o))
            for i, p in enumerate(TEN):
                runs.append(run(p, seed, [50, 100, 150 + i], [0.6, 0.75, 0.8], o))
    return runs, summarise(runs, 0.7)


def test_time_unit_fits_the_run() -> None:
    assert pick_time_unit(90.0) == ("s", 1.0)
    assert pick_time_unit(600.0) == ("min", 60.0)  # a 10-minute run: minutes, not hours
    assert pick_time_unit(36_000.0) == ("h", 3600.0)  # a 10-hour run: hours, not minutes
    assert pick_time_unit(math.nan) == ("s", 1.0)
    for end_s, word, scale in ((600.0, "min", 60.0), (36_000.0, "hours", 3600.0)):
        runs = [run("fedavg", 0, [end_s / 2, end_s], [0.5, 0.8])]
        fig = figure_accuracy_vs_time(runs, summarise(runs, 0.7))
        ax = visible_axes(fig)[0]
        assert ax.get_xlabel() == f"simulated time ({word})"
        # the data is in that unit too: the curve ends at end_s / scale
        assert max(float(np.max(line.get_xdata())) for line in ax.get_lines()
                   if line.get_label() == "fedavg") == pytest.approx(end_s / scale)


@pytest.mark.parametrize("which", ["accuracy", "box", "speedup"])
def test_panels_in_numeric_order_share_the_y_axis(which: str) -> None:
    runs, rows = dwell_batch()
    fig = {"accuracy": lambda: figure_accuracy_vs_time(runs, rows),
           "box": lambda: figure_distributions(runs, rows,
                                               lambda r: r.rounds["t_end_s"], "y"),
           "speedup": lambda: figure_speedup(rows, "fedavg")}[which]()
    axes = visible_axes(fig)
    assert [ax.get_title() for ax in axes] == [f"mean_dwell_s={d}" for d in (5, 20, 80)]
    first = axes[0]
    assert all(first.get_shared_y_axes().joined(first, ax) for ax in axes[1:])
    # one row of three panels; the shared label only on the first
    assert [ax.get_ylabel() != "" for ax in axes] == [True, False, False]


def test_eleven_policies_have_eleven_styles_and_one_legend() -> None:
    runs, rows = dwell_batch()
    styles = policy_styles(["fedavg", *sorted(TEN, key=_natural)])  # the rows' order
    assert len({(s["color"], s["linestyle"]) for s in styles.values()}) == 11
    fig = figure_accuracy_vs_time(runs, rows)
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes)
    assert legend_texts(fig) == ["fedavg", *sorted(TEN, key=_natural), "target",
                                 "common time T"]
    # the same policy has the same style in every panel
    for ax in visible_axes(fig):
        for line in ax.get_lines():
            if line.get_label() in styles:
                s = styles[line.get_label()]
                assert (line.get_color(), line.get_linestyle()) == (s["color"], s["linestyle"])


def _natural(p: str) -> tuple:  # type: ignore[type-arg]
    from fleetsim.report import natural_key

    return natural_key(p)


def test_box_plots_explain_their_marks_and_tick_labels_are_readable() -> None:
    runs, rows = dwell_batch()
    fig = figure_distributions(runs, rows, lambda r: r.rounds["mean_kept_share"], "kept")
    texts = legend_texts(fig)
    assert "median" in texts and "mean" in texts
    # the legend's mean marker is the one the boxes draw
    (leg,) = fig.legends
    mean_handle = leg.legend_handles[texts.index("mean")]
    ax = visible_axes(fig)[0]
    drawn = {line.get_marker() for line in ax.get_lines()}
    assert mean_handle.get_marker() in drawn
    labels = ax.get_xticklabels()
    assert [t.get_text() for t in labels] == ["fedavg", *sorted(TEN, key=_natural)]
    assert all(t.get_rotation() >= 30 and t.get_horizontalalignment() == "right"
               for t in labels)


def test_partial_speedups_are_marked() -> None:
    # "lucky" misses the target in seed 1: its speed-up is an upper bound (<=);
    # "exact" reaches it in both seeds; "never" never does (no ratio)
    runs = [run("fedavg", s, [100, 200], [0.7, 0.8]) for s in (0, 1)]
    runs += [run("lucky", 0, [50, 100], [0.7, 0.8]), run("lucky", 1, [50, 100], [0.5, 0.6])]
    runs += [run("exact", s, [50, 100], [0.7, 0.8]) for s in (0, 1)]
    runs += [run("never", s, [50, 100], [0.5, 0.6]) for s in (0, 1)]
    rows = summarise(runs, 0.7)
    by = {s.policy: s for s in rows}
    assert by["lucky"].speedup_bound == "<=" and by["exact"].speedup_bound == ""
    fig = figure_speedup(rows, "fedavg")
    ax = visible_axes(fig)[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["exact", "lucky", "never"]  # the baseline has no bar
    bars = {ticks[round(p.get_x() + p.get_width() / 2)]: p for p in ax.patches
            if p.get_width() > 0}
    # a bound is drawn as a bound: no bar (a bar reads as a measured value), but a level
    # at the bound with an arrow pointing down (<=: the true speed-up is at most this)
    assert "lucky" not in bars and "never" not in bars
    assert bars["exact"].get_height() == pytest.approx(by["exact"].speedup)
    levels = [ln for ln in ax.get_lines() if len(set(ln.get_ydata())) == 1
              and ln.get_ydata()[0] == pytest.approx(by["lucky"].speedup)]
    assert len(levels) == 1 and np.mean(levels[0].get_xdata()) == pytest.approx(1.0)
    arrows = [a for a in ax.texts if getattr(a, "arrow_patch", None) is not None]
    assert len(arrows) == 1
    (x0, y0), (x1, y1) = arrows[0].xyann, arrows[0].xy  # from the level, to its tip
    assert x0 == x1 == 1 and y0 == pytest.approx(by["lucky"].speedup) and y1 < y0
    labels = {t.get_text() for t in ax.texts}
    assert f"≤{by['lucky'].speedup:.2f}" in labels and f"{by['exact'].speedup:.2f}" in labels
    assert "n/a" in labels
    assert any("bound" in t and "≥" in t and "≤" in t for t in legend_texts(fig))


def test_accuracy_axis_names_the_evaluated_split() -> None:
    runs = [run("fedavg", 0, [10, 20], [0.5, 0.8], split="validation")]
    fig = figure_accuracy_vs_time(runs, summarise(runs, 0.7))
    assert visible_axes(fig)[0].get_ylabel() == "validation accuracy"
    runs = [run("fedavg", 0, [10, 20], [0.5, 0.8])]
    fig = figure_accuracy_vs_time(runs, summarise(runs, 0.7))
    assert visible_axes(fig)[0].get_ylabel() == "test accuracy"


def test_panel_titles() -> None:
    assert panel_title(("mnist", "fleet.traces.options.mean_dwell_s=5"), False) == \
        "mean_dwell_s=5"
    assert panel_title(("mnist", "a.b=1+c.d=x"), True) == "mnist: b=1+d=x"
    # no swept setting: the scenario names the panel, not compare's folder name "default"
    assert panel_title(("mnist", "default"), False) == "mnist"
    assert panel_title(("mnist", "default"), True) == "mnist"


def test_long_legend_labels_do_not_overlap() -> None:
    """The study's labels carry their learning rates (``fedavg+stragglers=wait@lr=0.05``):
    no two legend entries may overlap, and the legend stays inside the figure."""
    runs = []
    for i, p in enumerate(["fedavg", *TEN]):
        for seed in (0, 1):
            runs.append(run(f"{p}@lr=0.05", seed, [50, 100, 150 + i], [0.6, 0.75, 0.8],
                            "fleet.traces.options.mean_dwell_s=5"))
    fig = figure_accuracy_vs_time(runs, summarise(runs, 0.7))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    boxes = [t.get_window_extent(renderer) for leg in fig.legends for t in leg.get_texts()]
    assert len(boxes) == 13  # 11 policies, the target and the common time T
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    width = fig.get_size_inches()[0] * fig.dpi
    assert all(b.x0 >= 0 and b.x1 <= width for b in boxes)


def test_bars_of_eleven_policies_differ_and_ticks_drop_the_setting() -> None:
    order = ["fedavg", *sorted(TEN, key=_natural)]
    styles, hatches = policy_styles(order), policy_hatches(order)
    # bars have no line style: the eleventh policy's bars are told apart by a hatch
    assert len({(styles[p]["color"], hatches[p]) for p in order}) == 11
    assert [hatches[p] for p in order] == [""] * 10 + ["///"]
    # tick labels without a study's "@lr=..." part, unless that makes two alike
    assert short_labels(["fedavg@lr=0.02", "fjord@lr=0.1"]) == {
        "fedavg@lr=0.02": "fedavg", "fjord@lr=0.1": "fjord"}
    assert short_labels(["fedavg@lr=0.02", "fedavg@lr=0.1"]) == {
        "fedavg@lr=0.02": "fedavg@lr=0.02", "fedavg@lr=0.1": "fedavg@lr=0.1"}
