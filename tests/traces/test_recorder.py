"""The recorder: a one-device trace of this host's CPU availability."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from fleetsim.cli import main
from fleetsim.errors import UserError
from fleetsim.traces import FileTraces, read_traces
from fleetsim.traces.recorder import record


def test_record_with_a_fake_sampler() -> None:
    busy = iter([0.25, 1.0, 0.0, 1.2])
    seen: list[float] = []
    ts = record(0.5, 2.0, sampler=lambda dt: next(busy), on_sample=lambda k, n, a: seen.append(a))
    assert ts.availability.t.tolist() == [0.0, 0.5, 1.0, 1.5]
    assert ts.availability.value.tolist() == [0.75, 0.0, 1.0, 0.0]  # clipped to [0, 1]
    assert seen == [0.75, 0.0, 1.0, 0.0]
    assert ts.online.value.tolist() == [1]
    assert ts.horizon_s == ts.period_s == 2.0
    assert ts.meta["params"] == {"interval_s": 0.5, "duration_s": 2.0}
    assert ts.meta["host"] == socket.gethostname()


def test_record_rejects_bad_durations() -> None:
    with pytest.raises(UserError, match="--interval-s 0"):
        record(0.0, 5.0, sampler=lambda dt: 0.0)


def test_cli_record_really_samples_this_host(tmp_path: Path, capsys: pytest.CaptureFixture
                                             ) -> None:
    out = tmp_path / "host.h5"
    assert main(["traces", "record", "--interval-s", "1", "--duration-s", "2", "-o", str(out),
                 "--quiet"]) == 0
    ts = read_traces(out)
    assert ts.n_devices == 1 and ts.availability.t.tolist() == [0.0, 1.0]
    assert np.all((ts.availability.value >= 0) & (ts.availability.value <= 1))
    assert ts.meta["source"] == "fleetsim traces record"
    assert ts.meta["params"]["interval_s"] == 1.0 and ts.meta["cpus"] >= 1
    assert FileTraces(out).device(0).online_at(12345.0)
    assert "wrote" in capsys.readouterr().out


def test_record_rejects_nan_samples_and_counts_clipped_ones() -> None:
    busy = iter([0.5, float("nan")])
    with pytest.raises(UserError, match="sample 2"):
        record(1.0, 2.0, sampler=lambda dt: next(busy))
    busy = iter([0.25, 1.0, -0.5, 1.2])
    ts = record(0.5, 2.0, sampler=lambda dt: next(busy))
    assert ts.meta["clipped_samples"] == 2  # -0.5 and 1.2 busy are outside [0, 1]
