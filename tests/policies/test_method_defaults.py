"""Each method's model defaults: applied when the scenario leaves the option unset, never
over what it sets (recorded as a departure), skipped where the model has no such setting,
and recorded in the run's provenance. Width rounding (ceil / floor / nearest) keeps
exactly the hand-computed channel counts, in the trainer and in the cost model."""

from __future__ import annotations

import json
from typing import Any

import h5py
import numpy as np
import pytest
from policy_cases import TIMED, context, run

from fleetsim.build import load_scenario, method_defaults, trainer_settings
from fleetsim.nn import build_model, kept_counts, select_channels
from fleetsim.nn.base import Group
from fleetsim.policies import POLICIES
from fleetsim.policies.fjord import FjORD, FjORDOptions
from fleetsim.policies.heterofl import HeteroFL, HeteroFLOptions
from fleetsim.policies.widths import drop_vector, kept_of
from fleetsim.results import provenance

#: the authors' settings, written out by hand from their code and papers (docs/policies.md,
#: "Defaults of each method"): the classes must declare exactly these
EXPECTED: dict[str, dict[str, Any]] = {
    "fedavg": {}, "fedprox": {}, "fednova": {},
    "federated_dropout": {"rescale": False},
    "heterofl": {"rescale": True, "bn_stats": "static"},
    "fedrolex": {"rescale": True, "bn_stats": "batch"},
    "fjord": {"rescale": False, "bn_stats": "static"},
    "distreal": {"bn_stats": "batch"}, "uniform-adaptive": {"bn_stats": "batch"},
    "distreal-static": {"bn_stats": "batch"},
}
#: a small CNN with batch norm, so every kind of default can apply
BN_CNN = ["model.arch=cnn4", "model.options={channels: [2, 3, 4, 4], norm: bn}"]


def load(policy: str, sets: list[str]) -> Any:
    # a front file keeps the DISTREAL family from running a DSE: defaults need none
    opts = "{front: none.h5}" if policy in ("distreal", "uniform-adaptive",
                                              "distreal-static") else "{}"
    return load_scenario(None, [f"policy.name={policy}", f"policy.options={opts}", *sets],
                         text=TIMED)


def outcomes(sc: Any) -> dict[str, tuple[str, Any]]:
    return {r["option"]: (r["outcome"], r["in_effect"]) for r in method_defaults(sc)}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_method_declares_its_authors_defaults(name: str) -> None:
    declared = {d.option: d.value for d in POLICIES.get(name).model_defaults}
    assert declared == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_defaults_apply_when_the_scenario_leaves_them_unset(name: str) -> None:
    sc = load(name, BN_CNN)
    for option, value in EXPECTED[name].items():
        assert sc.model.options[option] == value
        assert outcomes(sc)[option] == ("applied", value)
    # the model is built with them: the trainer's model, not only the scenario's dict
    if EXPECTED[name]:
        model = build_model("cnn4", (1, 8, 8), 10, trainer_settings(sc).model.options)
        assert model.rescale == sc.model.options.get("rescale", True)
        assert model.bn_stats == EXPECTED[name].get("bn_stats", "running")
    # the user's own options are kept as they were
    assert sc.model.options["channels"] == [2, 3, 4, 4] and sc.model.options["norm"] == "bn"


@pytest.mark.parametrize("name", [n for n, d in EXPECTED.items() if d])
def test_what_the_scenario_sets_wins_and_is_recorded_as_a_departure(name: str) -> None:
    other = {"rescale": not EXPECTED[name].get("rescale", True), "bn_stats": "running"}
    sets = [f"model.options.{k}={str(v).lower()}" for k, v in other.items()]
    sc = load(name, BN_CNN + sets)
    for option in EXPECTED[name]:
        assert sc.model.options[option] == other[option]
        assert outcomes(sc)[option] == ("departure", other[option])
    # the method's own value, set explicitly, is "set by scenario", not a departure
    same = [f"model.options.{k}={str(v).lower()}" for k, v in EXPECTED[name].items()]
    sc = load(name, BN_CNN + same)
    assert {o for o, _ in outcomes(sc).values()} == {"set by scenario"}


def test_batch_norm_defaults_skip_models_without_batch_norm() -> None:
    # cnn4 without norm: bn_stats would be an error there, so HeteroFL's sBN does not apply
    sc = load("heterofl", ["model.arch=cnn4", "model.options={channels: [2, 3, 4, 4]}"])
    assert "bn_stats" not in sc.model.options
    assert outcomes(sc) == {"rescale": ("applied", True),
                            "bn_stats": ("not applicable", None)}
    # the MLP has no bn_stats option at all
    sc = load("fedrolex", [])
    assert outcomes(sc)["bn_stats"] == ("not applicable", None)
    assert "bn_stats" not in sc.model.options


def test_the_run_records_which_defaults_applied(tmp_path: Any) -> None:
    from fleetsim.results import write_run

    sc = load("fjord", [*BN_CNN, "model.options.rescale=true", "training.rounds=1"])
    log = run("fedavg", None, ("training.rounds=1",))  # any log: provenance is the point
    write_run(tmp_path, sc, log)
    with h5py.File(tmp_path / "run.h5") as f:
        recorded = json.loads(f.attrs["method_defaults"])
    assert {r["option"]: r["outcome"] for r in recorded} == {"rescale": "departure",
                                                            "bn_stats": "applied"}
    assert all(r["source"] for r in recorded)
    # and the effective scenario text says what the model was built with
    assert "bn_stats: static" in provenance(sc)["scenario_text"]


# ---------------------------------------------------------------------------- rounding

#: (channels, width) -> kept channels, by hand: ceil(r C), floor(r C), nearest, >= 1
HAND = [((8, 0.3), (3, 2, 2)), ((12, 0.3), (4, 3, 4)), ((10, 0.3), (3, 3, 3)),
        ((10, 0.7), (7, 7, 7)), ((8, 0.0625), (1, 1, 1)), ((12, 0.5), (6, 6, 6))]


@pytest.mark.parametrize("cw,counts", HAND)
def test_kept_of_by_hand(cw: tuple[int, float], counts: tuple[int, int, int]) -> None:
    c, w = cw
    assert (kept_of(c, w, "ceil"), kept_of(c, w, "floor"), kept_of(c, w, "nearest")) == counts


@pytest.mark.parametrize("rounding,expect", [("ceil", (3, 4)), ("floor", (2, 3))])
def test_drop_vector_keeps_exactly_the_rounded_counts(rounding: str,
                                                      expect: tuple[int, int]) -> None:
    groups = (Group("h0", 8), Group("h1", 12))
    vec = drop_vector(tuple((g.name, g.channels) for g in groups), 0.3, rounding)  # type: ignore[arg-type]
    assert vec is not None
    assert tuple(kept_counts(groups, vec).values()) == expect
    keep = select_channels(groups, vec, "ordered")
    assert keep is not None
    assert [len(keep[g.name]) for g in groups] == list(expect)


def test_heterofl_sends_ceil_widths_and_the_cost_model_times_them() -> None:
    ctx = context(hidden=(8, 12))
    p = HeteroFL(HeteroFLOptions(widths={"slow": 0.3}), ctx)
    sub = p.assign(0, 0, 1, np.random.default_rng()).submodel
    assert sub is not None
    groups = tuple(Group(n, c) for n, c in ctx.groups)
    assert tuple(kept_counts(groups, sub).values()) == (3, 4)  # ceil(2.4), ceil(3.6)
    # MACs of an MLP 64 -> 8 -> 12 -> 10 at 3 and 4 kept units, by hand (forward 1x,
    # backward 2x, per sample, times the batch of 16)
    fwd = 64 * 3 + 3 * 4 + 4 * 10
    assert ctx.costs.step_macs(sub, 16) == pytest.approx(16 * 3 * fwd, rel=0.02)
    nearest = HeteroFL(HeteroFLOptions(widths={"slow": 0.3}, rounding="nearest"), ctx)
    sub_n = nearest.assign(0, 0, 1, np.random.default_rng()).submodel
    assert tuple(kept_counts(groups, sub_n).values()) == (2, 4)  # type: ignore[arg-type]


def test_fjord_draws_ceil_widths_per_group() -> None:
    ctx = context(hidden=(8, 12))
    p = FjORD(FjORDOptions(widths=(0.4, 1.0)), ctx)
    groups = tuple(Group(n, c) for n, c in ctx.groups)
    counts = {tuple(kept_counts(groups, v).values()) for v in p._vectors[0]}
    assert counts == {(4, 5), (8, 12)}  # ceil(3.2), ceil(4.8); the full model


def test_ceil_reaches_the_trainer_through_the_engine() -> None:
    log = run("heterofl", {"widths": {"slow": 0.3}}, ("training.deadline_s=null",))
    slow = [o.job for o in log.timeline if o.job is not None and o.device >= 5]
    assert slow
    groups = (Group("h0", 8), Group("h1", 12))
    assert all(tuple(kept_counts(groups, j.vectors[0]).values()) == (3, 4) for j in slow)


def test_the_dse_trains_its_candidates_with_the_family_defaults() -> None:
    # distreal, uniform-adaptive and distreal-static share one front: the DSE must build
    # the same model as the runs that use it
    from fleetsim.build import dse_job

    jobs = [dse_job(load(n, BN_CNN)) for n in ("distreal", "uniform-adaptive",
                                                "distreal-static")]
    assert {j.trainer.model.options["bn_stats"] for j in jobs} == {"batch"}


def test_compare_cells_record_the_defaults_too(tmp_path: Any) -> None:
    # a batch cell's scenario crosses into its worker as JSON: the record must go with it
    from fleetsim.cli import main

    path = tmp_path / "s.yaml"
    path.write_text(TIMED)
    out = tmp_path / "out"
    assert main(["compare", str(path), "--policies", "heterofl", "--set",
                 "model.arch=cnn4", "--set",
                 "model.options={channels: [2, 3, 4, 4], norm: bn}", "--out", str(out),
                 "--quiet"]) == 0
    (h5,) = out.rglob("run.h5")
    with h5py.File(h5) as f:
        recorded = json.loads(f.attrs["method_defaults"])
    assert {r["option"]: r["outcome"] for r in recorded} == {"rescale": "applied",
                                                            "bn_stats": "applied"}
