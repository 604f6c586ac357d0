"""Shared fixtures: a tiny scenario and helpers to write trace files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fleetsim.traces import Signal, TraceSet, write_traces

# The DSE caches in the user's cache folder by default: tests must never read a user's
# fronts or leave theirs there. One temporary folder for the session (CLI subprocesses
# inherit it); tests that need their own pass dse.cache_dir.
os.environ["FLEETSIM_CACHE_DIR"] = tempfile.mkdtemp(prefix="fleetsim-test-cache-")

TINY = """
name: tiny
seed: 0
data:
  dataset: digits
  partition: {name: iid}
model:
  arch: mlp
  options: {hidden: [16]}
fleet:
  devices: 8
  classes:
    - {name: fast, share: 0.5, peak_macs_per_s: 1.0e7}
    - {name: slow, share: 0.5, peak_macs_per_s: 2.5e6}
  traces:
    generator: markov
    options: {levels: [1.0, 0.5], mean_dwell_s: 30}
training:
  rounds: 3
  clients_per_round: 4
  deadline_s: 20
  local_steps: 5
  batch_size: 16
"""


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    return p


def make_traces(avail: list[tuple[list[float], list[float]]],
                online: list[tuple[list[float], list[int]]] | None = None,
                period_s: float | None = None, horizon_s: float = 1000.0) -> TraceSet:
    """A TraceSet from per-device (times, values) lists."""
    if online is None:
        online = [([0.0], [1]) for _ in avail]
    return TraceSet(
        availability=Signal.from_lists([np.asarray(t, float) for t, _ in avail],
                                       [np.asarray(v, float) for _, v in avail], np.float64),
        online=Signal.from_lists([np.asarray(t, float) for t, _ in online],
                                 [np.asarray(v, np.uint8) for _, v in online], np.uint8),
        horizon_s=horizon_s, period_s=period_s, meta={"source": "test"})


@pytest.fixture
def write_trace_file(tmp_path: Path):
    def write(name: str, ts: TraceSet) -> Path:
        p = tmp_path / name
        write_traces(p, ts)
        return p

    return write
