"""Figures of ``fleetsim report``, drawn to be used in a paper as they are.

What a paper needs and each figure keeps to:

- panels (one per setting) in the tables' order, numbers inside labels sorted by value;
- one row of up to three panels that share the y-axis, so panels compare at a glance;
- one style per policy in every panel and figure (ten colours, then line styles), and one
  legend for the figure instead of one per panel;
- simulated time in a unit that fits the run (seconds, minutes or hours; the axis says
  which);
- box plots with a legend for their marks (median line, mean triangle, outlier circles);
- speed-ups that are bounds, because some seeds never reached the target, hatched and
  written with their >= / <= sign.

Each figure is built by a ``figure_*`` function that returns the matplotlib figure (so
tests can read its axes), and saved by :func:`save`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetsim.results import atomic_write_bytes
from fleetsim.timeunits import UNIT_WORDS, pick_time_unit

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Runs and rows are fleetsim.report's RunData and Summary; this module does not import
# that one (which imports this one), so they are typed by what is read of them.
RunData = Any
Summary = Any

GRID_POINTS = 200
MAX_COLUMNS = 3
PANEL_W_IN, PANEL_H_IN = 4.6, 3.4
LINESTYLES = ("-", "--", "-.", ":")
BOUND_HATCH = "///"
BOUND_SIGN = {"": "", ">=": "≥", "<=": "≤"}
MEDIAN_COLOR, MEAN_COLOR = "C1", "C2"


def policy_styles(policies: Sequence[str]) -> dict[str, dict[str, str]]:
    """Colour and line style of each policy, the same in every panel and figure: the
    ten tab10 colours first, then again with the next line style (eleven policies would
    otherwise give two of them one colour)."""
    return {p: {"color": f"C{i % 10}", "linestyle": LINESTYLES[(i // 10) % len(LINESTYLES)]}
            for i, p in enumerate(policies)}


def mean_band(curves: Sequence[tuple[np.ndarray, np.ndarray]], points: int = GRID_POINTS
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Curves interpolated on a common time grid: (grid, mean, min, max).

    The grid starts when every curve has its first point (nothing is invented before a
    run's first evaluation) and ends with the longest curve; a run that has ended keeps
    its final accuracy, which is what that run delivers from then on. None when no curve
    has a point.
    """
    curves = [c for c in curves if c[0].size]
    if not curves:
        return None
    lo = max(float(t[0]) for t, _ in curves)
    hi = max(float(t[-1]) for t, _ in curves)
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    # np.interp holds the end values outside a curve's span: the hold described above
    ys = np.stack([np.interp(grid, t, y) for t, y in curves])
    return grid, ys.mean(axis=0), ys.min(axis=0), ys.max(axis=0)


# ----------------------------------------------------------------------------- layout


def settings_of(rows: Sequence[Summary]) -> list[tuple[str, str]]:
    """The settings in the order of the rows (which :func:`~fleetsim.report.summarise`
    sorts with numbers by value)."""
    return list(dict.fromkeys((s.scenario, s.overrides) for s in rows))


def policies_of(rows: Sequence[Summary]) -> list[str]:
    return list(dict.fromkeys(s.policy for s in rows))


def panel_title(setting: tuple[str, str], with_scenario: bool) -> str:
    """``mean_dwell_s=5`` for ``fleet.traces.options.mean_dwell_s=5``: the last part of
    each key is what tells panels apart (the tables give the full keys)."""
    scenario, overrides = setting
    short = "+".join(part.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + part.split("=", 1)[1]
                     if "=" in part else part for part in overrides.split("+"))
    return f"{scenario}: {short}" if with_scenario else short


def grid_axes(n: int) -> tuple[Figure, list[Any]]:
    """A figure of ``n`` panels, up to three a row, all sharing one y-axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(max(n, 1), MAX_COLUMNS)
    nrows = math.ceil(max(n, 1) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(PANEL_W_IN * ncols, PANEL_H_IN * nrows + 1.0),
                             dpi=150, squeeze=False, sharey=True, layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def figure_legend(fig: Figure, handles: Sequence[Any], labels: Sequence[str]) -> None:
    """One legend under all panels (a legend inside a panel hides curves), in as many
    columns (at most 6) as fit the figure's width: long labels, such as a study's
    ``fedavg+stragglers=wait@lr=0.05``, get fewer columns rather than run off the page."""
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    for ncol in range(min(len(labels), 6), 0, -1):
        leg = fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=8,
                         frameon=False)
        if ncol == 1 or leg.get_window_extent(renderer).width <= 0.98 * fig.bbox.width:
            return
        leg.remove()


def save(fig: Figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _label_left(axes: Sequence[Any], text: str) -> None:
    """The y label on the first panel of each row only (the axis is shared)."""
    for ax in axes:
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(text)


def _split_word(runs: Sequence[RunData]) -> str:
    splits = sorted({r.eval_split for r in runs})
    return " / ".join(splits) if splits else "test"


# ----------------------------------------------------------------------------- figures


def figure_accuracy_vs_time(runs: Sequence[RunData], rows: Sequence[Summary]) -> Figure:
    """Accuracy against simulated time: per policy the mean over seeds, a band for their
    range (min to max), the target as a dotted line."""
    settings = settings_of(rows)
    style = policy_styles(policies_of(rows))
    ends = [float(r.rounds["t_end_s"][-1]) for r in runs if len(r.rounds["t_end_s"])]
    unit, scale = pick_time_unit(max((t for t in ends if math.isfinite(t)), default=0.0))
    several = len({s for s, _ in settings}) > 1
    fig, axes = grid_axes(len(settings))
    handles: dict[str, Any] = {}
    for ax, setting in zip(axes, settings):
        block = [s for s in rows if (s.scenario, s.overrides) == setting]
        for s in block:
            curves = [r.curve() for r in runs if (r.setting, r.policy) == (setting, s.policy)]
            band = mean_band(curves)
            if band is None:
                continue
            grid, mean, lo, hi = band
            st = style[s.policy]
            (line,) = ax.plot(grid / scale, mean, lw=1.4, label=s.policy,
                              marker="o" if grid.size == 1 else None, **st)
            ax.fill_between(grid / scale, lo, hi, color=st["color"], alpha=0.15, lw=0)
            handles.setdefault(s.policy, line)
        if math.isfinite(block[0].target):
            handles["target"] = ax.axhline(block[0].target, color="0.3", ls=":", lw=1,
                                           label="target")
        ax.set_title(panel_title(setting, several), fontsize=10)
        ax.set_xlabel(f"simulated time ({UNIT_WORDS[unit]})")
        ax.grid(alpha=0.3)
    _label_left(axes, f"{_split_word(runs)} accuracy")
    order = [p for p in policies_of(rows) if p in handles] + (["target"] if "target" in
                                                               handles else [])
    figure_legend(fig, [handles[k] for k in order], order)
    return fig


def figure_distributions(runs: Sequence[RunData], rows: Sequence[Summary],
                         values: Callable[[RunData], np.ndarray], ylabel: str) -> Figure:
    """A box per policy of ``values`` pooled over seeds, one panel per setting.

    Boxes: quartiles; whiskers: the furthest values within 1.5 IQR; circles: values
    beyond; line: median; triangle: mean. The legend says so."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    settings = settings_of(rows)
    several = len({s for s, _ in settings}) > 1
    fig, axes = grid_axes(len(settings))
    for ax, setting in zip(axes, settings):
        policies = [s.policy for s in rows if (s.scenario, s.overrides) == setting]
        data = []
        for p in policies:
            v = np.concatenate([np.asarray(values(r), float) for r in runs
                                if (r.setting, r.policy) == (setting, p)] or [np.zeros(0)])
            data.append(v[~np.isnan(v)])
        ax.boxplot(data, showmeans=True, widths=0.6,
                   medianprops={"color": MEDIAN_COLOR, "lw": 1.5},
                   meanprops={"marker": "^", "markerfacecolor": MEAN_COLOR,
                              "markeredgecolor": MEAN_COLOR, "markersize": 5},
                   flierprops={"marker": "o", "markersize": 3, "markerfacecolor": "none"})
        ax.set_xticks(range(1, len(policies) + 1), policies)
        _rotate(ax)
        ax.set_title(panel_title(setting, several), fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    _label_left(axes, ylabel)
    handles = [Line2D([], [], color=MEDIAN_COLOR, lw=1.5),
               Line2D([], [], ls="none", marker="^", color=MEAN_COLOR, markersize=5),
               Patch(facecolor="none", edgecolor="black"),
               Line2D([], [], ls="none", marker="o", markerfacecolor="none", color="black",
                      markersize=4)]
    figure_legend(fig, handles, ["median", "mean", "box: quartiles, whiskers: 1.5 IQR",
                                 "beyond 1.5 IQR"])
    return fig


def figure_speedup(rows: Sequence[Summary], baseline: str) -> Figure:
    """Speed-up over ``baseline`` per policy (bars), one panel per setting.

    A speed-up is exact when every seed of both reached the target. Where some did not,
    their run lengths stand in for the time they would have needed, which makes it a
    bound: hatched, and labelled ≥ (the baseline missed: at least this fast) or ≤ (the
    policy missed: at most this fast). n/a: no ratio (both missed in some seeds, or one
    never reached the target)."""
    from matplotlib.patches import Patch

    settings = settings_of(rows)
    style = policy_styles(policies_of(rows))
    several = len({s for s, _ in settings}) > 1
    fig, axes = grid_axes(len(settings))
    top = max((s.speedup for s in rows if math.isfinite(s.speedup)), default=1.0)
    for ax, setting in zip(axes, settings):
        block = [s for s in rows if (s.scenario, s.overrides) == setting
                 and s.policy != baseline]
        for i, s in enumerate(block):
            if not math.isfinite(s.speedup):
                ax.text(i, 0.02 * top, "n/a", ha="center", va="bottom", fontsize=7,
                        rotation=90, color="0.3")
                continue
            bound = s.speedup_bound != ""
            ax.bar(i, s.speedup, width=0.7, color=style[s.policy]["color"],
                   alpha=0.55 if bound else 0.9, edgecolor="black", lw=0.6,
                   hatch=BOUND_HATCH if bound else None, label=s.policy)
            ax.text(i, s.speedup, f"{BOUND_SIGN[s.speedup_bound]}{s.speedup:.2f}",
                    ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="0.3", lw=1, ls=":")
        ax.set_xticks(range(len(block)), [s.policy for s in block])
        _rotate(ax)
        ax.set_xlim(-0.6, max(len(block), 1) - 0.4)
        ax.set_title(panel_title(setting, several), fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylim(0, 1.15 * top)  # room for the labels (the axis is shared)
    _label_left(axes, f"speed-up vs {baseline}")
    handles = [Patch(facecolor="0.6", edgecolor="black"),
               Patch(facecolor="0.85", edgecolor="black", hatch=BOUND_HATCH),
               Patch(visible=False)]
    figure_legend(fig, handles, ["every seed reached the target",
                                 "bound (≥ / ≤): some seeds never reached it",
                                 "n/a: no ratio (see the table)"])
    return fig


def _rotate(ax: Any) -> None:
    """Policy names at 40°, anchored at their tick: ten or more stay readable."""
    for label in ax.get_xticklabels():
        label.set_rotation(40)
        label.set_horizontalalignment("right")
        label.set_rotation_mode("anchor")
        label.set_fontsize(8)
