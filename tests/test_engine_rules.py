"""Engine rules that only a hand schedule pins (issue 29), kept apart from the engine's
other tests so they guard any rebuild of it.

One mini-batch takes exactly one simulated second at full availability (peak = the MACs
of one mini-batch of 16); downloads are nearly instant.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fleetsim.build import build
from fleetsim.policies.base import POLICIES, Decision, StepObservation
from fleetsim.policies.fedprox import FedProx
from tests.conftest import make_traces
from tests.test_engine_faults import one_step_macs, scenario


@pytest.fixture(scope="module")
def step_macs() -> float:
    return one_step_macs()


class _DecidingProx(FedProx):
    """FedProx whose mini-batches go through decide() (the engine's deciding path), with
    the base policy's answers: the assigned vector for the assigned steps, then stop."""

    def decide(self, obs: StepObservation) -> Decision:
        if obs.step >= self.steps_of(obs.assignment):
            return Decision(None)
        return Decision(obs.assignment.submodel or self.zero)


@pytest.fixture(autouse=True)
def _test_policies():  # type: ignore[no-untyped-def]
    saved = dict(POLICIES._items)
    POLICIES.add("test-deciding-prox", _DecidingProx)
    yield
    POLICIES._items.clear()
    POLICIES._items.update(saved)


# ------------------------------------------------ 1. offline exactly when a phase ends

def test_going_offline_at_the_instant_an_upload_ends_drops_the_device(
        tmp_path: Path, write_trace_file, step_macs: float) -> None:  # type: ignore[no-untyped-def]
    always = make_traces([([0.0], [1.0])])
    # 3 mini-batches, then an upload of ~0.1 s at 1 Mbit/s: first the time it arrives
    sc = scenario(tmp_path, write_trace_file, always, steps=3, peak=step_macs, up=1.0)
    (o,) = build(sc).engine.run().timeline
    assert o.status == "completed" and 3.0 < o.t_end < 4.0
    t_arrive = o.t_end
    # offline at exactly that instant: offline at t means not reachable at t
    off = make_traces([([0.0], [1.0])], [([0.0, t_arrive], [1, 0])])
    sc = scenario(tmp_path, write_trace_file, off, steps=3, peak=step_macs, up=1.0)
    log = build(sc).engine.run()
    (o,) = log.timeline
    assert (o.status, o.t_end, o.job) == ("dropped", t_arrive, None)
    assert (log.rounds[0]["completed"], log.rounds[0]["dropped"]) == (0, 1)
    # one ulp later, the upload has ended first: the update arrives
    later = make_traces([([0.0], [1.0])],
                        [([0.0, float(np.nextafter(t_arrive, math.inf))], [1, 0])])
    sc = scenario(tmp_path, write_trace_file, later, steps=3, peak=step_macs, up=1.0)
    (o,) = build(sc).engine.run().timeline
    assert (o.status, o.t_end) == ("completed", t_arrive)


# ------------------------------------------------ 2. partial work leaves time for the upload

@pytest.mark.parametrize("policy", ["fedprox", "fednova", "test-deciding-prox"])
def test_partial_work_stops_where_the_upload_still_fits_the_deadline(
        tmp_path: Path, write_trace_file, step_macs: float, policy: str) -> None:  # type: ignore[no-untyped-def]
    always = make_traces([([0.0], [1.0])])
    sc = scenario(tmp_path, write_trace_file, always, steps=20, peak=step_macs)
    nbytes = build(sc).engine.costs.model_bytes()
    up_mbps = nbytes * 8 / 2.5e6  # the upload takes 2.5 s
    # deadline 10 s: 7 mini-batches + 2.5 s of upload = 9.5 s fit; an 8th would end at
    # 8 s and its upload at 10.5 s, past the deadline (9 mini-batches fit without it)
    sc = scenario(tmp_path, write_trace_file, always, steps=20, peak=step_macs,
                  up=up_mbps, deadline=10.0, extra=[f"policy.name={policy}"])
    log = build(sc).engine.run()
    (o,) = log.timeline
    assert o.status == "completed" and o.steps == 7
    assert o.t_end == pytest.approx(9.5, abs=1e-6) and o.t_end <= 10.0
    assert o.job is not None and o.job.steps == 7


# ------------------------------------------------ 3. the max-staleness boundary

def _async(step_macs: float, *extra: str):  # type: ignore[no-untyped-def]
    from tests.test_async import scenario as async_scenario
    return async_scenario(step_macs, [1.0, 2.0, 3.0], mode="timing", rounds=3,
                          selector="random", extra=tuple(extra))


def test_an_update_exactly_max_staleness_old_is_aggregated(step_macs: float) -> None:
    # without a bound this schedule aggregates updates of staleness 0 and 1 (and no more)
    free = build(_async(step_macs, "training.time_budget_s=1000")).engine.run()
    assert max(r["staleness_max"] for r in free.rounds) == 1
    # with max_staleness 1 the same updates are kept: s == max is not "staler than"
    bound = build(_async(step_macs, "server.max_staleness=1",
                         "training.time_budget_s=1000")).engine.run()
    assert all(o.status != "stale" for o in bound.timeline)
    assert [r["staleness_max"] for r in bound.rounds] == \
        [r["staleness_max"] for r in free.rounds]


def test_max_staleness_zero_still_aggregates_fresh_updates(step_macs: float) -> None:
    # a time budget ends the run even if every update were (wrongly) dropped as stale,
    # so a broken boundary fails here by assertion, not by a hang
    log = build(_async(step_macs, "server.max_staleness=0",
                       "training.time_budget_s=50")).engine.run()
    assert len(log.rounds) == 3 and all(r["completed"] > 0 for r in log.rounds)
    assert all(r["staleness_max"] == 0 for r in log.rounds)
