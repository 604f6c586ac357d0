"""DISTREAL's ``anchor_full`` option: the full network stays a candidate unless beaten
beyond the noise; off, nothing changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fleetsim.build import load_scenario, run_outcome
from fleetsim.dse import Front, write_front
from fleetsim.policies.distreal import Distreal
from fleetsim.results import timeline_arrays
from tests.conftest import TINY
from tests.policies.test_distreal import COSTS, GROUPS, ctx, evaluated, obs

FULL = (0.0,) * 4


def noisy_front(tmp_path: Path, beaten_by: float = 0.0) -> Path:
    """The study's situation: a vector cheaper than d = 0 whose mean proxy is below it by
    less than its spread (-0.006 +- 0.016), so d = 0 is dominated and off the front; and
    cheaper ones. With ``beaten_by`` > 0 another vector beats d = 0 by more than its
    spread."""
    vecs = [(0.0, 0.0, 0.4, 0.2), (0.25,) * 4, (0.5,) * 4]
    proxy = [-0.006, 0.01, 0.03]
    spread = [0.016, 0.02, 0.04]
    if beaten_by:
        vecs.insert(0, (0.0, 0.0, 0.0, 0.1))
        proxy.insert(0, -beaten_by)
        spread.insert(0, 0.01)
    macs = [COSTS.step_macs(v, 16) for v in vecs]
    f = Front(GROUPS, np.array(vecs), np.array(macs), np.array(proxy),
              {"full_macs": COSTS.step_macs(FULL, 16)}, np.array(spread))
    p = tmp_path / "noisy.h5"
    write_front(p, f, evaluated(vecs, macs, proxy, spread))
    return p


def test_anchor_prefers_the_full_network_within_the_noise(tmp_path: Path) -> None:
    p = str(noisy_front(tmp_path))
    plain = Distreal(Distreal.Options(front=p), ctx())
    anchored = Distreal(Distreal.Options(front=p, anchor_full=True), ctx())
    assert FULL not in plain.candidates and plain.candidates[0] == (0.0, 0.0, 0.4, 0.2)
    assert anchored.candidates == [FULL, (0.0, 0.0, 0.4, 0.2), (0.25,) * 4, (0.5,) * 4]
    # plenty of time: the anchored device trains d = 0, the plain one cannot
    assert anchored.decide(obs(1.0, 1e6)).vector == FULL
    assert plain.decide(obs(1.0, 1e6)).vector == (0.0, 0.0, 0.4, 0.2)
    # too little time for d = 0: it falls back to the cheaper vectors as before
    t = 10 * COSTS.step_macs((0.0, 0.0, 0.4, 0.2), 16) / 1e8 * 1.01
    assert anchored.decide(obs(1.0, t)).vector == (0.0, 0.0, 0.4, 0.2)


def test_a_vector_beating_the_full_network_beyond_its_spread_stays_first(
        tmp_path: Path) -> None:
    p = str(noisy_front(tmp_path, beaten_by=0.05))  # -0.05 < -0.01: a real win
    anchored = Distreal(Distreal.Options(front=p, anchor_full=True), ctx())
    assert anchored.candidates[0] == (0.0, 0.0, 0.0, 0.1)
    # d = 0 is costlier than the winner, so the cost filter leaves it out after it
    assert FULL not in anchored.candidates


def _run(tmp_path: Path, anchor: bool) -> tuple[np.ndarray, np.ndarray]:
    text = TINY.replace("arch: mlp", "arch: cnn4").replace(
        "options: {hidden: [16]}", "options: {channels: [8, 8, 8, 8]}")
    sets = ["policy.name=distreal", f"policy.options.front={noisy_front(tmp_path)}",
            "training.deadline_s=60", "training.mode=timing"]
    if anchor:
        sets.append("policy.options.anchor_full=true")
    done = run_outcome(load_scenario(None, sets, text=text))
    tl = timeline_arrays(done.log, done.facts)
    fast = (tl["device_class"] == 0) & (tl["steps"] > 0)
    return tl["mean_kept_share"][fast], tl["mean_kept_share"]


def test_anchored_run_trains_the_full_network_on_a_fast_device(tmp_path: Path) -> None:
    """A fast device (1e7 MAC/s, 60 s deadline) can afford d = 0 at any availability:
    anchored, every one of its mini-batches keeps the whole model; plain DISTREAL never
    trains d = 0 (it is not on the front)."""
    anchored_fast, _ = _run(tmp_path, True)
    plain_fast, _ = _run(tmp_path, False)
    assert anchored_fast.size and np.all(anchored_fast == 1.0)
    assert plain_fast.size and np.all(plain_fast < 1.0)
