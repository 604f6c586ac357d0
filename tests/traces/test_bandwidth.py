"""Bandwidth traces: exact integrals against hand numbers, today's times for a constant."""

from __future__ import annotations

import itertools
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest

from fleetsim.costs import comm_seconds
from fleetsim.errors import UserError
from fleetsim.network import Path as NetPath
from fleetsim.traces.bandwidth import (
    BandwidthTrace,
    DeviceBandwidth,
    make_generator,
    read_csv,
    write_csv,
)
from fleetsim.traces.importers import capacity_bandwidth


def test_a_constant_trace_gives_todays_times_bit_for_bit() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        mbps = rng.choice([10.0, 5.0, 20.0, 50.0]) if rng.random() < 0.3 \
            else rng.uniform(0.1, 1000.0)
        lat = rng.choice([0.0, 0.05, rng.uniform(0, 1)])
        nbytes = float(rng.choice([4 * 1_663_370, rng.randrange(1, 10**9)]))
        t0 = rng.uniform(0, 1e6)
        today = NetPath(mbps, mbps, lat).upload_s(nbytes)
        assert today == comm_seconds(nbytes, mbps, lat)
        assert BandwidthTrace.constant(mbps).transfer_s(t0, nbytes, lat) == today


# rate 8 Mbit/s on [0, 10), 2 on [10, 30), 16 from 30 on (no period)
STEPS = BandwidthTrace([0.0, 10.0, 30.0], [8.0, 2.0, 16.0])


def test_a_varying_trace_integrates_exactly_by_hand() -> None:
    # 15 MB = 120 Mbit from t0 = 5: 5..10 at 8 -> 40; 10..30 at 2 -> 40; then 40 at 16
    # -> 2.5 s: the last bit leaves at 32.5
    assert STEPS.send_end_s(5.0, 15e6) == 32.5
    # with 0.05 s of latency first: bytes from 5.05: 39.6 by 10, 79.6 by 30, the last
    # 40.4 at 16 take 2.525 s: done at 32.525, 27.525 s after the start
    assert STEPS.transfer_s(5.0, 15e6, 0.05) == pytest.approx(27.525, rel=1e-14)
    assert STEPS.megabits(5.0, 32.5) == pytest.approx(120.0, rel=1e-15)
    assert STEPS.megabits(0.0, 10.0) == 80.0
    # entirely inside one segment: 1 MB = 8 Mbit at 2 Mbit/s from 12: 4 s
    assert STEPS.send_end_s(12.0, 1e6) == 16.0
    assert STEPS.rate_mbps_at(10.0) == 2.0 and STEPS.rate_bytes_per_s(31.0) == 2e6
    assert [STEPS.next_change_s(t) for t in (0.0, 9.9, 10.0, 30.0)] == [10.0, 10.0, 30.0,
                                                                         float("inf")]


def test_a_periodic_trace_wraps_exactly() -> None:
    # period 40: 8 on [0,10), 2 on [10,30), 16 on [30,40). From 35, 25 MB = 200 Mbit:
    # 35..40 at 16 -> 80; 40..50 at 8 -> 80 (160); 50..70 at 2 -> 40 (200): ends at 70
    tr = BandwidthTrace([0.0, 10.0, 30.0], [8.0, 2.0, 16.0], period_s=40.0)
    assert tr.send_end_s(35.0, 25e6) == pytest.approx(70.0, rel=1e-15)
    assert tr.megabits(0.0, 40.0) == 80 + 40 + 160
    assert tr.next_change_s(35.0) == 40.0 and tr.next_change_s(41.0) == 50.0


def test_a_zero_rate_stalls_until_the_rate_returns() -> None:
    tr = BandwidthTrace([0.0, 2.0], [0.0, 4.0])
    assert tr.send_end_s(0.0, 1e6) == 4.0  # 8 Mbit at 4 Mbit/s from 2 s
    assert BandwidthTrace([0.0, 1.0], [1.0, 0.0]).send_end_s(0.0, 1e6) == float("inf")


def test_capped_is_the_pointwise_minimum() -> None:
    c = STEPS.capped(4.0)
    assert [c.rate_mbps_at(t) for t in (0.0, 15.0, 40.0)] == [4.0, 2.0, 4.0]


@pytest.mark.parametrize("mbps", [[-1.0], [float("nan")], [float("inf")]])
def test_bad_rates_are_refused(mbps: list[float]) -> None:
    with pytest.raises(ValueError, match="not allowed"):
        BandwidthTrace([0.0], mbps)


def test_markov_levels_moves_between_its_levels() -> None:
    g = make_generator("markov_levels", {"levels_mbps": [1.0, 5.0, 20.0],
                                         "mean_dwell_s": 30.0}, "k")
    tr = g.make(3600.0, np.random.default_rng(3))
    vals = [tr.rate_mbps_at(t) for t in np.arange(0.0, 3600.0, 1.0)]
    assert set(vals) == {1.0, 5.0, 20.0}
    changes = sum(a != b for a, b in itertools.pairwise(vals))
    assert 60 < changes < 180  # about 3600 / 30 = 120 jumps, each to another level
    again = g.make(3600.0, np.random.default_rng(3))
    assert [again.rate_mbps_at(t) for t in np.arange(0.0, 3600.0, 1.0)] == vals


def test_lognormal_keeps_its_mean() -> None:
    g = make_generator("lognormal", {"mean_mbps": 10.0, "sigma": 0.8, "interval_s": 1.0},
                       "k")
    tr = g.make(200_000.0, np.random.default_rng(5))
    mean = tr.megabits(0.0, 200_000.0) / 200_000.0
    assert mean == pytest.approx(10.0, rel=0.02)  # sd of the mean ~ 0.67% here


def test_generator_options_are_checked() -> None:
    with pytest.raises(UserError, match=re.escape("at 'fleet.classes[0].bandwidth.up.options'")):
        make_generator("lognormal", {"mean_mbps": -1.0}, "fleet.classes[0].bandwidth.up")
    with pytest.raises(UserError, match="unknown bandwidth generator 'nope'"):
        make_generator("nope", {}, "k")


def test_csv_round_trip_and_bad_rows(tmp_path: Path) -> None:
    devs = [DeviceBandwidth(BandwidthTrace([0.0, 5.0], [1.5, 3.0]),
                            BandwidthTrace([0.0, 5.0], [10.0, 0.5])),
            DeviceBandwidth(BandwidthTrace.constant(2.0), BandwidthTrace.constant(4.0))]
    p = tmp_path / "bw.csv"
    write_csv(p, devs)
    back = read_csv(p, "fleet.classes[0].bandwidth.file")
    assert [d.up.rate_mbps_at(6.0) for d in back] == [3.0, 2.0]
    assert [d.down.rate_mbps_at(1.0) for d in back] == [10.0, 4.0]
    p.write_text("device,t_s,up_mbps,down_mbps\n0,0,1,1\n0,3,-2,1\n")
    with pytest.raises(UserError, match=re.escape("line 3: up_mbps is -2.0")):
        read_csv(p, "fleet.classes[0].bandwidth.file")
    p.write_text("device,t_s,up_mbps,down_mbps\n0,1,1,1\n")
    with pytest.raises(UserError, match=re.escape("starts at t_s=1.0")):
        read_csv(p, "k")


def test_fedscale_communication_becomes_each_clients_bandwidth(tmp_path: Path) -> None:
    p = tmp_path / "client_device_capacity"
    with p.open("wb") as f:
        pickle.dump({2: {"computation": 50.0, "communication": 3000.0},
                     1: {"computation": 80.0, "communication": 1250.0}}, f)
    devs, ids = capacity_bandwidth(p, down_up_ratio=2.0)
    assert ids == [1, 2]
    assert [d.up.rate_mbps_at(0.0) for d in devs] == [1.25, 3.0]
    assert [d.down.rate_mbps_at(0.0) for d in devs] == [2.5, 6.0]
    with p.open("wb") as f:
        pickle.dump({1: {"computation": 50.0, "communication": -5.0}}, f)
    with pytest.raises(UserError, match="client 1"):
        capacity_bandwidth(p)
