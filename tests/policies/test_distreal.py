"""DISTREAL's run-time rule: least dropout that fits, monotone, never dominated."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from fleetsim.build import build, load_scenario
from fleetsim.costs import CostModel
from fleetsim.dse import Front, write_front
from fleetsim.nn import build_model
from fleetsim.policies import STOP, Assignment, PolicyContext, StepObservation
from fleetsim.policies.distreal import Distreal, DistrealStatic, UniformAdaptive
from tests.conftest import TINY

MODEL = build_model("cnn4", (1, 8, 8), 10, {"channels": [8, 8, 8, 8]})
COSTS = CostModel(MODEL)
GROUPS = tuple((g.name, g.channels) for g in MODEL.groups)


def ctx(**kw: object) -> PolicyContext:
    base = dict(groups=GROUPS, class_names=("a", "b"), class_peaks=(1e9, 1e8), costs=COSTS,
                local_steps=10, batch_size=16, deadline_s=10.0, seed=0,
                class_mean_availability=(0.5, 0.5))
    base.update(kw)
    return PolicyContext(**base)  # type: ignore[arg-type]


def front_file(tmp_path: Path, dominated: bool = True) -> Path:
    """A front of uniform vectors (cost falls, proxy rises) plus a dominated point."""
    vecs = [(d,) * 4 for d in (0.0, 0.25, 0.5, 0.75)]
    proxy = [0.3, 0.4, 0.6, 0.9]
    if dominated:  # costlier than (0.25,)*4 and worse: must never be chosen
        vecs.append((0.0, 0.0, 0.5, 0.75))
        proxy.append(0.95)
    macs = [COSTS.step_macs(v, 16) for v in vecs]
    # spreads at least the proxies: every point is useful (within noise of d = 0)
    f = Front(GROUPS, np.array(vecs), np.array(macs), np.array(proxy),
              {"full_macs": macs[0]}, np.ones(len(vecs)))
    p = tmp_path / "front.h5"
    write_front(p, f, evaluated(vecs, macs, proxy, [1.0] * len(vecs)))
    return p


def evaluated(vecs: list[tuple[float, ...]], macs: object, proxy: object,
              spread: object) -> dict[str, np.ndarray]:
    """The evaluated points of a front file: all feasible."""
    return {"vectors": np.array(vecs), "macs": np.array(macs), "proxy": np.array(proxy),
            "spread": np.array(spread), "feasible": np.ones(len(vecs), bool)}


def obs(avail: float, time_left: float, step: int = 0, peak: float = 1e8,
        last: tuple[float, ...] | None = None) -> StepObservation:
    return StepObservation(0, 0, 0, step, 0.0, avail, time_left, 0.1, peak, 16, Assignment(),
                           COSTS, np.random.default_rng(0), last)


def step_s(vec: tuple[float, ...], avail: float, peak: float = 1e8) -> float:
    return COSTS.step_macs(vec, 16) / (peak * avail)


def test_picks_least_dropout_vector_that_fits(tmp_path: Path) -> None:
    pol = Distreal(Distreal.Options(front=str(front_file(tmp_path))), ctx())
    for d in (0.0, 0.25, 0.5, 0.75):
        v = (d,) * 4
        # exactly enough time for 10 steps of v: v is chosen, not anything with less dropout
        t = 10 * step_s(v, 0.5) * (1 + 1e-9)
        assert pol.decide(obs(0.5, t)).vector == v


def test_choice_is_monotone_and_never_dominated(tmp_path: Path) -> None:
    pol = Distreal(Distreal.Options(front=str(front_file(tmp_path))), ctx())
    avails = np.linspace(0.05, 1.0, 12)
    times = np.geomspace(1e-3, 1e3, 25)
    dominated = (0.0, 0.0, 0.5, 0.75)

    def cost(a: float, t: float) -> float:
        v = pol.decide(obs(a, t)).vector
        assert v != dominated
        return -1.0 if v is None else COSTS.step_macs(v, 16)

    for a, t in itertools.product(avails, times):
        c = cost(a, t)
        assert cost(min(1.0, a * 1.5), t) >= c  # more availability: never cheaper
        assert cost(a, t * 1.5) >= c  # more time: never cheaper


def test_infeasible_stop_or_late(tmp_path: Path) -> None:
    p = str(front_file(tmp_path))
    assert Distreal(Distreal.Options(front=p), ctx()).decide(obs(0.1, 1e-6)) == STOP
    late = Distreal(Distreal.Options(front=p, infeasible="late"), ctx())
    assert late.decide(obs(0.1, 1e-6)).vector == (0.75,) * 4


def test_fixed_work_stops_after_local_steps_and_round_reselect(tmp_path: Path) -> None:
    pol = Distreal(Distreal.Options(front=str(front_file(tmp_path)), reselect="round"), ctx())
    assert pol.decide(obs(1.0, 1e6, step=10)) == STOP
    # once per round: the step-0 choice is kept even when time runs short
    assert pol.decide(obs(0.1, 1e-6, step=3, last=(0.25,) * 4)).vector == (0.25,) * 4


def test_fill_mode_trains_while_a_step_fits(tmp_path: Path) -> None:
    pol = Distreal(Distreal.Options(front=str(front_file(tmp_path)), work="fill"), ctx())
    assert pol.decide(obs(1.0, 1e6, step=50)).vector == (0.0,) * 4
    assert pol.decide(obs(1.0, step_s((0.75,) * 4, 1.0) * 0.5, step=50)) == STOP


def test_useful_only_drops_vectors_worse_than_their_spread(tmp_path: Path) -> None:
    # useful: excess loss over d = 0 no more than its spread over the DSE's repeats
    vecs = [(0.0,) * 4, (0.5,) * 4, (0.75,) * 4]
    macs = [COSTS.step_macs(v, 16) for v in vecs]
    proxy, spread = np.array([0.0, 0.05, 0.5]), np.array([0.0, 0.05, 0.2])
    f = Front(GROUPS, np.array(vecs), np.array(macs), proxy, {}, spread)
    p = tmp_path / "f2.h5"
    write_front(p, f, evaluated(vecs, macs, proxy, spread))
    assert Distreal(Distreal.Options(front=str(p)), ctx()).candidates == vecs[:2]
    allv = Distreal(Distreal.Options(front=str(p), useful_only=False), ctx())
    assert allv.candidates == vecs


def test_uniform_adaptive_uses_one_rate_everywhere() -> None:
    pol = UniformAdaptive(UniformAdaptive.Options(), ctx())
    for a in (0.1, 0.4, 1.0):
        v = pol.decide(obs(a, 5.0)).vector
        assert v is None or len(set(v)) == 1


def test_static_vector_per_class(tmp_path: Path) -> None:
    pol = DistrealStatic(DistrealStatic.Options(front=str(front_file(tmp_path))),
                         ctx(deadline_s=0.1))
    fast, slow = pol.per_class
    assert COSTS.step_macs(fast, 16) > COSTS.step_macs(slow, 16)
    # availability and time left now do not matter: the class's vector, whatever happens
    o = StepObservation(0, 1, 0, 0, 0.0, 0.01, 1e-9, 0.1, 1e8, 16, Assignment(), COSTS,
                        np.random.default_rng(0))
    assert pol.decide(o).vector == slow


def test_distreal_run_is_deterministic(tmp_path: Path) -> None:
    p = front_file(tmp_path)
    # the front above is for a cnn4 of four 8-channel groups on 8x8 digits
    text = TINY.replace("arch: mlp", "arch: cnn4").replace("options: {hidden: [16]}",
                                                           "options: {channels: [8, 8, 8, 8]}")
    sets = ["policy.name=distreal", f"policy.options.front={p}", "training.deadline_s=3"]

    def run() -> list[dict]:
        sc = load_scenario(None, sets, text=text)
        return build(sc).engine.run().rounds

    a, b = run(), run()
    assert a == b or all(
        (x == y) or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
        for ra, rb in zip(a, b) for x, y in zip(ra.values(), rb.values()))
    assert any(r["mean_kept_share"] < 1.0 for r in a if not math.isnan(r["mean_kept_share"]))


@pytest.mark.parametrize("name", ["distreal", "distreal-static"])
def test_front_for_other_model_is_rejected(tmp_path: Path, name: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from fleetsim.cli import main

    p = front_file(tmp_path)
    (tmp_path / "s.yaml").write_text(TINY)
    code = main(["run", str(tmp_path / "s.yaml"), "--set", f"policy.name={name}",
                 "--set", f"policy.options.front={p}"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "was made for groups" in err and "Traceback" not in err


def test_uniform_adaptive_keeps_only_useful_rates(tmp_path: Path) -> None:
    vecs = [(d,) * 4 for d in (0.0, 0.25, 0.5, 0.75)]
    proxy = np.array([0.0, 0.1, 0.6, np.nan])
    spread = np.array([0.0, 0.1, 0.2, np.nan])
    macs = np.array([COSTS.step_macs(v, 16) for v in vecs])
    f = Front(GROUPS, np.array(vecs[:2]), macs[:2], proxy[:2], {}, spread[:2])
    p = tmp_path / "f3.h5"
    ev = evaluated(vecs, macs, proxy, spread)
    ev["feasible"][3] = False  # diverged in the DSE: never useful
    write_front(p, f, ev)
    opts = UniformAdaptive.Options(rates=(0.0, 0.25, 0.5, 0.75), front=str(p))
    assert UniformAdaptive(opts, ctx()).candidates == [(0.0,) * 4, (0.25,) * 4]
    loose = UniformAdaptive.Options(rates=(0.0, 0.25, 0.5, 0.75), front=str(p),
                                    useful_only=False)
    assert len(UniformAdaptive(loose, ctx()).candidates) == 4
