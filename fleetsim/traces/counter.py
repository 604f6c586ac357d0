"""Counter-based random numbers for traces: many devices per numpy call.

The default trace streams (``stream(seed, "trace", device)``) build one seeded
generator per device, a fixed ~35 us before the first draw, and a trace of a few dozen
numpy calls more: at a million devices that per-device cost is most of a timing-only
run. A counter-based stream instead computes the k-th number of device d directly,
``mix(key + counter(d, lane, k) * gamma)``, so the numbers of a thousand devices come
from one vectorised expression, and any device's numbers are the same whichever others
are made with it.

``mix`` and ``gamma`` are SplitMix64's (Steele, Lea and Flood, OOPSLA 2014; the output
mix is Stafford's "Mix13"): SplitMix64 outputs ``mix(seed + i * gamma)`` for i = 1, 2, ...,
and passes BigCrush. Here ``i`` is a counter with the device in its top 32 bits, a lane
(what the numbers are for) in the next 4 and the index in the last 28, so each (device,
lane) reads its own disjoint block of one SplitMix64 sequence: no two ever overlap.
"""

from __future__ import annotations

import numpy as np

from fleetsim.rng import seed_sequence

GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
MAX_DEVICES = 2**32
MAX_PER_LANE = 2**28
LANES = 16
_TO_UNIT = 2.0**-53


def key(seed: int, purpose: str) -> np.uint64:
    """The 64-bit key of one purpose's counter streams under ``seed``."""
    return np.uint64(seed_sequence(seed, purpose).generate_state(1, np.uint64)[0])


def bits(k: np.uint64, devices: np.ndarray, lane: int, start: int, n: int) -> np.ndarray:
    """Numbers ``start .. start + n - 1`` of lane ``lane`` of each device: uint64, (D, n).

    Parameters
    ----------
    k : the key (:func:`key`)
    devices : device indices, each in ``[0, 2**32)``
    lane : ``0 .. 15``
    start, n : the first index and how many, ``start + n <= 2**28``
    """
    d = np.asarray(devices, np.int64)
    if len(d) and (d.min() < 0 or d.max() >= MAX_DEVICES):
        raise ValueError(f"counter streams hold devices 0 .. {MAX_DEVICES - 1}")
    if not 0 <= lane < LANES or start < 0 or start + n > MAX_PER_LANE:
        raise ValueError(f"lane {lane}, numbers {start}..{start + n - 1}: out of range")
    base = (d.astype(np.uint64) << np.uint64(32)) | np.uint64((lane << 28) + start)
    x = base[:, None] + np.arange(n, dtype=np.uint64)[None, :]
    # uint64 arithmetic wraps modulo 2**64, as SplitMix64's does
    x *= GAMMA
    x += k
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def uniform(k: np.uint64, devices: np.ndarray, lane: int, start: int, n: int) -> np.ndarray:
    """Uniform floats in ``[0, 1)`` with 53 random bits, (D, n)."""
    return (bits(k, devices, lane, start, n) >> np.uint64(11)).astype(np.float64) * _TO_UNIT


def exponential(k: np.uint64, devices: np.ndarray, lane: int, start: int, n: int
                ) -> np.ndarray:
    """Standard exponentials ``-log(1 - u)``, (D, n): finite (``u < 1``), >= 0."""
    e = uniform(k, devices, lane, start, n)
    np.negative(e, out=e)
    np.log1p(e, out=e)
    np.negative(e, out=e)
    return e
