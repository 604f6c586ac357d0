"""A validation split held out from the training split (``data.validation_fraction``,
``eval.split: validation``): disjoint from every device's shard and from the test set,
deterministic from ``split_seed``, and no change at all when it is 0."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fleetsim.build import load_scenario, trainer_settings
from fleetsim.cli import main
from fleetsim.config import DataConfig, PartitionConfig
from fleetsim.data import load_dataset
from fleetsim.errors import UserError
from fleetsim.training import Trainer, build_data

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "scenarios" / "tiny.yaml"


def rows(x: torch.Tensor) -> set[bytes]:
    """The samples as bytes: sets of these compare samples, not indices."""
    return {r.tobytes() for r in x.numpy().reshape(len(x), -1)}


def digits(fraction: float, partition: str = "dirichlet", split_seed: int = 0) -> DataConfig:
    return DataConfig(dataset="digits", test_fraction=0.2, split_seed=split_seed,
                      validation_fraction=fraction, partition=PartitionConfig(name=partition))


def test_validation_is_disjoint_from_every_shard_and_from_test() -> None:
    full = load_dataset("digits", {}, 0.2, 0)
    ds, part = build_data(digits(0.25), 10, seed=3)
    assert ds.x_val is not None and ds.y_val is not None
    val, test = rows(ds.x_val), rows(ds.x_test)
    assert len(val) == len(ds.x_val)  # (the digits have no duplicate images)
    for d in range(10):
        shard = rows(ds.x_train[part.of(d)])
        assert shard and not shard & val, d
    assert not val & test
    # nothing lost or duplicated: train + validation is the training split, test unchanged
    assert rows(ds.x_train) | val == rows(full.x_train) and not rows(ds.x_train) & val
    assert len(ds.x_train) + len(ds.x_val) == len(full.x_train)
    assert torch.equal(ds.x_test, full.x_test) and torch.equal(ds.y_test, full.y_test)
    # per class: round(n_c * 0.25) of the class's training samples, labels kept with them
    n_c = np.bincount(full.y_train.numpy())
    assert np.bincount(ds.y_val.numpy(), minlength=10).tolist() == \
        [round(n * 0.25) for n in n_c]
    label = {r.tobytes(): int(y) for r, y in zip(full.x_train.numpy().reshape(
        len(full.x_train), -1), full.y_train)}
    assert all(label[r.tobytes()] == int(y) for r, y in zip(
        ds.x_val.numpy().reshape(len(ds.x_val), -1), ds.y_val))


def test_validation_depends_on_split_seed_only() -> None:
    a, _ = build_data(digits(0.2), 10, seed=0)
    b, _ = build_data(digits(0.2), 10, seed=7)  # another run seed: the same samples
    c, _ = build_data(digits(0.2, split_seed=1), 10, seed=0)
    assert a.x_val is not None and b.x_val is not None and c.x_val is not None
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.x_train, b.x_train)
    assert rows(a.x_val) != rows(c.x_val)


def test_no_validation_leaves_the_training_split_and_partition_unchanged() -> None:
    full = load_dataset("digits", {}, 0.2, 0)
    ds, part = build_data(digits(0.0), 10, seed=3)
    assert ds.x_val is None and ds.y_val is None
    assert torch.equal(ds.x_train, full.x_train) and torch.equal(ds.y_train, full.y_train)
    # the partition of the untouched split: the same one the partitioner gives directly
    from fleetsim.data import make_partition
    from fleetsim.rng import stream

    ref = make_partition("dirichlet", {}, full.y_train.numpy(), 10, stream(3, "partition"))
    assert all(np.array_equal(part.of(d), ref.of(d)) for d in range(10))


def test_natural_groups_are_renumbered_and_keep_a_sample_each() -> None:
    opts = {"users": 12, "mean_samples": 8.0, "dim": 5, "classes": 3}
    full = load_dataset("synthetic", opts, 0.2, 0)
    assert full.groups is not None
    cfg = DataConfig(dataset="synthetic", options=opts, validation_fraction=0.5,
                     partition=PartitionConfig(name="natural"))
    ds, part = build_data(cfg, 12, seed=0)
    assert ds.groups is not None and ds.x_val is not None
    val = rows(ds.x_val)
    for k, (g_full, g) in enumerate(zip(full.groups, ds.groups)):
        before, after = rows(full.x_train[g_full]), rows(ds.x_train[g])
        # a writer's remaining samples are its own, minus the validation ones; one stays
        assert after == before - val and len(g) >= 1, k
        assert len(g) == len(g_full) - min(round(len(g_full) * 0.5), len(g_full) - 1) \
            if len(g_full) > 1 else len(g) == 1
        assert rows(ds.x_train[part.of(k)]) == after


def test_a_share_that_rounds_to_no_sample_is_an_error() -> None:
    with pytest.raises(UserError, match=r"data\.validation_fraction"):
        build_data(digits(0.001), 10, seed=0)


def test_evaluate_measures_the_validation_split() -> None:
    sc = load_scenario(TINY, ["data.validation_fraction=0.25", "eval.split=validation"])
    t = Trainer(trainer_settings(sc))
    state = t.initial_state()
    acc, loss = t.evaluate(state)
    ds = t.data
    assert ds.x_val is not None and ds.y_val is not None
    # by hand, with plain PyTorch: the model on the validation samples, not the test ones
    with torch.no_grad():
        t.load(state)
        t.model.eval()
        out = t.model(ds.x_val)
    assert acc == int((out.argmax(1) == ds.y_val).sum()) / len(ds.y_val)
    assert loss == pytest.approx(float(F.cross_entropy(out, ds.y_val)), rel=1e-5)
    test = Trainer(trainer_settings(load_scenario(TINY, ["data.validation_fraction=0.25"])))
    assert test.evaluate(state) != (acc, loss)  # the same model, measured on the test set


def test_split_is_recorded_and_validation_needs_a_fraction(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for split, extra in (("validation", ["--set", "data.validation_fraction=0.2"]),
                         ("test", [])):
        out = tmp_path / split
        assert main(["run", str(TINY), "--out", str(out), "--quiet", "--set",
                     "training.rounds=1", "--set", f"eval.split={split}", *extra]) == 0
        with h5py.File(out / "run.h5") as f:
            assert f.attrs["eval_split"] == split
    assert main(["run", str(TINY), "--out", str(tmp_path / "bad"), "--quiet", "--set",
                 "eval.split=validation"]) == 2
    err = capsys.readouterr().err
    assert "eval.split" in err and "data.validation_fraction" in err
    assert Counter(p.name for p in tmp_path.iterdir()) == Counter(["validation", "test"])
