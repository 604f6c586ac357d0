"""Figures of ``fleetsim report``, drawn to be used in a paper as they are.

What a paper needs and each figure keeps to:

- panels (one per setting) in the tables' order, numbers inside labels sorted by value;
- one row of up to three panels that share the y-axis, so panels compare at a glance;
- one style per policy in every panel and figure (ten colours, then line styles), and one
  legend for the figure instead of one per panel;
- simulated time in a unit that fits the run (seconds, minutes or hours; the axis says
  which);
- box plots with a legend for their marks (median line, mean triangle, outlier circles);
- speed-ups that are bounds, because some seeds never reached the target, drawn as a
  bound (a bar-less marker with an arrow toward the side the true value lies on) and
  written with their >= / <= sign, never as a bar that reads as a measured value;
- every figure as PNG (for the Markdown report), PDF and SVG (vector, for a paper);
- two styles: ``screen`` (panels side by side) and ``paper`` (one column 3.3 in wide,
  the width of a two-column paper's column, with 7-8 pt fonts that stay legible there).

Each figure is built by a ``figure_*`` function that returns the matplotlib figure (so
tests can read its axes), and saved by :func:`save` (PNG) or :func:`save_all`.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
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
FIGURE_FORMATS = ("png", "pdf", "svg")


@dataclass(frozen=True)
class Style:
    """Size and type of the figures: panel size (in), panels per row, font sizes (pt)."""

    panel_w_in: float
    panel_h_in: float
    max_columns: int
    font_pt: float
    small_pt: float
    legend_h_in: float
    dpi: int


STYLES = {
    "screen": Style(PANEL_W_IN, PANEL_H_IN, MAX_COLUMNS, 10, 8, 1.0, 150),
    # a column of a two-column paper (IEEE, ACM, AAAI) is 3.3-3.5 in wide: panels are
    # stacked so that each keeps the full width; 8 pt labels, 7 pt ticks and legend
    "paper": Style(3.3, 2.1, 1, 8, 7, 0.9, 300),
}
_style = STYLES["screen"]


@contextlib.contextmanager
def figure_style(name: str) -> Iterator[Style]:
    """Draw the figures made inside the block in style ``name`` (see :data:`STYLES`)."""
    import matplotlib

    global _style
    previous, _style = _style, STYLES[name]
    rc: dict[str, Any] = {
        "font.size": _style.font_pt, "axes.titlesize": _style.font_pt,
        "axes.labelsize": _style.font_pt, "xtick.labelsize": _style.small_pt,
        "ytick.labelsize": _style.small_pt, "legend.fontsize": _style.small_pt,
        "svg.fonttype": "none"}  # text stays text in the SVG, editable
    if name == "paper":
        # TrueType (Type 42) fonts in the PDF: publishers' checks (IEEE PDF eXpress)
        # reject Type 3 fonts; embedding them costs ~0.5 s a figure, so only here
        rc["pdf.fonttype"] = 42
    try:
        with matplotlib.rc_context(rc):
            yield _style
    finally:
        _style = previous
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


#: bars have no line style: the eleventh policy on gets a hatch instead (so a bar of it
#: never looks like the first policy's)
HATCHES = ("", "///", "...", "xxx")


def policy_hatches(policies: Sequence[str]) -> dict[str, str]:
    """The hatch of each policy's bars, with :func:`policy_styles`' colours."""
    return {p: HATCHES[(i // 10) % len(HATCHES)] for i, p in enumerate(policies)}


def short_labels(labels: Sequence[str]) -> dict[str, str]:
    """Tick labels without the ``@setting`` part a study adds (``fedavg@lr=0.02`` ->
    ``fedavg``) where that leaves them distinct; otherwise the labels themselves."""
    short = {p: p.partition("@")[0] for p in labels}
    return short if len(set(short.values())) == len(short) else {p: p for p in labels}


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
    each key is what tells panels apart (the tables give the full keys). A setting with
    no swept key (compare's ``default``) is titled by its scenario."""
    scenario, overrides = setting
    if overrides == "default":
        return scenario
    short = "+".join(part.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + part.split("=", 1)[1]
                     if "=" in part else part for part in overrides.split("+"))
    return f"{scenario}: {short}" if with_scenario else short


def grid_axes(n: int) -> tuple[Figure, list[Any]]:
    """A figure of ``n`` panels, up to three a row, all sharing one y-axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = _style
    ncols = min(max(n, 1), st.max_columns)
    nrows = math.ceil(max(n, 1) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(st.panel_w_in * ncols,
                                                    st.panel_h_in * nrows + st.legend_h_in),
                             dpi=st.dpi, squeeze=False, sharey=True, layout="constrained")
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
        leg = fig.legend(handles, labels, loc="outside lower center", ncol=ncol,
                         fontsize=_style.small_pt, frameon=False)
        if ncol == 1 or leg.get_window_extent(renderer).width <= 0.98 * fig.bbox.width:
            return
        leg.remove()


def save(fig: Figure, path: Path) -> None:
    """Write ``fig`` as PNG to ``path`` and close it."""
    save_all(fig, path.with_suffix(""), ("png",))


def save_all(fig: Figure, base: Path, formats: Sequence[str] = FIGURE_FORMATS) -> list[Path]:
    """Write ``fig`` as ``base.png``, ``base.pdf`` and ``base.svg`` (``formats``), close
    it, and return the paths. Each file is written whole or not at all."""
    import matplotlib.pyplot as plt

    paths = []
    try:
        for ext in formats:
            buf = io.BytesIO()
            # fixed metadata: the same figure gives the same bytes (no creation date)
            meta = {"png": {"Software": None}, "pdf": {"CreationDate": None},
                    "svg": {"Date": None}}[ext]
            fig.savefig(buf, format=ext, metadata=meta)
            path = base.with_name(f"{base.name}.{ext}")
            atomic_write_bytes(path, buf.getvalue())
            paths.append(path)
    finally:
        plt.close(fig)
    return paths


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
        t_common = getattr(block[0], "common_s", math.nan)
        if math.isfinite(t_common):
            handles["common time T"] = ax.axvline(t_common / scale, color="0.5", ls="--",
                                                  lw=0.8, label="common time T")
        ax.set_title(panel_title(setting, several))
        ax.set_xlabel(f"simulated time ({UNIT_WORDS[unit]})")
        ax.grid(alpha=0.3)
    _label_left(axes, f"{_split_word(runs)} accuracy")
    order = [p for p in policies_of(rows) if p in handles] + \
        [k for k in ("target", "common time T") if k in handles]
    figure_legend(fig, [handles[k] for k in order], order)
    return fig


def figure_accuracy_vs_rounds(runs: Sequence[RunData], rows: Sequence[Summary]) -> Figure:
    """Accuracy against the round (its index + 1: rounds done): per policy the mean over
    seeds and a band for their range, the target as a dotted line. Beside accuracy versus
    simulated time, it separates what a policy gains per round from what it gains by
    making rounds shorter."""
    settings = settings_of(rows)
    style = policy_styles(policies_of(rows))
    several = len({s for s, _ in settings}) > 1
    fig, axes = grid_axes(len(settings))
    handles: dict[str, Any] = {}
    for ax, setting in zip(axes, settings):
        block = [s for s in rows if (s.scenario, s.overrides) == setting]
        for s in block:
            curves = []
            for r in runs:
                if (r.setting, r.policy) != (setting, s.policy):
                    continue
                acc = np.asarray(r.rounds["accuracy"], float)
                ok = ~np.isnan(acc)
                curves.append((np.asarray(r.rounds["round"], float)[ok] + 1, acc[ok]))
            band = mean_band(curves)
            if band is None:
                continue
            grid, mean, lo, hi = band
            st = style[s.policy]
            (line,) = ax.plot(grid, mean, lw=1.4, label=s.policy,
                              marker="o" if grid.size == 1 else None, **st)
            ax.fill_between(grid, lo, hi, color=st["color"], alpha=0.15, lw=0)
            handles.setdefault(s.policy, line)
        if math.isfinite(block[0].target):
            handles["target"] = ax.axhline(block[0].target, color="0.3", ls=":", lw=1,
                                           label="target")
        ax.set_title(panel_title(setting, several))
        ax.set_xlabel("rounds")
        ax.grid(alpha=0.3)
    _label_left(axes, f"{_split_word(runs)} accuracy")
    order = [p for p in policies_of(rows) if p in handles] + (["target"] if "target" in
                                                               handles else [])
    figure_legend(fig, [handles[k] for k in order], order)
    return fig


def figure_per_class(rows: Sequence[dict[str, Any]]) -> Figure:
    """Per device class, the share of selections whose update was aggregated, one bar per
    policy, with Jain's index of participation written above each bar; one panel per
    setting (rows: :func:`fleetsim.report.per_class_summary`)."""
    settings = list(dict.fromkeys((str(r["scenario"]), str(r["overrides"])) for r in rows))
    policies = list(dict.fromkeys(str(r["policy"]) for r in rows))
    style, hatch = policy_styles(policies), policy_hatches(policies)
    several = len({s for s, _ in settings}) > 1
    fig, axes = grid_axes(len(settings))
    handles: dict[str, Any] = {}
    labelled = True
    for ax, setting in zip(axes, settings):
        block = [r for r in rows if (r["scenario"], r["overrides"]) == setting]
        classes = list(dict.fromkeys(str(r["device_class"]) for r in block))
        pols = [p for p in policies if any(r["policy"] == p for r in block)]
        width = 0.8 / max(len(pols), 1)
        labelled = labelled and len(pols) <= 6  # beyond that the labels would overlap
        for i, p in enumerate(pols):
            for k, c in enumerate(classes):
                r = next((r for r in block if r["policy"] == p and r["device_class"] == c),
                         None)
                if r is None:
                    continue
                x = k - 0.4 + width * (i + 0.5)
                v = float(r["completed_share"])
                bar = ax.bar(x, 0.0 if math.isnan(v) else v, width=width * 0.9,
                             color=style[p]["color"], edgecolor="black", lw=0.4,
                             hatch=hatch[p])
                handles.setdefault(p, bar)
                j = float(r["jain_participation"])
                if len(pols) <= 6:
                    ax.text(x, (0.0 if math.isnan(v) else v) + 0.02,
                            "n/a" if math.isnan(j) else f"{j:.2f}", ha="center", va="bottom",
                            fontsize=_style.small_pt - 1, rotation=90)
        ax.set_xticks(range(len(classes)), classes)
        ax.set_ylim(0, 1.25)
        ax.set_title(panel_title(setting, several))
        ax.set_xlabel("device class")
        ax.grid(alpha=0.3, axis="y")
    _label_left(axes, "share of selections aggregated")
    figure_legend(fig, [handles[p] for p in policies if p in handles],
                  [p for p in policies if p in handles])
    fig.suptitle("numbers above bars: Jain's index of participation\n(n/a: no device of "
                 "the class aggregated)" if labelled else "Jain's index of participation: "
                 "per_class.csv (too many policies to label the bars)",
                 fontsize=_style.small_pt)
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
        short = short_labels(policies)
        ax.set_xticks(range(1, len(policies) + 1), [short[p] for p in policies])
        _rotate(ax)
        ax.set_title(panel_title(setting, several))
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
    bound: drawn as a level with an arrow, not a bar, and labelled ≥ (the baseline
    missed: at least this fast; arrow up) or ≤ (the policy missed: at most this fast;
    arrow down). n/a: no ratio (both missed in some seeds, or one
    never reached the target)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    settings = settings_of(rows)
    style, hatch = policy_styles(policies_of(rows)), policy_hatches(policies_of(rows))
    short = short_labels(policies_of(rows))
    several = len({s for s, _ in settings}) > 1
    fig, axes = grid_axes(len(settings))
    top = 1.2 * max((s.speedup for s in rows if math.isfinite(s.speedup)), default=1.0)
    for ax, setting in zip(axes, settings):
        block = [s for s in rows if (s.scenario, s.overrides) == setting
                 and s.policy != baseline]
        for i, s in enumerate(block):
            if not math.isfinite(s.speedup):
                ax.text(i, 0.02 * top, "n/a", ha="center", va="bottom",
                        fontsize=_style.small_pt - 1, rotation=90, color="0.3")
                continue
            if s.speedup_bound:
                # a bound is not a measurement: no bar, a level with an arrow pointing
                # to where the true value lies (below for <=, above for >=)
                down = s.speedup_bound == "<="
                ax.plot([i - 0.3, i + 0.3], [s.speedup] * 2, color=style[s.policy]["color"],
                        lw=2.0)
                # the arrow's length is a share of the axis (the y-limit is 1.15 * top),
                # so it reads as an arrow in a small paper panel too
                step = 0.12 * 1.15 * top
                ax.annotate("", xy=(i, s.speedup - step if down else s.speedup + step),
                            xytext=(i, s.speedup),
                            arrowprops={"arrowstyle": "->", "color": style[s.policy]["color"],
                                        "lw": 1.2})
                ax.text(i + 0.32, s.speedup, f"{BOUND_SIGN[s.speedup_bound]}{s.speedup:.2f}",
                        ha="left", va="center", fontsize=_style.small_pt - 1)
                continue
            ax.bar(i, s.speedup, width=0.7, color=style[s.policy]["color"], alpha=0.9,
                   edgecolor="black", lw=0.6, label=s.policy, hatch=hatch[s.policy])
            ax.text(i, s.speedup, f"{s.speedup:.2f}", ha="center", va="bottom",
                    fontsize=_style.small_pt - 1)
        ax.axhline(1.0, color="0.3", lw=1, ls=":")
        ax.set_xticks(range(len(block)), [short[s.policy] for s in block])
        _rotate(ax)
        ax.set_xlim(-0.6, max(len(block), 1) - 0.4)
        ax.set_title(panel_title(setting, several))
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylim(0, 1.15 * top)  # room for the labels (the axis is shared)
    _label_left(axes, f"speed-up vs {short.get(baseline, baseline)}")
    handles = [Patch(facecolor="0.6", edgecolor="black"),
               Line2D([], [], color="0.3", lw=2.0, marker=r"$\downarrow$", markersize=8),
               Patch(visible=False)]
    figure_legend(fig, handles, ["bar: every seed reached the target",
                                 "level + arrow (≤ / ≥): a bound, some seeds never reached "
                                 "it", "n/a: no ratio (see the table)"])
    return fig


def _rotate(ax: Any) -> None:
    """Policy names at 40°, anchored at their tick: ten or more stay readable."""
    for label in ax.get_xticklabels():
        label.set_rotation(40)
        label.set_horizontalalignment("right")
        label.set_rotation_mode("anchor")
        label.set_fontsize(_style.small_pt)
