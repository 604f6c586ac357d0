"""Partitioners: disjoint, covering, the sizes and the label skew each one promises.

Labels here are written by the test (10 classes, shuffled), so every property is checked
against numbers known beforehand, not against a second run of the same code.
"""

from __future__ import annotations

import numpy as np
import pytest

from fleetsim.data import Partition, make_partition, partition_sizes
from fleetsim.errors import UserError

CLASSES = 10


def labels(per_class: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(CLASSES), per_class))


def assert_disjoint_and_covering(part: Partition, n: int) -> None:
    every = np.concatenate([part.of(d) for d in range(part.n_devices)])
    assert len(every) == n, "each sample must go to exactly one device"
    assert np.array_equal(np.sort(every), np.arange(n))


def label_distance(part: Partition, y: np.ndarray) -> np.ndarray:
    """Per device, the total-variation distance of its label shares from the global ones."""
    glob = np.bincount(y, minlength=CLASSES) / len(y)
    out = []
    for d in range(part.n_devices):
        share = np.bincount(y[part.of(d)], minlength=CLASSES) / len(part.of(d))
        out.append(0.5 * np.abs(share - glob).sum())
    assert len(out) == part.n_devices > 0
    return np.asarray(out)


# -- iid -----------------------------------------------------------------------------------

def test_iid_deals_equal_shares_of_a_shuffle() -> None:
    y = np.sort(labels(50))  # sorted: dealing without shuffling would give 1-2 labels each
    part = make_partition("iid", {}, y, 7, np.random.default_rng(0))
    assert part.n_devices == 7
    assert_disjoint_and_covering(part, 500)
    assert sorted(part.sizes().tolist()) == [71] * 4 + [72] * 3  # 500 = 7 x 71 + 3
    assert all(len(np.unique(y[part.of(d)])) == CLASSES for d in range(7))
    assert label_distance(part, y).max() < 0.2


def test_iid_with_samples_per_device_draws_that_many_distinct_samples() -> None:
    y = labels(10)
    part = make_partition("iid", {"samples_per_device": 30}, y, 20, np.random.default_rng(1))
    assert part.sizes().tolist() == [30] * 20
    for d in range(20):
        own = part.of(d)
        assert len(np.unique(own)) == 30 and own.min() >= 0 and own.max() < 100


def test_iid_needs_a_sample_per_device() -> None:
    with pytest.raises(UserError, match="samples_per_device"):
        make_partition("iid", {}, labels(1), 11, np.random.default_rng(0))


# -- dirichlet -----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_dirichlet_small_alpha_skews_labels_large_alpha_does_not(seed: int) -> None:
    y = labels(100, seed)
    skewed = make_partition("dirichlet", {"alpha": 0.05}, y, 10, np.random.default_rng(seed))
    even = make_partition("dirichlet", {"alpha": 1000.0}, y, 10, np.random.default_rng(seed))
    for part in (skewed, even):
        assert_disjoint_and_covering(part, 1000)
        assert part.sizes().min() >= 2  # min_samples, its default
    # Dir(0.05): most of a class lands on one device (distance ~0.7 measured; 0.9 is the
    # most a 10-class device can be away); Dir(1000): every device holds ~1/10 of each
    # class (~0.02 measured)
    assert label_distance(skewed, y).mean() > 0.5
    assert label_distance(even, y).max() < 0.06
    assert np.abs(even.sizes() - 100).max() <= 10


def test_dirichlet_min_samples_is_kept() -> None:
    y = labels(20)
    # the first draw of this stream leaves some device below 8 samples ...
    loose = make_partition("dirichlet", {"alpha": 0.1, "min_samples": 1}, y, 10,
                           np.random.default_rng(0))
    assert loose.sizes().min() < 8
    # ... so min_samples=8 must draw again until every device has 8
    part = make_partition("dirichlet", {"alpha": 0.1, "min_samples": 8}, y, 10,
                          np.random.default_rng(0))
    assert_disjoint_and_covering(part, 200)
    assert part.sizes().min() >= 8


def test_dirichlet_with_samples_per_device() -> None:
    y = labels(100)
    skewed = make_partition("dirichlet", {"alpha": 0.05, "samples_per_device": 50}, y, 30,
                            np.random.default_rng(0))
    even = make_partition("dirichlet", {"alpha": 1000.0, "samples_per_device": 50}, y, 30,
                          np.random.default_rng(0))
    for part in (skewed, even):
        assert part.sizes().tolist() == [50] * 30
        assert all(len(np.unique(part.of(d))) == 50 for d in range(30))
    # 50 draws from near-uniform shares: ~0.17 measured; Dir(0.05): ~0.8
    assert label_distance(skewed, y).mean() > 0.6
    assert label_distance(even, y).mean() < 0.3


# -- shards --------------------------------------------------------------------------------

@pytest.mark.parametrize(("devices", "per_device"), [(20, 2), (8, 5)])
def test_shards_gives_each_device_exactly_its_label_sorted_shards(devices: int,
                                                                  per_device: int) -> None:
    y = labels(40)  # 400 samples
    n_shards = devices * per_device
    size = 400 // n_shards  # 10 or 10: every shard has the same size here
    assert size * n_shards == 400
    part = make_partition("shards", {"shards_per_device": per_device}, y, devices,
                          np.random.default_rng(3))
    assert_disjoint_and_covering(part, 400)
    # rank of each sample in the label-sorted order (ties by index); shard j = ranks
    # j*size .. (j+1)*size - 1
    rank = np.empty(400, np.int64)
    rank[np.lexsort((np.arange(400), y))] = np.arange(400)
    used = []
    for d in range(devices):
        shard_ids, counts = np.unique(rank[part.of(d)] // size, return_counts=True)
        assert len(shard_ids) == per_device, d
        assert counts.tolist() == [size] * per_device, d
        used.extend(shard_ids.tolist())
        # a shard lies inside one class (40 per class, shards of 10): few labels per device
        assert len(np.unique(y[part.of(d)])) <= per_device
    assert sorted(used) == list(range(n_shards))


def test_shards_need_enough_samples() -> None:
    with pytest.raises(UserError, match="shards"):
        make_partition("shards", {"shards_per_device": 3}, labels(1), 4,
                       np.random.default_rng(0))


# -- natural -------------------------------------------------------------------------------

def test_natural_follows_the_groups() -> None:
    y = labels(3)
    order = np.random.default_rng(5).permutation(30)
    groups = (np.sort(order[:4]), np.sort(order[4:19]), np.sort(order[19:]))
    part = make_partition("natural", {}, y, 7, np.random.default_rng(0), groups)
    assert part.n_devices == 7
    for d in range(7):
        assert np.array_equal(part.of(d), groups[d % 3]), d
    first = make_partition("natural", {}, y, 3, np.random.default_rng(0), groups)
    assert_disjoint_and_covering(first, 30)


def test_natural_needs_groups() -> None:
    with pytest.raises(UserError, match="natural"):
        make_partition("natural", {}, labels(3), 3, np.random.default_rng(0), None)


# -- sizes alone (timing-only runs) --------------------------------------------------------

@pytest.mark.parametrize(("name", "options", "devices"), [
    ("iid", {}, 7), ("iid", {}, 500), ("iid", {"samples_per_device": 30}, 40),
    ("dirichlet", {"alpha": 0.5}, 9), ("shards", {"shards_per_device": 2}, 10),
])
def test_partition_sizes_are_the_partitions_sizes(name: str, options: dict,
                                                  devices: int) -> None:
    y = labels(50)
    sizes = partition_sizes(name, options, y, devices, np.random.default_rng(3))
    part = make_partition(name, options, y, devices, np.random.default_rng(3))
    assert sizes.dtype == np.int64 and sizes.tolist() == part.sizes().tolist()


def test_iid_sizes_by_hand() -> None:
    # 500 samples over 7 devices: 3 devices of 72 first, then 4 of 71 (np.array_split)
    assert partition_sizes("iid", {}, labels(50), 7, np.random.default_rng(0)).tolist() \
        == [72] * 3 + [71] * 4


def test_partition_sizes_keep_the_partitions_errors() -> None:
    with pytest.raises(UserError, match="samples_per_device"):
        partition_sizes("iid", {}, labels(1), 11, np.random.default_rng(0))
    with pytest.raises(UserError, match="more than the 100 training samples"):
        partition_sizes("iid", {"samples_per_device": 101}, labels(10), 3,
                        np.random.default_rng(0))
