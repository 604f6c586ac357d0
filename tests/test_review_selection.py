"""Review (issue 13): selectors on devices that can never finish, and slot counts."""

from __future__ import annotations

import math

import numpy as np

from fleetsim.server.selection import DeviceReport, FleetView, OortOptions, OortSelector


def view(n: int) -> FleetView:
    return FleetView(n, np.zeros(n, dtype=int), np.full(n, 100))


def test_oort_penalises_a_device_that_would_need_forever() -> None:
    # Device 1 was too slow for any work: the engine reports the time one mini-batch
    # would take, which is inf when its trace never gives it compute again. Oort's
    # system penalty (T/t)^alpha skipped non-finite durations, so device 1 scored like a
    # device whose speed is unknown -- above the slow but finite device 0.
    s = OortSelector(OortOptions(preferred_duration_s=10.0), view(2))
    s.feedback([DeviceReport(0, 0, "completed", 40.0, 1.0, 10, 100),
                DeviceReport(1, 0, "too_slow", math.inf, math.nan, 0, 100)])
    score = s.scores(1, np.array([0, 1]))
    assert score[1] < score[0]
    assert score[1] == 0.0


def test_oort_pacer_percentile_ignores_infinite_durations() -> None:
    s = OortSelector(OortOptions(round_threshold=50.0), view(3))
    s.feedback([DeviceReport(0, 0, "completed", 10.0, 1.0, 10, 100),
                DeviceReport(1, 0, "completed", 20.0, 1.0, 10, 100),
                DeviceReport(2, 0, "too_slow", math.inf, math.nan, 0, 100)])
    assert s.preferred_s() == 15.0


def test_oort_exploit_slots_are_not_lost_to_rounding() -> None:
    # (1 - 0.3) * 90 = 62.99999999999999 in floating point: int() gave 62 of the 63
    # exploitation slots that epsilon 0.3 leaves
    n = 200
    s = OortSelector(OortOptions(epsilon=0.3, epsilon_min=0.3, epsilon_decay=1.0), view(n))
    s.feedback([DeviceReport(d, 0, "completed", 1.0, 1.0, 10, 100) for d in range(150)])
    picked = s.select(1, 0.0, 90, lambda d: True, np.random.default_rng(0))
    exploited = [d for d in picked if d < 150]
    assert len(picked) == 90 and len(exploited) == 63
