"""Review (issue 13): DSE fronts that do not depend on what happens to be in the cache.

The Evaluator trains with dse.seed (not the run's), the cached front's name includes a
digest of the cost settings (costs section and calibration file content), and read_front
checks shapes, rates and finiteness.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from fleetsim.build import load_scenario
from fleetsim.config import Scenario
from fleetsim.dse import read_front
from fleetsim.errors import UserError
from tests.conftest import TINY

DSE = ["model.options.hidden=[16,16]", "dse.population=6", "dse.generations=2",
       "dse.budget_steps=3", "dse.warmup_steps=5", "dse.grid=[0.0,0.25,0.5,0.75]",
       "dse.workers=1", "dse.repeats=2"]


def scenario(cache: Path, *extra: str) -> Scenario:
    return load_scenario(None, [*DSE, f"dse.cache_dir={cache}", *extra], text=TINY)


def run_dse(sc: Scenario, progress: bool = False):  # type: ignore[no-untyped-def]
    from fleetsim.build import run_dse as search

    return search(sc, progress=progress)


def front_for(sc: Scenario, progress: bool = False) -> Path:
    from fleetsim.build import front_for as cached

    return cached(sc, progress=progress)


def cost_model(sc: Scenario, model: object):  # type: ignore[no-untyped-def]
    from fleetsim.build import cost_model as make

    return make(sc, model)


def test_front_does_not_depend_on_the_run_seed(tmp_path: Path) -> None:
    # dse.seed is documented as "independent of run seeds, so every run of a comparison
    # uses the same front", and the cache key leaves the run seed out; but the candidates
    # were trained with the run seed's initial model, batches and channels. So a run with
    # seed 1 got another front than seed 0 on a fresh cache, and the one computed first
    # on a shared cache.
    a, _ = run_dse(scenario(tmp_path / "a", "seed=0"), progress=False)
    b, _ = run_dse(scenario(tmp_path / "b", "seed=1"), progress=False)
    np.testing.assert_array_equal(a.proxy, b.proxy)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert a.meta["warm_loss"] == b.meta["warm_loss"]
    assert a.meta["reference_losses"] == b.meta["reference_losses"]


def test_cached_front_follows_the_cost_settings(tmp_path: Path) -> None:
    # costs.channel_block changes every vector's cost, hence which vectors are
    # non-dominated; the cached front file was named by the evaluation digest only, so a
    # scenario with channel_block 8 got the front (and MACs) found with exact MACs.
    from fleetsim.nn import build_model

    exact = scenario(tmp_path / "c")
    blocked = scenario(tmp_path / "c", "costs.channel_block=8")
    p1 = front_for(exact, progress=False)
    p8 = front_for(blocked, progress=False)
    front = read_front(p8)
    model = build_model("mlp", (1, 8, 8), 10, {"hidden": [16, 16]})
    costs = cost_model(blocked, model)
    want = [costs.step_macs(tuple(v), blocked.training.batch_size) for v in front.vectors]
    np.testing.assert_allclose(front.macs, want)
    assert p1 != p8


def _write_front(path: Path, vectors: np.ndarray, macs: np.ndarray, proxy: np.ndarray,
                 groups: list[list[object]], spread: np.ndarray | None = None,
                 version: int | None = 2) -> None:
    with h5py.File(path, "w") as f:
        g = f.create_group("front")
        g.create_dataset("vectors", data=vectors)
        g.create_dataset("macs", data=macs)
        g.create_dataset("proxy", data=proxy)
        g.create_dataset("spread", data=np.zeros_like(proxy) if spread is None else spread)
        f.attrs["format"] = "fleetsim-front"
        if version is not None:
            f.attrs["version"] = version
        f.attrs["groups"] = json.dumps(groups)
        f.attrs["meta"] = json.dumps({"warm_loss": 2.0})


GROUPS = [["h0", 16], ["h1", 16]]


@pytest.mark.parametrize("vectors, macs, proxy, problem", [
    (np.zeros((0, 2)), np.zeros(0), np.zeros(0), "no vectors"),
    (np.zeros(2), np.ones(1), np.ones(1), "shape"),
    (np.zeros((2, 3)), np.ones(2), np.ones(2), "shape"),
    (np.zeros((2, 2)), np.ones(3), np.ones(2), "macs"),
    (np.zeros((2, 2)), np.ones(2), np.array([1.0, np.nan]), "proxy"),
    (np.zeros((2, 2)), np.ones(2), np.ones(2), "spread"),
    (np.array([[0.0, 0.5], [1.0, 0.0]]), np.ones(2), np.ones(2), "rates"),
])
def test_front_file_with_wrong_shapes_is_a_user_error(tmp_path: Path, vectors: np.ndarray,
                                                      macs: np.ndarray, proxy: np.ndarray,
                                                      problem: str) -> None:
    path = tmp_path / "front.h5"
    # the "spread" case: one spread is negative (the others' spreads are zeros)
    spread = np.array([0.1, -0.1]) if problem == "spread" else None
    _write_front(path, vectors, macs, proxy, GROUPS, spread)
    with pytest.raises(UserError, match=problem) as e:
        read_front(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("version", [None, 1, 3])
def test_front_of_another_proxy_version_is_a_user_error(tmp_path: Path,
                                                        version: int | None) -> None:
    # a version-1 file (no attribute) holds validation losses, not excess losses: read as
    # excess losses they would all count as far worse than the full network
    path = tmp_path / "old.h5"
    _write_front(path, np.zeros((1, 2)), np.ones(1), np.ones(1), GROUPS, version=version)
    with pytest.raises(UserError, match="proxy version") as e:
        read_front(path)
    assert str(path) in str(e.value) and "fleetsim dse" in str(e.value)
    _write_front(path, np.zeros((1, 2)), np.ones(1), np.ones(1), GROUPS, version=2)
    assert read_front(path).spread.tolist() == [0.0]
