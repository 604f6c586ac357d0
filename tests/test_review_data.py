"""Review (issue 13): partitions never give a device zero samples; labels are checked."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from fleetsim.data import load_dataset, make_partition
from fleetsim.data.files import _split_groups
from fleetsim.data.partition import PARTITIONERS, Partition, Partitioner
from fleetsim.errors import UserError


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_natural_partition_skips_users_without_training_samples() -> None:
    # A user whose samples all went to the test split (synthetic with small users, or a
    # FEMNIST writer) has no training samples. The device that held it trained on nothing:
    # batch size 0, steps of no MACs that "completed" at once in timing-only runs, and a
    # division by zero when its batches were drawn for real training.
    y = np.zeros(6, np.int64)
    groups = (np.array([0, 1]), np.array([], np.int64), np.array([2, 3, 4, 5]))
    part = make_partition("natural", {}, y, 4, rng(), groups)
    assert part.sizes().min() >= 1
    # devices take the users that have samples, in order, round robin
    assert [part.of(d).tolist() for d in range(4)] == [[0, 1], [2, 3, 4, 5], [0, 1],
                                                       [2, 3, 4, 5]]


def test_natural_partition_with_no_training_samples_at_all_is_an_error() -> None:
    with pytest.raises(UserError, match="natural"):
        make_partition("natural", {}, np.zeros(0, np.int64), 2, rng(),
                       (np.array([], np.int64),))


def test_synthetic_small_users_natural_partition_has_no_empty_device() -> None:
    ds = load_dataset("synthetic", {"users": 200, "mean_samples": 5}, 0.5, 0)
    assert any(len(g) == 0 for g in ds.groups)  # the situation of the defect
    part = make_partition("natural", {}, ds.y_train.numpy(), 200, rng(), ds.groups)
    assert part.sizes().min() >= 1


def test_writer_split_keeps_a_training_sample_per_writer() -> None:
    # test_fraction 0.8 on a writer of 2 samples: round(1.6) = 2 went to test, 0 to train
    tr, te, groups = _split_groups([np.arange(2), np.arange(2, 7)], 0.8, 0)
    assert [len(g) for g in groups] == [1, 1]
    assert len(tr) + len(te) == 7


def test_plugin_partition_with_an_empty_device_is_a_user_error() -> None:
    @PARTITIONERS.register("review-empty")
    class Empty(Partitioner):
        def split(self, y, n_devices, rng, groups=None):  # type: ignore[no-untyped-def]
            return Partition.from_lists([np.arange(len(y))] + [np.zeros(0, np.int64)]
                                        * (n_devices - 1))

    try:
        with pytest.raises(UserError, match="review-empty") as e:
            make_partition("review-empty", {}, np.zeros(10, np.int64), 3, rng())
        assert "device 1" in str(e.value)
    finally:
        PARTITIONERS._items.pop("review-empty", None)  # type: ignore[attr-defined]


def test_dirichlet_min_samples_that_cannot_be_met_fails_at_once() -> None:
    # 5 devices x 30 samples > 100 samples: no draw can succeed; it used to try 1000
    # draws (minutes for a large fleet) before saying so
    y = np.arange(100) % 10
    with pytest.raises(UserError, match="min_samples") as e:
        make_partition("dirichlet", {"min_samples": 30}, y, 5, rng())
    assert "1000 draws" not in str(e.value)


def test_iid_samples_per_device_larger_than_the_dataset_is_a_user_error() -> None:
    with pytest.raises(UserError, match="samples_per_device"):
        make_partition("iid", {"samples_per_device": 50}, np.zeros(20, np.int64), 2, rng())


def test_femnist_labels_outside_the_62_classes_are_a_user_error(tmp_path: Path) -> None:
    p = tmp_path / "femnist.h5"
    with h5py.File(p, "w") as f:
        f["examples/w0/pixels"] = np.zeros((3, 28, 28), np.float32)
        f["examples/w0/label"] = np.array([1, 62, 3])  # 62 is not a class of 0..61
    with pytest.raises(UserError, match="label"):
        load_dataset("femnist", {"path": str(p)}, 0.2, 0)


def test_cifar_labels_outside_the_classes_are_a_user_error(tmp_path: Path) -> None:
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with (tmp_path / name).open("wb") as f:
            pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, f)
    with pytest.raises(UserError, match="label"):
        load_dataset("cifar10", {"root": str(tmp_path)}, 0.2, 0)
