"""Lazy generated traces equal the materialised file, bit for bit, for every generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetsim.traces import FileTraces, GeneratedTraces, read_traces
from fleetsim.traces.generators import GENERATORS

# each generator once plainly and once with per-device distribution specs
CASES = {
    "constant": [{}, {"level": {"dist": "uniform", "low": 0.1, "high": 0.9},
                      "mean_offline_s": 600}],
    "uniform": [{}, {"interval_s": {"dist": "loguniform", "low": 60, "high": 6000},
                     "intervals": "exponential", "mean_offline_s": 900}],
    "markov": [{"mean_offline_s": 1800},
               {"levels": [1.0, {"dist": "uniform", "low": 0.2, "high": 0.6}],
                "mean_dwell_s": {"dist": "lognormal", "mean": 300, "sigma": 1.0},
                "jump": [[0, 1], [1, 0]]}],
    "diurnal": [{}, {"phase_h": {"dist": "normal", "mean": 0, "sd": 3},
                     "noise_sd": {"dist": "choice", "values": [0.0, 0.2]}}],
    "bursty": [{}, {"burst_rate_per_h": {"dist": "lognormal", "mean": 4, "sigma": 1},
                    "base": {"dist": "uniform", "low": 0.6, "high": 1.0}}],
}


def test_every_registered_generator_is_covered() -> None:
    assert set(GENERATORS.names()) == set(CASES)


@pytest.mark.parametrize(("name", "k"), [(n, k) for n in CASES for k in range(2)])
def test_lazy_equals_file(name: str, k: int, tmp_path: Path) -> None:
    n, horizon = 23, 86400.0
    src = GeneratedTraces.from_name(name, CASES[name][k], n, horizon, seed=7)
    path = tmp_path / "t.h5"
    src.write(path, chunk_devices=5)  # several chunks, one ragged
    lazy = GeneratedTraces.from_name(name, CASES[name][k], n, horizon, seed=7)
    ft = FileTraces(path)
    try:
        assert ft.period_s == horizon and ft.n_devices == n
        assert ft.meta["generator"] == name and ft.meta["seed"] == 7
        assert ft.meta["params"] == lazy.generator.params()  # provenance: the parameters
        for i in reversed(range(n)):  # any order: each device has its own stream
            a, b = lazy.signals(i), ft.signals(i)
            for x, y in zip((a.avail_t, a.avail_v, a.online_t, a.online_v),
                            (b.avail_t, b.avail_v, b.online_t, b.online_v)):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
            da, db = lazy.device(i), ft.device(i)
            for t in (0.0, 1234.5, 90000.0, 3 * horizon + 17):
                assert da.availability_at(t) == db.availability_at(t)
                assert da.online_at(t) == db.online_at(t)
                assert da.finish_time(t, 600.0) == db.finish_time(t, 600.0)
    finally:
        ft.close()
    read_traces(path)  # the whole file validates


def test_a_generator_that_breaks_the_format_is_a_clear_error() -> None:
    """A plugin generator's output is checked like a file's: values, times, period."""
    from fleetsim.errors import UserError
    from fleetsim.traces.generators import DeviceSignals, TraceGenerator

    class Bad(TraceGenerator):
        def make(self, o: object, horizon_s: float, rng: np.random.Generator) -> DeviceSignals:
            return DeviceSignals(np.array([0.0, 5.0]), np.array([1.0, 1.5]), np.zeros(1),
                                 np.ones(1, np.uint8))

    class Late(TraceGenerator):
        def make(self, o: object, horizon_s: float, rng: np.random.Generator) -> DeviceSignals:
            return DeviceSignals(np.array([0.0, horizon_s]), np.array([1.0, 0.5]),
                                 np.zeros(1), np.ones(1, np.uint8))

    opts = TraceGenerator.Options()
    with pytest.raises(UserError, match=r"generator 'bad'.*device 1.*1\.5.*out of range"):
        GeneratedTraces(Bad(opts), "bad", 3, 100.0, seed=0).device(1)
    with pytest.raises(UserError, match=r"generator 'late'.*at or beyond the period"):
        GeneratedTraces(Late(opts), "late", 3, 100.0, seed=0).materialise()
