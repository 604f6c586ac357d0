"""slice and merge: the cut or joined file answers like the source."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from fleetsim.errors import UserError
from fleetsim.traces import FileTraces, GeneratedTraces, read_traces
from fleetsim.traces.importers import write_with_ids
from fleetsim.traces.ops import merge_files, slice_file, window
from tests.conftest import make_traces

DAY = 86400.0


@pytest.fixture
def week(tmp_path: Path) -> Path:
    src = GeneratedTraces.from_name("markov", {"mean_dwell_s": 900, "mean_offline_s": 3600},
                                    30, 7 * DAY, seed=3)
    path = tmp_path / "week.h5"
    src.write(path)
    return path


def test_window_unrolls_periods_and_drops_repeats() -> None:
    t, v = window(np.array([0.0, 10.0]), np.array([1.0, 0.5]), 15.0, 45.0, 20.0)
    # values: [15, 20) 0.5 | [20, 30) 1 | [30, 40) 0.5 | [40, 45) 1
    assert t.tolist() == [0.0, 5.0, 15.0, 25.0] and v.tolist() == [0.5, 1.0, 0.5, 1.0]
    t, v = window(np.array([0.0, 10.0]), np.array([1.0, 1.0]), 0.0, 50.0, None)
    assert t.tolist() == [0.0] and v.tolist() == [1.0]


def test_slice_devices_and_time_window(week: Path, tmp_path: Path) -> None:
    out = tmp_path / "day.h5"
    head = slice_file(week, out, devices=(5, 15), start_s=1.5 * DAY, end_s=2.5 * DAY)
    assert head == {"n_devices": 10, "horizon_s": DAY, "period_s": DAY}
    src, cut = FileTraces(week), FileTraces(out)
    rng = np.random.default_rng(0)
    for d in range(10):
        for x in rng.uniform(0, DAY, 50):
            a, b = src.device(d + 5), cut.device(d)
            assert b.availability_at(x) == a.availability_at(x + 1.5 * DAY)
            assert b.online_at(x) == a.online_at(x + 1.5 * DAY)
    assert cut.meta["sliced_from"]["devices"] == [5, 15]


def test_slice_across_the_period_end_and_whole_time(week: Path, tmp_path: Path) -> None:
    out = tmp_path / "wrap.h5"
    slice_file(week, out, start_s=6.5 * DAY, end_s=7.5 * DAY)
    src, cut = FileTraces(week), FileTraces(out)
    for x in np.linspace(0, DAY - 1, 97):
        assert cut.device(3).availability_at(x) == src.device(3).availability_at(x + 6.5 * DAY)
    same = tmp_path / "same.h5"
    slice_file(week, same, devices=(0, 2))
    a, b = read_traces(week), read_traces(same)
    assert b.period_s == a.period_s
    np.testing.assert_array_equal(b.availability.t, a.availability.t[:a.availability.offsets[2]])


def test_slice_rejects_bad_ranges(week: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--devices 10:50"):
        slice_file(week, tmp_path / "x.h5", devices=(10, 50))
    with pytest.raises(UserError, match="window"):
        slice_file(week, tmp_path / "x.h5", start_s=100, end_s=50)


def test_merge_concatenates_and_keeps_ids(tmp_path: Path, write_trace_file) -> None:  # type: ignore[no-untyped-def]
    a = make_traces([([0.0, 5.0], [1.0, 0.5])], period_s=10.0, horizon_s=10.0)
    b = make_traces([([0.0], [0.3]), ([0.0, 1.0], [0.2, 0.9])], period_s=10.0, horizon_s=10.0)
    pa, pb = tmp_path / "a.h5", tmp_path / "b.h5"
    write_with_ids(pa, a, ["x"])
    write_with_ids(pb, b, ["y", "z"])
    out = tmp_path / "ab.h5"
    assert merge_files([pa, pb], out)["n_devices"] == 3
    m = read_traces(out)
    assert m.availability.offsets.tolist() == [0, 2, 3, 5]
    assert m.availability.value.tolist() == [1.0, 0.5, 0.3, 0.2, 0.9]
    with h5py.File(out) as f:
        assert [x.decode() for x in f["client_id"][:]] == ["x", "y", "z"]
    c = write_trace_file("c.h5", make_traces([([0.0], [1.0])], period_s=20.0, horizon_s=20.0))
    with pytest.raises(UserError, match=r"c\.h5: horizon 20 s and period 20 s differ"):
        merge_files([pa, c], tmp_path / "bad.h5")


def test_slice_never_writes_a_breakpoint_at_its_own_period(tmp_path: Path) -> None:
    # t < end, but t - start rounds to end - start: that breakpoint would sit at the new
    # period, which the format forbids (the slice could not be read back)
    a, b = 4.94985935449932, 13.09476018150913
    t_last = 13.094760181509129
    assert t_last < b and t_last - a == b - a
    src = tmp_path / "src.h5"
    from fleetsim.traces import write_traces
    write_traces(src, make_traces([([0.0, 1.0, t_last], [1.0, 0.5, 0.25])],
                                  period_s=100.0, horizon_s=100.0))
    out = tmp_path / "cut.h5"
    slice_file(src, out, start_s=a, end_s=b)
    back = read_traces(out)  # validates
    assert back.period_s == b - a
    assert back.availability.t.tolist() == [0.0] and back.availability.value.tolist() == [0.5]


def test_window_places_period_starts_exactly() -> None:
    # 129012.9 is the float just below 129 * 1000.1 (129012.90000000001), yet 129012.9 /
    # 1000.1 rounds to 129: floor() put the window's start in period 129 and read its
    # first value, though the start lies in period 128's last segment
    p, start = 1000.1, 129012.9
    assert start < 129 * p and math.floor(start / p) == 129
    t, v = window(np.array([0.0, 500.0]), np.array([1.0, 0.25]), start, start + 100.0, p)
    assert v.tolist() == [0.25, 1.0]
    assert t[0] == 0.0 and t[1] == 129 * p - start
    # and a window ending just past a period start sees that period, though
    # 65006.50000000001 / 1000.1 rounds to 65 and ceil() stopped one period short
    end = 65006.50000000001
    assert end > 65 * p and math.ceil(end / p) == 65
    t, v = window(np.array([0.0, 500.0]), np.array([1.0, 0.25]), 64900.0, end, p)
    assert v.tolist() == [0.25, 1.0] and t[1] == 65 * p - 64900.0
