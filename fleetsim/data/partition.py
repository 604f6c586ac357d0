"""Partitioners: which training samples each device holds.

A partition is CSR: ``indices`` (into the training set) and ``offsets`` (n_devices + 1),
so 100,000 devices cost two arrays, not 100,000 lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fleetsim.errors import UserError
from fleetsim.registry import Registry


@dataclass(frozen=True)
class Partition:
    indices: np.ndarray
    offsets: np.ndarray

    @property
    def n_devices(self) -> int:
        return len(self.offsets) - 1

    def of(self, device: int) -> np.ndarray:
        return self.indices[self.offsets[device]:self.offsets[device + 1]]

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    @staticmethod
    def from_lists(parts: list[np.ndarray]) -> Partition:
        offsets = np.zeros(len(parts) + 1, np.int64)
        np.cumsum([len(p) for p in parts], out=offsets[1:])
        idx = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        return Partition(idx, offsets)


class PartitionOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Partitioner:
    Options: ClassVar[type[PartitionOptions]] = PartitionOptions

    def __init__(self, options: PartitionOptions) -> None:
        self.options = options

    def split(self, y: np.ndarray, n_devices: int, rng: np.random.Generator,
              groups: tuple[np.ndarray, ...] | None = None) -> Partition:
        raise NotImplementedError

    def sizes(self, y: np.ndarray, n_devices: int, rng: np.random.Generator,
              groups: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
        """Samples per device, exactly ``split(...).sizes()`` (timing-only runs need no
        more). Partitioners whose sizes follow from their options override this, so a
        fleet of 10^6 devices is not dealt its samples only to count them."""
        return self.split(y, n_devices, rng, groups).sizes()


PARTITIONERS: Registry[type[Partitioner]] = Registry("partitioner")


def _need_samples(n_samples: int, n_devices: int, what: str) -> None:
    if n_samples < n_devices:
        raise UserError(f"data.partition: {what} gives each sample to one device, but there are "
                        f"{n_samples} training samples for {n_devices} devices. Allowed: more "
                        "samples than devices, or data.partition.options.samples_per_device "
                        "(devices then draw their own samples, with overlap).")


@PARTITIONERS.register("iid")
class IID(Partitioner):
    """Shuffle and deal: every device gets an equal share of a random permutation."""

    class Options(PartitionOptions):
        samples_per_device: int | None = Field(None, ge=1, description="draw this many "
                                               "samples per device (overlap allowed) instead")

    def split(self, y: np.ndarray, n_devices: int, rng: np.random.Generator,
              groups: tuple[np.ndarray, ...] | None = None) -> Partition:
        m = self.options.samples_per_device  # type: ignore[attr-defined]
        if m is not None:
            if m > len(y):
                raise UserError(f"data.partition.options.samples_per_device: {m} is more than "
                                f"the {len(y)} training samples (a device draws its samples "
                                "without repeats). Allowed: at most the training set's size.")
            return Partition.from_lists([rng.choice(len(y), m, replace=False)
                                         for _ in range(n_devices)])
        _need_samples(len(y), n_devices, "iid")
        return Partition.from_lists([np.sort(p) for p in
                                     np.array_split(rng.permutation(len(y)), n_devices)])

    def sizes(self, y: np.ndarray, n_devices: int, rng: np.random.Generator,
              groups: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
        m = self.options.samples_per_device  # type: ignore[attr-defined]
        if m is not None:
            if m > len(y):
                return self.split(y, n_devices, rng).sizes()  # its error
            return np.full(n_devices, m, np.int64)
        _need_samples(len(y), n_devices, "iid")
        # np.array_split: the first len(y) % n devices get one sample more
        q, rest = divmod(len(y), n_devices)
        out = np.full(n_devices, q, np.int64)
        out[:rest] += 1
        return out


@PARTITIONERS.register("dirichlet")
class Dirichlet(Partitioner):
    """Label skew: class proportions per device drawn from Dirichlet(alpha).

    Without ``samples_per_device`` (default), each class's samples are split over the
    devices in proportions drawn from Dir(alpha) (Hsu et al. 2019), redrawn until every
    device holds at least ``min_samples``. With it, each device draws its own class mix
    p ~ Dir(alpha) and that many samples (overlap across devices allowed), which scales
    to fleets larger than the dataset. Small alpha: few classes per device.
    """

    class Options(PartitionOptions):
        alpha: float = Field(0.5, gt=0, description="concentration; small = more skewed")
        min_samples: int = Field(2, ge=1)
        samples_per_device: int | None = Field(None, ge=1)

    def split(self, y: np.ndarray, n_devices: int, rng: np.random.Generator,
              groups: tuple[np.ndarray, ...] | None = None) -> Partition:
        o = self.options
        assert isinstance(o, Dirichlet.Options)
        classes = np.unique(y)
        by_class = [np.flatnonzero(y == c) for c in classes]
        if o.samples_per_device is not None:
            parts = []
            for _ in range(n_devices):
                p = rng.dirichlet(np.full(len(classes), o.alpha))
                counts = rng.multinomial(o.samples_per_device, p)
                parts.append(np.sort(np.concatenate(
                    [rng.choice(by_class[c], min(k, len(by_class[c])), replace=False)
                     for c, k in enumerate(counts) if k])))
            return Partition.from_lists(parts)
        _need_samples(len(y), n_devices, "dirichlet")
        if n_devices * o.min_samples > len(y):  # no draw can succeed: say so at once
            raise UserError(f"data.partition.options.min_samples: {o.min_samples} samples for "
                            f"each of {n_devices} devices need {n_devices * o.min_samples}, "
                            f"but there are {len(y)} training samples. Allowed: min_samples "
                            f"of at most {len(y) // n_devices}, or samples_per_device.")
        for _ in range(1000):
            parts: list[list[np.ndarray]] = [[] for _ in range(n_devices)]
            for idx in by_class:
                idx = rng.permutation(idx)
                p = rng.dirichlet(np.full(n_devices, o.alpha))
                cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
                for d, chunk in enumerate(np.split(idx, cuts)):
                    parts[d].append(chunk)
            flat = [np.sort(np.concatenate(p)) for p in parts]
            if min(len(f) for f in flat) >= o.min_samples:
                return Partition.from_lists(flat)
        raise UserError(f"data.partition.options: a Dirichlet split with alpha={o.alpha} over "
                        f"{n_devices} devices never gave every device {o.min_samples} samples "
                        "in 1000 draws. Allowed: a larger alpha, a smaller min_samples, or "
                        "samples_per_device.")


@PARTITIONERS.register("shards")
class Shards(Partitioner):
    """McMahan et al. 2017: sort by label, cut into shards, deal ``shards_per_device`` each."""

    class Options(PartitionOptions):
        shards_per_device: int = Field(2, ge=1)

    def split(self, y: np.ndarray, n_devices: int, rng: np.random.Generator,
              groups: tuple[np.ndarray, ...] | None = None) -> Partition:
        s = self.options.shards_per_device  # type: ignore[attr-defined]
        _need_samples(len(y), n_devices * s, "shards (devices x shards_per_device)")
        order = np.argsort(y, kind="stable")
        shards = np.array_split(order, n_devices * s)
        deal = rng.permutation(len(shards)).reshape(n_devices, s)
        return Partition.from_lists([np.sort(np.concatenate([shards[j] for j in row]))
                                     for row in deal])


@PARTITIONERS.register("natural")
class Natural(Partitioner):
    """The dataset's own users (LEAF writers, synthetic users): device i holds user
    ``i mod users``, counting only users with training samples (a user whose samples all
    went to the test split has nothing to train on)."""

    def split(self, y: np.ndarray, n_devices: int, rng: np.random.Generator,
              groups: tuple[np.ndarray, ...] | None = None) -> Partition:
        if not groups:
            raise UserError("data.partition.name: 'natural' needs a dataset with users "
                            "(synthetic, femnist). Allowed: iid, dirichlet, shards for this "
                            "dataset.")
        users = [g for g in groups if len(g)]
        if not users:
            raise UserError(f"data.partition.name: 'natural': none of the dataset's "
                            f"{len(groups)} users has a training sample. Allowed: a smaller "
                            "data.test_fraction, or users with samples.")
        return Partition.from_lists([users[i % len(users)] for i in range(n_devices)])


def make_partition(name: str, options: dict, y: np.ndarray, n_devices: int,
                   rng: np.random.Generator,
                   groups: tuple[np.ndarray, ...] | None = None) -> Partition:
    cls = PARTITIONERS.get(name)
    part = cls(cls.Options(**options)).split(y, n_devices, rng, groups)
    _check_sizes(name, part.sizes(), n_devices)
    return part


def partition_sizes(name: str, options: dict, y: np.ndarray, n_devices: int,
                    rng: np.random.Generator,
                    groups: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
    """``make_partition(...).sizes()``, with the same checks, at the cost of the sizes
    alone where the partitioner knows them without dealing samples."""
    cls = PARTITIONERS.get(name)
    sizes = cls(cls.Options(**options)).sizes(y, n_devices, rng, groups)
    _check_sizes(name, sizes, n_devices)
    return sizes


def _check_sizes(name: str, sizes: np.ndarray, n_devices: int) -> None:
    empty = np.flatnonzero(sizes == 0)
    if empty.size:
        # A device without samples trains with batch size 0: steps of no MACs that arrive
        # at once and carry weight 0 -- timings and selection quietly wrong, and no
        # batches to draw in real training.
        raise UserError(f"data.partition: the '{name}' partitioner gave device "
                        f"{int(empty[0])} ({empty.size} devices in all) no training "
                        f"samples. Allowed: a partition that gives each of the {n_devices} "
                        "devices at least one sample.")
