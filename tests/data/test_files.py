"""Loaders of user files, on small files of the real formats written here."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fleetsim.data import load_dataset, make_partition
from fleetsim.errors import UserError


def leaf_json(path: Path, users: dict[str, int], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    doc = {"users": list(users), "num_samples": list(users.values()),
           "user_data": {u: {"x": rng.random((n, 784)).round(3).tolist(),
                             "y": rng.integers(0, 62, n).tolist()} for u, n in users.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return doc


def femnist_pixels(x: np.ndarray) -> torch.Tensor:
    """What the loader promises for written ink values x (n, 784) or (n, 28, 28): row-major
    28 x 28 images, one channel, LEAF's 0..1 ink centred and scaled to -1..1."""
    img = np.asarray(x, np.float64).reshape(len(x), 1, 28, 28)
    return torch.from_numpy(((img - 0.5) / 0.5).astype(np.float32))


def test_femnist_leaf_json(tmp_path: Path) -> None:
    leaf_json(tmp_path / "train" / "a.json", {"w1": 5, "w2": 3}, 0)
    leaf_json(tmp_path / "train" / "b.json", {"w3": 4}, 1)
    leaf_json(tmp_path / "test" / "a.json", {"w1": 2, "w2": 2}, 2)
    ds = load_dataset("femnist", {"path": str(tmp_path)}, 0.2, 0)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (4, 1, 28, 28)
    assert ds.num_classes == 62
    assert [len(g) for g in ds.groups] == [5, 3, 4]
    part = make_partition("natural", {}, ds.y_train.numpy(), 3, np.random.default_rng(0),
                          ds.groups)
    assert part.sizes().tolist() == [5, 3, 4]


def test_femnist_leaf_json_pixels_and_labels_are_what_was_written(tmp_path: Path) -> None:
    a = leaf_json(tmp_path / "train" / "a.json", {"w1": 5, "w2": 3}, 0)
    b = leaf_json(tmp_path / "train" / "b.json", {"w3": 4}, 1)
    t = leaf_json(tmp_path / "test" / "a.json", {"w1": 2, "w2": 2}, 2)
    ds = load_dataset("femnist", {"path": str(tmp_path)}, 0.2, 0)
    writers = [a["user_data"]["w1"], a["user_data"]["w2"], b["user_data"]["w3"]]
    assert len(ds.groups) == len(writers) == 3
    for g, w in zip(ds.groups, writers):  # files in name order, users in file order
        gi = torch.from_numpy(np.asarray(g))
        torch.testing.assert_close(ds.x_train[gi], femnist_pixels(w["x"]), atol=1e-6,
                                   rtol=0)
        assert ds.y_train[gi].tolist() == w["y"]
    test_x = np.concatenate([t["user_data"][u]["x"] for u in ("w1", "w2")])
    test_y = [y for u in ("w1", "w2") for y in t["user_data"][u]["y"]]
    torch.testing.assert_close(ds.x_test, femnist_pixels(test_x), atol=1e-6, rtol=0)
    assert ds.y_test.tolist() == test_y
    # one written pixel, by hand: row 3, column 20 of writer w3's second sample
    assert float(ds.x_train[ds.groups[2][1], 0, 3, 20]) == pytest.approx(
        (b["user_data"]["w3"]["x"][1][3 * 28 + 20] - 0.5) / 0.5, abs=1e-6)


def test_femnist_hdf5_per_writer_split(tmp_path: Path) -> None:
    p = tmp_path / "fed_emnist.h5"
    with h5py.File(p, "w") as f:
        for w, n in (("f0001", 10), ("f0002", 6)):
            f[f"examples/{w}/pixels"] = np.random.rand(n, 28, 28).astype(np.float32)
            f[f"examples/{w}/label"] = np.arange(n) % 62
    ds = load_dataset("femnist", {"path": str(p)}, 0.5, 0)
    assert len(ds.y_train) + len(ds.y_test) == 16
    assert [len(g) for g in ds.groups] == [5, 3]


def test_femnist_hdf5_pixels_and_labels_are_what_was_written(tmp_path: Path) -> None:
    """Every loaded sample is one written sample of its writer, with its label; the train
    and test sets together hold each written sample exactly once."""
    rng = np.random.default_rng(4)
    written = {w: (rng.random((n, 28, 28)).astype(np.float32),
                   rng.integers(0, 62, n)) for w, n in (("f0002", 9), ("f0001", 5))}
    p = tmp_path / "fed_emnist.h5"
    with h5py.File(p, "w") as f:
        for w, (px, lab) in written.items():
            f[f"examples/{w}/pixels"] = px
            f[f"examples/{w}/label"] = lab
    ds = load_dataset("femnist", {"path": str(p)}, 0.25, 0)
    writers = sorted(written)  # groups follow the writers' sorted names
    expected = {w: femnist_pixels(written[w][0]) for w in writers}

    def find(x: torch.Tensor) -> tuple[str, int]:
        hits = [(w, i) for w in writers for i in range(len(expected[w]))
                if torch.allclose(expected[w][i], x, atol=1e-6, rtol=0)]
        assert len(hits) == 1, "every loaded image is exactly one written image"
        return hits[0]

    seen = []
    assert len(ds.groups) == 2
    for k, g in enumerate(ds.groups):
        assert len(g) == len(written[writers[k]][1]) - round(len(written[writers[k]][1]) * 0.25)
        for i in g:
            w, j = find(ds.x_train[i])
            assert w == writers[k]  # in its writer's group
            assert int(ds.y_train[i]) == int(written[w][1][j])
            seen.append((w, j))
    for i in range(len(ds.y_test)):
        w, j = find(ds.x_test[i])
        assert int(ds.y_test[i]) == int(written[w][1][j])
        seen.append((w, j))
    assert sorted(seen) == sorted((w, j) for w in writers for j in range(len(written[w][1])))


# the usual CIFAR channel statistics (R, G, B), as the loader documents them
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)


def cifar_pixels(rows: np.ndarray) -> torch.Tensor:
    """The CIFAR "python version" layout by hand: each 3072-byte row is the 1024 red, then
    1024 green, then 1024 blue values of a 32 x 32 image, each plane row-major; loaded as
    (n, 3, 32, 32) in R, G, B order, per channel (v / 255 - mean) / std."""
    n = len(rows)
    out = np.empty((n, 3, 32, 32), np.float64)
    for c in range(3):
        for r in range(32):
            for k in range(32):
                out[:, c, r, k] = (rows[:, c * 1024 + r * 32 + k] / 255.0 - CIFAR_MEAN[c]) \
                    / CIFAR_STD[c]
    return torch.from_numpy(out.astype(np.float32))


def write_cifar(root: Path, files: list[tuple[str, int]], label_keys: dict[bytes, int],
                seed: int) -> dict[str, dict[bytes, object]]:
    rng = np.random.default_rng(seed)
    docs = {}
    for name, n in files:
        doc: dict[bytes, object] = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        for key, classes in label_keys.items():
            doc[key] = rng.integers(0, classes, n).tolist()
        with (root / name).open("wb") as f:
            pickle.dump(doc, f)
        docs[name] = doc
    return docs


def test_cifar10_pixels_channels_and_labels_are_what_was_written(tmp_path: Path) -> None:
    files = [*[(f"data_batch_{i}", 2 + i % 2) for i in range(1, 6)], ("test_batch", 3)]
    docs = write_cifar(tmp_path, files, {b"labels": 10}, 7)
    ds = load_dataset("cifar10", {"root": str(tmp_path)}, 0.2, 0)
    train = [f"data_batch_{i}" for i in range(1, 6)]  # in this order
    rows = np.concatenate([docs[n][b"data"] for n in train])
    torch.testing.assert_close(ds.x_train, cifar_pixels(rows), atol=1e-5, rtol=1e-6)
    assert ds.y_train.tolist() == [y for n in train for y in docs[n][b"labels"]]
    torch.testing.assert_close(ds.x_test, cifar_pixels(docs["test_batch"][b"data"]),
                               atol=1e-5, rtol=1e-6)
    assert ds.y_test.tolist() == docs["test_batch"][b"labels"]
    # one pixel by hand: image 0, green plane, row 1, column 2 is byte 1024 + 32 + 2
    v = int(docs["data_batch_1"][b"data"][0, 1024 + 32 + 2])
    assert float(ds.x_train[0, 1, 1, 2]) == pytest.approx((v / 255 - 0.4822) / 0.243, abs=1e-5)


def test_cifar100_uses_the_fine_labels(tmp_path: Path) -> None:
    docs = write_cifar(tmp_path, [("train", 5), ("test", 4)],
                       {b"fine_labels": 100, b"coarse_labels": 20}, 8)
    ds = load_dataset("cifar100", {"root": str(tmp_path)}, 0.2, 0)
    assert ds.num_classes == 100
    assert ds.y_train.tolist() == docs["train"][b"fine_labels"]
    assert ds.y_test.tolist() == docs["test"][b"fine_labels"]
    assert docs["train"][b"fine_labels"] != docs["train"][b"coarse_labels"]
    torch.testing.assert_close(ds.x_train, cifar_pixels(docs["train"][b"data"]), atol=1e-5,
                               rtol=1e-6)


def test_cifar10_pickle_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, n in [*[(f"data_batch_{i}", 4) for i in range(1, 6)], ("test_batch", 3)]:
        with (tmp_path / name).open("wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, n).tolist()}, f)
    ds = load_dataset("cifar10", {"root": str(tmp_path)}, 0.2, 0)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10


def test_missing_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data_batch_1"):
        load_dataset("cifar10", {"root": str(tmp_path)}, 0.2, 0)
    with pytest.raises(UserError, match="train/"):
        load_dataset("femnist", {"path": str(tmp_path)}, 0.2, 0)
    (tmp_path / "x.h5").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a FEMNIST HDF5 file"):
        load_dataset("femnist", {"path": str(tmp_path / "x.h5")}, 0.2, 0)
