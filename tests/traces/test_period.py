"""The one period split: exact against rational arithmetic, scalar and vector bit-identical."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

from fleetsim.traces.period import split_period, split_period_array


def _times(p: float, n: int) -> list[float]:
    out = [0.0, p, math.nextafter(p, 0.0)]
    for k in range(1, n + 1):
        kp = k * p
        out += [kp, math.nextafter(kp, 0.0), math.nextafter(kp, math.inf),
                float(Decimal(k) * Decimal(repr(p)))]
    return out


@pytest.mark.parametrize("p", [1000.1, 0.1, 518400.0, 86400.3, 1e-3, 7.0])
def test_split_is_exact_and_in_range(p: float) -> None:
    times = _times(p, 3000)
    rng = np.random.default_rng(0)
    times += rng.uniform(0, 1e9 * p, 2000).tolist()
    qa, ra = split_period_array(np.array(times), p)
    for t, qv, rv in zip(times, qa, ra):
        q, r = split_period(t, p)
        assert 0.0 <= r < p, (t, r)
        exact_q = math.floor(Fraction(t) / Fraction(p))
        assert q == exact_q and Fraction(r) == Fraction(t) - exact_q * Fraction(p), t
        # the vectorised helper gives the same bits
        assert qv == q and rv == r, t


def test_split_of_decimal_period_starts() -> None:
    """A decimal period start just below k * p is the end of period k - 1, exactly."""
    p = 1000.1  # 1000.1000000000000227... in binary
    q, r = split_period(5000.5, p)  # 5 * p is 5000.5000000000001137...
    assert q == 4 and r == pytest.approx(p, abs=1e-9) and r < p
    q, r = split_period(129012.9, p)
    assert q == 128 and r < p
    q, r = split_period(0.0, p)
    assert (q, r) == (0.0, 0.0)


def test_split_with_per_query_periods() -> None:
    q, r = split_period_array(np.array([5.0, 5.0, 0.3]), np.array([2.0, 5.0, 0.1]))
    assert q.tolist() == [2.0, 1.0, 2.0]
    assert r[:2].tolist() == [1.0, 0.0]
    assert 0.0 <= r[2] < 0.1  # 0.3 is just below 3 * 0.1 in binary


def test_negative_times_in_the_array_helper_stay_in_range() -> None:
    p = 1000.1
    q, r = split_period_array(np.array([-1e-20, -0.5, -p, -3 * p - 7.0]), p)
    assert np.all((r >= 0) & (r < p))
    # -1e-20 is p - 1e-20 into period -1, which rounds to p: taken as 0 of period 0
    assert (q[0], r[0]) == (0.0, 0.0)
    assert q[1] == -1.0 and r[1] == pytest.approx(p - 0.5)
    assert (q[2], r[2]) == (-1.0, 0.0)
    assert q[3] == -4.0 and r[3] == pytest.approx(p - 7.0)
