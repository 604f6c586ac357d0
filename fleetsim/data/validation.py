"""A validation set held out from the training split, before it is split over devices.

Hyper-parameters (a method's learning rate, say) must not be tuned on the test set that
the study then reports. ``data.validation_fraction`` takes a share of the *training*
split away before the partitioner sees it, so no device trains on a validation sample,
and the test split is untouched; ``eval.split: validation`` then evaluates the global
model on it. The draw depends on ``data.split_seed`` alone (not on the run seed), so
every run seed and every method of a sweep is tuned on the same samples.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fleetsim.data.datasets import Dataset
from fleetsim.errors import UserError
from fleetsim.rng import stream


def validation_indices(y: np.ndarray, fraction: float, split_seed: int,
                       groups: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
    """Sorted indices (into the training split) of the validation samples.

    Without ``groups``: per class, ``round(n_c * fraction)`` samples, so the class mix is
    kept (as the train/test split does). With ``groups`` (a natural partition: writers,
    LEAF users): per group, ``round(n_k * fraction)`` of its samples, at most all but one
    -- a device left without training data would train on nothing.
    """
    rng = stream(split_seed, "validation")
    parts = []
    if groups is None:
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            parts.append(idx[:round(len(idx) * fraction)])
    else:
        for g in groups:
            n_val = min(round(len(g) * fraction), len(g) - 1) if len(g) > 1 else 0
            parts.append(rng.permutation(g)[:n_val])
    return np.sort(np.concatenate(parts)).astype(np.int64) if parts else \
        np.zeros(0, np.int64)


def hold_out_validation(ds: Dataset, fraction: float, split_seed: int) -> Dataset:
    """``ds`` with a validation set taken out of its training split (``fraction`` 0: ``ds``
    itself, unchanged, so scenarios without a validation set train on exactly what they
    did before).

    The remaining training samples keep their order; natural groups are renumbered to
    index the smaller training arrays.
    """
    if fraction == 0:
        return ds
    y = ds.y_train.numpy()
    val = validation_indices(y, fraction, split_seed, ds.groups)
    if val.size == 0:
        raise UserError(f"at 'data.validation_fraction': {fraction!r} of the "
                        f"{len(y)} training samples of '{ds.name}' rounds to no validation "
                        "sample in any class (or writer). Allowed: a larger share, or 0 "
                        "(no validation set; then eval.split must be test).")
    is_val = np.zeros(len(y), bool)
    is_val[val] = True
    train = np.flatnonzero(~is_val)
    groups = None
    if ds.groups is not None:
        pos = np.full(len(y), -1, np.int64)
        pos[train] = np.arange(len(train))
        groups = tuple(pos[g[~is_val[g]]] for g in ds.groups)
    return dataclasses.replace(
        ds, x_train=ds.x_train[train].contiguous(), y_train=ds.y_train[train].contiguous(),
        x_val=ds.x_train[val].contiguous(), y_val=ds.y_train[val].contiguous(),
        groups=groups)
