"""Datasets read from files the user already has (nothing is downloaded).

- ``femnist``: LEAF's FEMNIST, either LEAF's JSON layout (``<path>/train/*.json`` and
  ``<path>/test/*.json``, each ``{"users", "num_samples", "user_data": {user: {"x", "y"}}}``)
  or TensorFlow Federated's HDF5 layout (``examples/<writer>/pixels`` and ``.../label``).
  Writers are kept as the natural partition (``data.partition.name: natural``).
- ``cifar10`` / ``cifar100``: the "python version" pickle batches
  (``data_batch_1..5`` + ``test_batch``, or ``train`` + ``test`` for CIFAR-100).
  Unpickling can run code: only point this at files you trust.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from pydantic import Field

from fleetsim.data.datasets import DATASETS, Dataset, DatasetLoader, DatasetOptions
from fleetsim.errors import UserError


def _missing(key: str, path: Path, what: str) -> UserError:
    return UserError(f"data.options.{key}: {path} {what}. Allowed: the path of your own copy "
                     "(fleetsim downloads nothing); see docs/datasets.md.")


def _check_labels(y: np.ndarray, classes: int, key: str, source: str) -> None:
    """Labels must be class indices 0..classes-1 (the model has that many outputs)."""
    bad = y[(y < 0) | (y >= classes)]
    if bad.size:
        raise UserError(f"data.options.{key}: {source} holds label {int(bad[0])} ({bad.size} "
                        f"samples in all), outside the dataset's classes. Allowed: labels "
                        f"0 to {classes - 1}.")


def _split_groups(groups: list[np.ndarray], test_fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """Per-writer split: each writer keeps ``1 - test_fraction`` of its samples for training.

    Returns train indices, test indices (into the pooled arrays) and, per writer, the
    positions of its training samples within the training set.
    """
    rng = np.random.default_rng(seed)
    train, test, owner = [], [], []
    for k, g in enumerate(groups):
        g = rng.permutation(g)
        # every writer keeps at least one training sample: a writer (device) with none
        # would train on nothing
        n_test = min(round(len(g) * test_fraction), len(g) - 1) if len(g) > 1 else 0
        test.append(g[:n_test])
        train.append(g[n_test:])
        owner.append(np.full(len(g) - n_test, k))
    tr = np.concatenate(train)
    who = np.concatenate(owner)
    out_groups = tuple(np.flatnonzero(who == k) for k in range(len(groups)))
    return tr, np.concatenate(test), out_groups


@DATASETS.register("femnist")
class Femnist(DatasetLoader):
    """LEAF FEMNIST from your files: 28x28 handwritten characters (62 classes) by writer.

    With LEAF's JSON layout the ``test`` folder is the test set; with the HDF5 layout (one
    group per writer) each writer's samples are split by ``data.test_fraction``.
    """

    class Options(DatasetOptions):
        path: str = Field(description="folder with train/ and test/ LEAF JSON files, or an "
                          "HDF5 file with examples/<writer>/{pixels,label}")
        max_writers: int | None = Field(None, ge=1, description="use only the first N writers")

    def load(self, test_fraction: float, split_seed: int) -> Dataset:
        o = self.options
        assert isinstance(o, Femnist.Options)
        p = Path(o.path)
        if p.is_file():
            return self._hdf5(p, test_fraction, split_seed)
        if not (p / "train").is_dir():
            raise _missing("path", p, "is neither an HDF5 file nor a folder with train/")
        xs, ys, groups = self._json_dir(p / "train")
        if (p / "test").is_dir():
            xt, yt, _ = self._json_dir(p / "test")
        else:
            tr, te, groups_t = _split_groups(groups, test_fraction, split_seed)
            xt, yt = xs[te], ys[te]
            xs, ys, groups = xs[tr], ys[tr], list(groups_t)
        return self._dataset(xs, ys, xt, yt, tuple(groups))

    def _json_dir(self, d: Path) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        files = sorted(d.glob("*.json"))
        if not files:
            raise _missing("path", d, "holds no .json files")
        xs, ys, groups, n = [], [], [], 0
        limit = self.options.max_writers  # type: ignore[attr-defined]
        for f in files:
            try:
                doc: dict[str, Any] = json.loads(f.read_text())
                users = doc["users"]
                data = doc["user_data"]
            except (ValueError, KeyError) as exc:
                raise UserError(f"data.options.path: {f} is not a LEAF JSON file ({exc}). "
                                "Allowed: files with 'users' and 'user_data'.") from None
            for u in users:
                if limit is not None and len(groups) >= limit:
                    break
                x = np.asarray(data[u]["x"], np.float32).reshape(-1, 28, 28)
                y = np.asarray(data[u]["y"], np.int64)
                xs.append(x)
                ys.append(y)
                groups.append(np.arange(n, n + len(y)))
                n += len(y)
        return np.concatenate(xs), np.concatenate(ys), groups

    def _hdf5(self, p: Path, test_fraction: float, seed: int) -> Dataset:
        limit = self.options.max_writers  # type: ignore[attr-defined]
        try:
            with h5py.File(p, "r") as f:
                writers = sorted(f["examples"])[:limit]
                xs = [f[f"examples/{w}/pixels"][:].astype(np.float32) for w in writers]
                ys = [f[f"examples/{w}/label"][:].astype(np.int64) for w in writers]
        except (OSError, KeyError) as exc:
            raise UserError(f"data.options.path: {p} is not a FEMNIST HDF5 file ({exc}). "
                            "Allowed: an HDF5 file with examples/<writer>/pixels and label."
                            ) from None
        sizes = np.cumsum([0] + [len(y) for y in ys])
        groups = [np.arange(sizes[k], sizes[k + 1]) for k in range(len(ys))]
        x, y = np.concatenate(xs), np.concatenate(ys)
        tr, te, g = _split_groups(groups, test_fraction, seed)
        return self._dataset(x[tr], y[tr], x[te], y[te], g)

    def _dataset(self, x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray,
                 groups: tuple[np.ndarray, ...]) -> Dataset:
        for labels in (y, yt):
            _check_labels(labels, 62, "path", self.options.path)  # type: ignore[attr-defined]
        # LEAF stores ink as 0 and paper as 1 (TFF likewise); centre and scale for training
        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(((a - 0.5) / 0.5).astype(np.float32)[:, None])

        return Dataset("femnist", t(x), torch.from_numpy(y), t(xt), torch.from_numpy(yt),
                       (1, 28, 28), 62, groups)


def _unpickle(f: Path) -> dict[bytes, Any]:
    try:
        with f.open("rb") as fh:
            return pickle.load(fh, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise UserError(f"data.options.root: {f} cannot be read as a CIFAR pickle batch "
                        f"({exc}). Allowed: the 'python version' files from the CIFAR "
                        "site.") from None


class _Cifar(DatasetLoader):
    classes: int
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes

    class Options(DatasetOptions):
        root: str = Field(description="folder with the python pickle batches "
                          "(cifar-10-batches-py or cifar-100-python)")

    def load(self, test_fraction: float, split_seed: int) -> Dataset:
        root = Path(self.options.root)  # type: ignore[attr-defined]
        for name in (*self.train_files, self.test_file):
            if not (root / name).is_file():
                raise _missing("root", root / name, "does not exist")

        def read(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
            batches = [_unpickle(root / n) for n in names]
            x = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
            y = np.concatenate([np.asarray(b[self.label_key]) for b in batches])
            return x, y.astype(np.int64)

        x, y = read(self.train_files)
        xt, yt = read((self.test_file,))
        for labels in (y, yt):
            _check_labels(labels, self.classes, "root", str(root))
        mean = np.array([0.4914, 0.4822, 0.4465], np.float32)[None, :, None, None]
        std = np.array([0.247, 0.243, 0.261], np.float32)[None, :, None, None]

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy((a.astype(np.float32) / 255.0 - mean) / std)

        return Dataset(type(self).__name__.lower(), t(x), torch.from_numpy(y), t(xt),
                       torch.from_numpy(yt), (3, 32, 32), self.classes)


@DATASETS.register("cifar10")
class Cifar10(_Cifar):
    """CIFAR-10 from your copy of the python pickle batches (50,000 train, 10,000 test)."""

    classes = 10
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_file = "test_batch"
    label_key = b"labels"


@DATASETS.register("cifar100")
class Cifar100(_Cifar):
    """CIFAR-100 (fine labels) from your copy of the python pickle files."""

    classes = 100
    train_files = ("train",)
    test_file = "test"
    label_key = b"fine_labels"
