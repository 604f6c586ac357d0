"""Counter-based streams: SplitMix64 at the documented positions, disjoint per device."""

from __future__ import annotations

import numpy as np
import pytest

from fleetsim.traces import counter

MASK = 2**64 - 1
GAMMA = 0x9E3779B97F4A7C15


def splitmix64_outputs(seed: int, n: int) -> list[int]:
    """Plain SplitMix64 (Steele et al. 2014), written from the published algorithm."""
    out, state = [], seed
    for _ in range(n):
        state = (state + GAMMA) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        out.append(z ^ (z >> 31))
    return out


def test_splitmix64_reference_matches_the_published_first_output() -> None:
    # SplitMix64 seeded with 0: its first output is 0xE220A8397B1DCDAF
    assert splitmix64_outputs(0, 1)[0] == 0xE220A8397B1DCDAF


@pytest.mark.parametrize(("key", "device", "lane", "start"), [
    (0, 0, 0, 1), (12345, 7, 3, 0), (2**63 + 5, 2**32 - 1, 15, 1000)])
def test_bits_are_splitmix64_at_the_counter_position(key: int, device: int, lane: int,
                                                     start: int) -> None:
    """Number k of (device, lane) is SplitMix64's output number ``counter`` with
    ``counter = device * 2**32 + lane * 2**28 + k``, under seed ``key - gamma``."""
    n = 5
    got = counter.bits(np.uint64(key), np.array([device]), lane, start, n)[0].tolist()
    pos = (device << 32) + (lane << 28) + start
    # output i of SplitMix64(seed) is mix(seed + i * gamma): seed = key + (pos - 1) * gamma
    want = splitmix64_outputs((key + (pos - 1) * GAMMA) & MASK, n)
    assert got == want


def test_rows_do_not_depend_on_the_other_devices() -> None:
    k = counter.key(3, "trace-counter")
    many = counter.uniform(k, np.array([5, 9, 1_000_000]), 2, 0, 50)
    one = counter.uniform(k, np.array([9]), 2, 0, 50)
    assert np.array_equal(many[1], one[0])
    assert not np.array_equal(many[0], many[1])  # other devices, other numbers
    assert not np.array_equal(counter.uniform(k, np.array([9]), 3, 0, 50)[0], one[0])


def test_uniforms_and_exponentials_have_their_distributions() -> None:
    k = counter.key(0, "test")
    u = counter.uniform(k, np.arange(200), 0, 0, 1000).ravel()
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.003 and abs(u.var() - 1 / 12) < 0.001
    # uniform bins: a chi-square well inside its 99.9% range (19 degrees of freedom)
    counts = np.bincount((u * 20).astype(int), minlength=20)
    chi2 = float(((counts - len(u) / 20) ** 2 / (len(u) / 20)).sum())
    assert chi2 < 43.8
    e = counter.exponential(k, np.arange(200), 1, 0, 1000).ravel()
    assert e.min() >= 0.0 and np.isfinite(e).all()
    assert abs(e.mean() - 1.0) < 0.01 and abs(e.var() - 1.0) < 0.03
    # neighbouring numbers are not correlated
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01


def test_keys_differ_by_seed_and_purpose() -> None:
    assert counter.key(0, "a") != counter.key(1, "a")
    assert counter.key(0, "a") != counter.key(0, "b")
    assert counter.key(4, "a") == counter.key(4, "a")


@pytest.mark.parametrize(("devices", "lane", "start", "n"), [
    ([-1], 0, 0, 1), ([2**32], 0, 0, 1), ([0], 16, 0, 1), ([0], 0, 2**28 - 1, 2)])
def test_positions_outside_the_blocks_are_refused(devices: list[int], lane: int, start: int,
                                                  n: int) -> None:
    with pytest.raises(ValueError):
        counter.bits(np.uint64(1), np.array(devices), lane, start, n)
