"""Random streams derived from (run seed, purpose, keys...).

Every random choice in a run draws from a stream named by what it is for and where it
happens (round, device, step), never from a global generator whose state depends on the
order of execution. That is what makes a run give the same bits in-process, in a worker
pool or on Ray.

A purpose always takes the same number of keys: numpy's ``SeedSequence`` ignores trailing
zero words of its entropy, so ``stream(s, p, r)`` and ``stream(s, p, r, 0)`` are the same
stream (``tests/test_rng.py`` pins this). Give a new use its own purpose instead.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


# Purposes are hashed to integers so that new purposes never shift the streams of old ones.
def _purpose_key(purpose: str) -> int:
    return zlib.crc32(purpose.encode())


def seed_sequence(seed: int, purpose: str, *keys: int) -> np.random.SeedSequence:
    """The seed sequence of one stream."""
    return np.random.SeedSequence(entropy=[int(seed), _purpose_key(purpose), *map(int, keys)])


def stream(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """A numpy generator for one purpose, e.g. ``stream(seed, "select", round)``."""
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, purpose, *keys)))


class LazyStream:
    """The generator ``stream(seed, purpose, *keys)`` would return, created on first use.

    For streams that are handed out often and seldom drawn from (a policy's ``assign``
    stream, once per asynchronous job: FedAvg never draws from it), where building the
    seed sequence would cost more than the rest of the job's bookkeeping. Draws are
    exactly those of :func:`stream`.
    """

    __slots__ = ("_args", "_g")

    def __init__(self, seed: int, purpose: str, *keys: int) -> None:
        self._args = (seed, purpose, keys)
        self._g: np.random.Generator | None = None

    def __getattr__(self, name: str) -> object:
        if self._g is None:
            seed, purpose, keys = self._args
            self._g = stream(seed, purpose, *keys)
        return getattr(self._g, name)


def torch_generator(seed: int, purpose: str, *keys: int) -> torch.Generator:
    """A seeded CPU ``torch.Generator`` for one purpose."""
    g = torch.Generator()
    g.manual_seed(int(seed_sequence(seed, purpose, *keys).generate_state(1, np.uint64)[0] >> 1))
    return g


def int_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit integer seed for one purpose (for libraries that take an int)."""
    return int(seed_sequence(seed, purpose, *keys).generate_state(1, np.uint64)[0] >> 1)
