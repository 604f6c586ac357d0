"""Design-space exploration: the front is non-dominated, deterministic and cached."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fleetsim.build import load_scenario, run_dse
from fleetsim.cli import main
from fleetsim.dse import Evaluator, non_dominated, read_front, write_front
from tests.conftest import TINY
from tests.test_dse_proxy import break_training

DSE = ["model.options.hidden=[16,16]", "dse.population=6", "dse.generations=2",
       "dse.budget_steps=3", "dse.warmup_steps=5", "dse.grid=[0.0,0.25,0.5,0.75]",
       "dse.repeats=2"]


def scenario(tmp_path: Path, *extra: str):  # type: ignore[no-untyped-def]
    return load_scenario(None, [*DSE, f"dse.cache_dir={tmp_path / 'cache'}", *extra],
                         text=TINY)


def test_non_dominated_by_hand() -> None:
    cost = np.array([1.0, 2.0, 2.0, 3.0, 0.5, 3.0])
    proxy = np.array([5.0, 4.0, 6.0, 1.0, 9.0, 1.0])
    idx = non_dominated(cost, proxy)
    assert sorted(idx.tolist()) == [0, 1, 3, 4]  # 2 dominated by 1; 5 duplicates 3


def test_front_is_non_dominated_and_deterministic(tmp_path: Path) -> None:
    front, ev = run_dse(scenario(tmp_path / "a", "dse.workers=1"), progress=False)
    assert len(ev["macs"]) >= 6
    for c, p in zip(front.macs, front.proxy):
        dominated = (ev["macs"] <= c) & (ev["proxy"] <= p) & ((ev["macs"] < c) | (ev["proxy"] < p))
        assert not dominated.any()
    # every evaluated point is on the front or dominated by a front point
    for c, p in zip(ev["macs"], ev["proxy"]):
        assert ((front.macs <= c) & (front.proxy <= p)).any()
    assert np.all(np.diff(front.proxy) >= 0)  # best convergence first
    again, _ = run_dse(scenario(tmp_path / "b", "dse.workers=2"), progress=False)
    np.testing.assert_array_equal(front.vectors, again.vectors)
    np.testing.assert_array_equal(front.proxy, again.proxy)


class _Counting:
    """Counts the candidates the search really trains (``Evaluator.proxy`` calls)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.vectors: list[tuple[float, ...]] = []
        real = Evaluator.proxy

        def proxy(ev: Evaluator, vector: tuple[float, ...]) -> float:
            self.vectors.append(tuple(vector))
            return real(ev, vector)

        monkeypatch.setattr(Evaluator, "proxy", proxy)


def test_cache_avoids_recomputation_and_file_round_trip(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    counted = _Counting(monkeypatch)
    sc = scenario(tmp_path, "dse.workers=1")
    front, ev = run_dse(sc, progress=False)
    first = len(counted.vectors)
    assert first == len(ev["macs"]) == len(set(counted.vectors))  # each candidate once
    cache_files = list((tmp_path / "cache").glob("dse-*.json"))
    assert len(cache_files) == 1
    # a second search finds every candidate in the cache file: it trains nothing
    front2, ev2 = run_dse(sc, progress=False)
    assert len(counted.vectors) == first
    np.testing.assert_array_equal(front.proxy, front2.proxy)
    np.testing.assert_array_equal(ev["proxy"], ev2["proxy"])
    write_front(tmp_path / "f.h5", front, ev)
    back = read_front(tmp_path / "f.h5")
    assert back.groups == front.groups
    np.testing.assert_array_equal(back.vectors, front.vectors)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert back.meta["warm_loss"] > 0
    np.testing.assert_array_equal(back.spread, front.spread)


def test_cached_values_come_from_the_file(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Values written into the cache file are what the next search uses (it reads the file,
    it does not recompute), and other settings do not share that file's values."""
    sc = scenario(tmp_path, "dse.workers=1")
    _, ev = run_dse(sc, progress=False)
    (path,) = (tmp_path / "cache").glob("dse-*.json")
    cached = json.loads(path.read_text())
    assert len(cached) == len(ev["macs"])
    fake = {k: {"excess": [50.0 + i, 52.0 + i], "diverged": False}
            for i, k in enumerate(sorted(cached))}
    path.write_text(json.dumps(fake))
    by_vector = {tuple(float(x) for x in k.split(",")): 51.0 + i
                 for i, k in enumerate(sorted(fake))}

    counted = _Counting(monkeypatch)
    _, ev2 = run_dse(sc, progress=False)
    from_file = 0
    for v, p in zip(ev2["vectors"], ev2["proxy"]):
        key = tuple(float(x) for x in v)
        if key in by_vector:
            assert p == by_vector[key], key
            assert key not in counted.vectors
            from_file += 1
        else:  # the fake values steered the search elsewhere: those are trained
            assert key in counted.vectors
    assert from_file >= 6  # at least the initial population (fixed by the seed)

    before = len(counted.vectors)
    other = scenario(tmp_path, "dse.workers=1", "dse.budget_steps=4")
    _, ev3 = run_dse(other, progress=False)
    assert len(counted.vectors) - before == len(ev3["macs"])  # nothing from the other file
    assert not set(ev3["proxy"].tolist()) & set(by_vector.values())
    assert len(list((tmp_path / "cache").glob("dse-*.json"))) == 2


def test_dse_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "s.yaml").write_text(TINY)
    sets = [x for s in [*DSE, "dse.workers=1", f"dse.cache_dir={tmp_path}/c"]
            for x in ("--set", s)]
    assert main(["dse", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "f.h5"), "--quiet",
                 *sets]) == 0
    out = capsys.readouterr().out
    assert "non-dominated vectors" in out
    assert (tmp_path / "f.h5").exists() and (tmp_path / "f.png").exists()


def test_missing_front_file_is_a_user_error(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "s.yaml").write_text(TINY)
    code = main(["run", str(tmp_path / "s.yaml"), "--set", "policy.name=distreal",
                 "--set", "policy.options.front=nofront.h5"])
    err = capsys.readouterr().err
    assert code == 2 and "nofront.h5" in err and "Traceback" not in err


@pytest.mark.parametrize("how", ["nan", "explode"])
def test_diverged_candidate_is_never_on_the_front(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  how: str) -> None:
    break_training(monkeypatch, how)
    front, ev = run_dse(scenario(tmp_path, "dse.workers=1"), progress=False)
    bad = ev["vectors"][:, 0] >= 0.5
    assert bad.any() and (~bad).any()
    np.testing.assert_array_equal(ev["feasible"], ~bad)
    assert np.isnan(ev["proxy"][bad]).all() and np.isnan(ev["spread"][bad]).all()
    assert np.isfinite(ev["proxy"][~bad]).all()
    assert len(front.macs) and (front.vectors[:, 0] < 0.5).all()
    assert front.meta["diverged"] == int(bad.sum())
    # the front is still every feasible point's non-dominated set
    for c, p in zip(ev["macs"][~bad], ev["proxy"][~bad]):
        assert ((front.macs <= c) & (front.proxy <= p)).any()
    # the file keeps them as infeasible points; the plot draws them apart from the front
    write_front(tmp_path / "f.h5", front, ev)
    back = read_front(tmp_path / "f.h5")
    assert (back.vectors[:, 0] < 0.5).all()
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_full_network_is_evaluated_with_proxy_zero(tmp_path: Path) -> None:
    # the d = 0 vector seeds the search (uniform vectors do) and is its own reference
    front, ev = run_dse(scenario(tmp_path, "dse.workers=1"), progress=False)
    full = ~ev["vectors"].any(axis=1)
    assert full.sum() == 1 and ev["proxy"][full][0] == 0.0 and ev["spread"][full][0] == 0.0
    assert ev["macs"][full][0] == ev["macs"].max()
    assert len(front.meta["reference_losses"]) == 2 and front.meta["streams"] == [1, 2]


@pytest.mark.parametrize("change", ["dse.repeats=3", "dse.budget_steps=4",
                                    "dse.warmup_steps=6", "dse.val_fraction=0.3",
                                    "dse.seed=1", "eval.batch_size=7",
                                    "model.options.rescale=false", "training.optimizer.lr=0.2"])
def test_digest_follows_what_changes_the_proxy(tmp_path: Path, change: str) -> None:
    from fleetsim.build import dse_job
    from fleetsim.dse import settings_digest

    base = settings_digest(dse_job(scenario(tmp_path)))
    assert settings_digest(dse_job(scenario(tmp_path, change))) != base
    for same in ("dse.workers=3", "dse.population=8", "dse.generations=5", "seed=4"):
        assert settings_digest(dse_job(scenario(tmp_path, same))) == base, same


def test_digest_follows_the_proxy_version(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import fleetsim.dse as dse
    from fleetsim.build import dse_job

    job = dse_job(scenario(tmp_path))
    base = dse.settings_digest(job)
    monkeypatch.setattr(dse, "PROXY_VERSION", dse.PROXY_VERSION + 1)
    assert dse.settings_digest(job) != base


def test_a_run_evaluating_on_the_validation_split_gets_the_same_front(tmp_path: Path) -> None:
    """A learning-rate sweep (eval.split: validation) needs the DSE too: its proxy uses the
    DSE's own validation samples, so the front equals that of the same data evaluated on
    the test split (and never reads data.validation_fraction's samples)."""
    held = ["data.validation_fraction=0.2", "dse.workers=1"]
    a, ev_a = run_dse(scenario(tmp_path / "a", *held, "eval.split=validation"),
                      progress=False)
    b, ev_b = run_dse(scenario(tmp_path / "b", *held), progress=False)
    np.testing.assert_array_equal(ev_a["proxy"], ev_b["proxy"])
    np.testing.assert_array_equal(a.vectors, b.vectors)


def test_a_run_records_the_front_it_read(tmp_path: Path) -> None:
    """run.h5 names the DSE front a DISTREAL-family run stood on: the one file the run's
    search left in the cache; a given policy.options.front as given; "" for FedAvg."""
    import h5py

    (tmp_path / "s.yaml").write_text(TINY)
    cache = tmp_path / "cache"
    sets = [x for s in [*DSE, "dse.workers=1", f"dse.cache_dir={cache}",
                        "training.rounds=1"] for x in ("--set", s)]

    def front_of(out: str, *extra: str) -> str:
        more = [x for s in extra for x in ("--set", s)]
        assert main(["run", str(tmp_path / "s.yaml"), "--quiet", "--out",
                     str(tmp_path / out), *sets, *more]) == 0
        with h5py.File(tmp_path / out / "run.h5") as f:
            return str(f.attrs["dse_front"])

    used = front_of("d", "policy.name=distreal")
    (made,) = cache.glob("front-*.h5")
    assert Path(used) == made
    mine = tmp_path / "my-front.h5"  # a front file the user names: recorded as named
    mine.write_bytes(made.read_bytes())
    assert front_of("g", "policy.name=distreal-static", f"policy.options.front={mine}") \
        == str(mine)
    assert front_of("f", "policy.name=fedavg") == ""
