"""Trace file validation: every rule has a bad file that breaks it, read whole and lazily."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from fleetsim.errors import UserError
from fleetsim.traces import FileTraces, read_traces, write_traces
from fleetsim.traces.format import validate_signal
from fleetsim.traces.stats import trace_stats
from tests.conftest import make_traces

GOOD_AVAIL = [([0.0, 10.0], [1.0, 0.5]), ([0.0], [0.3]), ([0.0, 20.0, 50.0], [0.0, 1.0, 0.2])]
GOOD_ONLINE = [([0.0], [1]), ([0.0, 30.0], [1, 0]), ([0.0], [1])]


def good_file(path: Path, period_s: float | None = 100.0) -> Path:
    write_traces(path, make_traces(GOOD_AVAIL, GOOD_ONLINE, period_s=period_s, horizon_s=100.0))
    return path


def put(name: str, data: list[float] | np.ndarray) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        dtype = f[name].dtype
        del f[name]
        f.create_dataset(name, data=np.asarray(data, dtype=dtype))
    return edit


def attr(key: str, value: object) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        if value is None:
            del f.attrs[key]
        else:
            f.attrs[key] = value
    return edit


def drop(name: str) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f[name]
    return edit


# availability/t of the good file: [0, 10 | 0 | 0, 20, 50], offsets [0, 2, 3, 6]
CASES = {
    "format": (attr("format", "other-format"), "format", "not a fleetsim trace file"),
    "version newer": (attr("version", 2), "version", "version 2"),
    "version missing": (attr("version", None), "version", "missing"),
    "n_devices missing": (attr("n_devices", None), "n_devices", "missing"),
    "n_devices negative": (attr("n_devices", -1), "n_devices", "-1 devices"),
    "n_devices zero": (attr("n_devices", 0), "n_devices", "0 devices"),
    "n_devices not a number": (attr("n_devices", "many"), "n_devices", "not a number"),
    "n_devices wrong": (attr("n_devices", 4), "availability/offsets", "4 devices"),
    "horizon missing": (attr("horizon_s", None), "horizon_s", "missing"),
    "horizon zero": (attr("horizon_s", 0.0), "horizon_s", "0.0"),
    "horizon nan": (attr("horizon_s", np.nan), "horizon_s", "nan"),
    "period negative": (attr("period_s", -5.0), "period_s", "-5.0"),
    "period nan": (attr("period_s", np.nan), "period_s", "nan"),
    "period inf": (attr("period_s", np.inf), "period_s", "inf"),
    "params not json": (attr("params", "{oops"), "params", "JSON"),
    "params not an object": (attr("params", "[1, 2]"), "params", "a JSON list"),
    "extra not json": (attr("extra", "[1,"), "extra", "JSON"),
    "missing avail t": (drop("availability/t"), "availability/t", "dataset missing"),
    "missing avail value": (drop("availability/value"), "availability/value", "missing"),
    "missing avail offsets": (drop("availability/offsets"), "availability/offsets", "missing"),
    "missing online t": (drop("online/t"), "online/t", "dataset missing"),
    "missing online value": (drop("online/value"), "online/value", "dataset missing"),
    "missing online offsets": (drop("online/offsets"), "online/offsets", "dataset missing"),
    "offsets not from 0": (put("availability/offsets", [1, 2, 3, 6]), "availability/offsets",
                           "offsets"),
    "offsets short of t": (put("availability/offsets", [0, 2, 3, 5]), "availability/offsets",
                           "offsets"),
    "offsets past t": (put("availability/offsets", [0, 2, 3, 7]), "availability/offsets",
                       "offsets"),
    "device without breakpoints": (put("availability/offsets", [0, 3, 3, 6]),
                                   "availability/offsets", "offsets"),
    "offsets decreasing": (put("online/offsets", [0, 3, 1, 4]), "online/offsets", "offsets"),
    "value longer than t": (put("availability/value", [1, .5, .3, 0, 1, .2, .7]),
                            "availability", "differ in length"),
    "value shorter than t": (put("availability/value", [1, .5, .3, 0, 1]), "availability",
                             "differ in length"),
    "time nan": (put("availability/t", [0, np.nan, 0, 0, 20, 50]), "availability/t",
                 "non-finite"),
    "time inf": (put("online/t", [0, 0, np.inf, 0]), "online/t", "non-finite"),
    "first not at 0": (put("availability/t", [0, 10, 5, 0, 20, 50]), "availability/t",
                       "device 1 does not start at t=0"),
    "online first not at 0": (put("online/t", [0, 0, 30, 2]), "online/t",
                              "device 2 does not start at t=0"),
    "times decreasing": (put("availability/t", [0, 10, 0, 0, 50, 20]), "availability/t",
                         "not strictly increasing for device 2"),
    "times repeated": (put("online/t", [0, 0, 0, 0]), "online/t",
                       "not strictly increasing for device 1"),
    "time at period": (put("availability/t", [0, 10, 0, 0, 20, 100]), "availability/t",
                       "at or beyond the period"),
    "availability above 1": (put("availability/value", [1, .5, .3, 0, 1.5, .2]),
                             "availability/value", "1.5 of device 2 is out of range"),
    "availability negative": (put("availability/value", [1, -.1, .3, 0, 1, .2]),
                              "availability/value", "-0.1 of device 0 is out of range"),
    "availability nan": (put("availability/value", [1, .5, np.nan, 0, 1, .2]),
                         "availability/value", "nan of device 1 is out of range"),
    "online 2": (put("online/value", [1, 1, 2, 1]), "online/value",
                 "2.0 of device 1 is out of range"),
}


def _reader_cases() -> list[tuple[str, str]]:
    """(case, reader) pairs: every rule for the two full readers; for ``traces show``'s
    stats only the rules checked on opening (header, datasets, lengths, offsets), since
    it does not read every breakpoint."""
    out = []
    for case, (_, key, _) in CASES.items():
        out += [(case, "read_traces"), (case, "FileTraces")]
        if not key.endswith(("/t", "/value")) or "missing" in case:
            out.append((case, "stats"))
    return out


@pytest.mark.parametrize(("case", "reader"), _reader_cases())
def test_each_rule_has_a_bad_file(case: str, reader: str, tmp_path: Path) -> None:
    edit, key, needle = CASES[case]
    path = good_file(tmp_path / "bad.h5")
    with h5py.File(path, "a") as f:
        edit(f)
    with pytest.raises(UserError) as exc:
        if reader == "read_traces":
            read_traces(path)
        elif reader == "FileTraces":
            FileTraces(path, validate_chunk=2).close()  # chunks of ~2 breakpoints
        else:
            trace_stats(path)
    msg = str(exc.value)
    assert str(path) in msg and f"'{key}" in msg and needle in msg and "Allowed" in msg, msg
    assert "\n" not in msg


def test_the_good_file_reads(tmp_path: Path) -> None:
    for period in (100.0, None):
        path = good_file(tmp_path / f"ok{period}.h5", period)
        assert read_traces(path).n_devices == 3
        FileTraces(path, validate_chunk=2).close()
        assert trace_stats(path).n_devices == 3


def test_files_that_are_not_trace_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_traces(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(UserError, match="cannot be read as HDF5"):
        read_traces(junk)


@pytest.mark.parametrize(("t", "v", "off", "needle"), [
    ([0.0, 1.0], [1.0, 0.5], [1, 2], "offsets must start at 0"),
    ([0.0, 1.0], [1.0, 0.5], [0, 1], "offsets must start at 0"),  # does not end at len(t)
    ([0.0, 0.0], [1.0, 0.5], [0, 0, 2], "at least one breakpoint"),
    ([0.0, 1.0], [1.0], [0, 2], "differ in length"),
])
def test_validate_signal_checks_a_run_of_devices(t: list[float], v: list[float],
                                                 off: list[int], needle: str) -> None:
    """The chunk-level checks (the whole file's offsets are checked on opening)."""
    with pytest.raises(UserError, match=needle):
        validate_signal(Path("x.h5"), "availability", np.array(t), np.array(v),
                        np.array(off), None)
