"""The unit of simulated time fits the span, in each run's accuracy.png too."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fleetsim import results
from fleetsim.timeunits import pick_time_unit


def test_units_by_span() -> None:
    assert [pick_time_unit(t)[0] for t in (0.0, 119.9, 120.0, 7199.0, 7200.0, math.inf)] \
        == ["s", "s", "min", "min", "h", "s"]


@pytest.mark.parametrize(("end_s", "word", "scale", "split"),
                         [(600.0, "min", 60.0, "test"), (36_000.0, "hours", 3600.0,
                                                         "validation")])
def test_run_accuracy_plot_uses_the_unit_and_names_the_split(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, end_s: float, word: str,
        scale: float, split: str) -> None:
    import matplotlib.pyplot as plt

    shown = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (shown.append(fig), close(fig)))
    rows = [{"t_end_s": end_s / 2, "accuracy": 0.5}, {"t_end_s": end_s, "accuracy": 0.8}]
    results.plot_accuracy(tmp_path / "a.png", rows, "t", split)
    (ax,) = shown[0].axes
    assert ax.get_xlabel() == f"simulated time ({word})"
    assert ax.get_ylabel() == f"{split} accuracy"
    assert list(ax.get_lines()[0].get_xdata()) == [end_s / 2 / scale, end_s / scale]
