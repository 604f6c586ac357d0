"""Random streams (fleetsim/rng.py): every reproducibility claim rests on them.

Golden values pin the streams across versions: a change here changes every run's
results, so it must be deliberate (and this file updated with a note in the changelog).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from fleetsim.rng import LazyStream, int_seed, seed_sequence, stream, torch_generator


def test_golden_values_pin_the_streams_across_versions() -> None:
    assert stream(0, "select", 1).integers(0, 2**32, 4).tolist() == \
        [2509896997, 4145031191, 4088768205, 3642823395]
    assert stream(7, "policy", 3, 11).random(3).tolist() == \
        [0.012893936005764384, 0.7893532558441874, 0.6024986481356379]
    assert int_seed(1, "init") == 1351750760845235182
    assert int_seed(1, "init", 5) == 3161866756417715986
    g = torch_generator(2, "batches", 4, 9)
    assert torch.randint(0, 2**31 - 1, (3,), generator=g).tolist() == \
        [1051118503, 551693188, 1797075042]


def test_a_stream_is_pcg64_of_the_seed_purpose_crc32_and_keys() -> None:
    # the documented definition, written out with numpy alone
    ref = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        entropy=[7, zlib.crc32(b"policy"), 3, 11])))
    assert stream(7, "policy", 3, 11).random(5).tolist() == ref.random(5).tolist()


def _draws(seed: int, purpose: str, *keys: int) -> list[float]:
    return stream(seed, purpose, *keys).random(4).tolist()


@pytest.mark.parametrize(("a", "b"), [
    ((0, "select", 1), (1, "select", 1)),          # seed
    ((0, "select", 1), (0, "assign", 1)),          # purpose
    ((0, "policy", 1, 2), (0, "policy", 1, 3)),    # a key that is not the first
    ((0, "policy", 1, 2, 5), (0, "policy", 1, 2, 6)),  # the last of three keys
    ((0, "policy", 1, 2), (0, "policy", 2, 1)),    # key order
])
def test_distinct_seeds_purposes_and_keys_give_distinct_draws(a: tuple, b: tuple) -> None:
    assert _draws(*a) != _draws(*b)


def test_trailing_zero_keys_do_not_separate_streams() -> None:
    # numpy's SeedSequence drops trailing zero words of its entropy, so (r) and (r, 0)
    # name the same stream: the rule in rng.py's docstring (a purpose always takes the
    # same number of keys) is what keeps streams apart, not the key count
    assert _draws(0, "policy", 1) == _draws(0, "policy", 1, 0)
    assert int_seed(1, "init") == int_seed(1, "init", 0)


def test_the_same_arguments_give_the_same_draws() -> None:
    assert _draws(3, "batches", 4, 2) == _draws(3, "batches", 4, 2)
    a = torch_generator(3, "batches", 4, 2)
    b = torch_generator(3, "batches", 4, 2)
    assert torch.equal(torch.rand(5, generator=a), torch.rand(5, generator=b))
    assert not torch.equal(torch.rand(5, generator=torch_generator(3, "batches", 4, 3)),
                           torch.rand(5, generator=torch_generator(3, "batches", 4, 2)))


def test_int_seeds_are_63_bit_and_keyed() -> None:
    seeds = {int_seed(0, "init", k) for k in range(200)}
    assert len(seeds) == 200
    assert all(0 <= s < 2**63 for s in seeds)
    assert int_seed(0, "init") != int_seed(0, "other")


def test_lazy_stream_draws_exactly_what_stream_draws() -> None:
    lazy = LazyStream(5, "assign", 17)
    ref = stream(5, "assign", 17)
    assert lazy.integers(0, 1000, 6).tolist() == ref.integers(0, 1000, 6).tolist()
    assert lazy.random(3).tolist() == ref.random(3).tolist()  # the state carries on


def test_seed_sequence_entropy_holds_every_key() -> None:
    ss = seed_sequence(9, "x", 1, 2, 3)
    assert list(ss.entropy) == [9, zlib.crc32(b"x"), 1, 2, 3]
