"""Splitting a time into whole periods and an offset: the one place in fleetsim it is done.

``t = q * period + r`` with ``q`` a whole number and ``0 <= r < period``, exactly, where
``t`` and ``period`` are the float64 values given (not the decimals they were typed as:
1000.1 is stored as 1000.1000000000000227..., so the decimal 5000.5 lies just *before*
the fifth period start, at offset ``period - 1.1e-13``).

The obvious ``q = floor(t / period); r = t - q * period`` is wrong near every period start
of a period binary floating point cannot represent: ``t / period`` rounds, up to a whole
number when ``t`` lies just below a multiple, and ``r`` comes out slightly negative (or
0 where it should be just below ``period``). A negative offset then reads the last
segment of the period, or another device's slice in the CSR arrays.

Here the remainder comes first, from ``fmod``, which is exact in IEEE arithmetic (the
true remainder of two floats is always a float), so ``0 <= r < period`` needs no
correction; the quotient ``(t - r) / period`` is then a whole number up to rounding and
is rounded to it, exactly for ``q < 2**52``. CPython's float ``divmod`` and numpy's
``np.divmod`` both compute exactly this (``_float_div_mod`` / ``npy_divmod``), so the
scalar and the vectorised helper give the same bits; the tests check that, and check
both against exact rational arithmetic.
"""

from __future__ import annotations

import numpy as np


def split_period(t: float, period_s: float) -> tuple[float, float]:
    """``(q, r)`` with ``t = q * period_s + r`` exactly, ``q`` whole, ``0 <= r < period_s``.

    Parameters
    ----------
    t : a finite time >= 0, in seconds (callers deal with inf, NaN and negative times)
    period_s : a finite period > 0

    Pure Python on purpose: this is on the engine's hot path, where a numpy call would
    cost ~1 us.
    """
    return divmod(t, period_s)


def split_period_array(t: np.ndarray, period_s: float | np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`split_period` for arrays: the same algorithm, so the same bits per element.

    ``period_s`` may be an array of per-query periods (broadcast against ``t``); times
    and periods must be finite, periods > 0. Negative times are allowed here (a daily
    window that opened before 0): their offset ``fmod + period`` is rounded, and one that
    rounds up to the period itself is taken as offset 0 of the next period, so that
    ``0 <= r < period`` still holds.
    """
    q, r = np.divmod(np.asarray(t, np.float64), period_s)
    wrap = r >= period_s  # only for t < 0
    if wrap.any():
        q = np.where(wrap, q + 1.0, q)
        r = np.where(wrap, 0.0, r)
    return q, r
