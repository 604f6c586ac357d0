"""FedAvg's three ways to treat stragglers, through the engine."""

from __future__ import annotations

import math

import pytest
from policy_cases import context, run

from fleetsim.policies import PolicyOptions
from fleetsim.policies.fedavg import FedAvg


def test_discard_drops_the_late_and_ends_at_the_deadline() -> None:
    log = run("fedavg", {"stragglers": "discard"})
    assert sum(r["late"] for r in log.rounds) > 0
    for r in log.rounds:
        assert r["t_end_s"] <= r["t_start_s"] + 5.0 + 1e-9
        assert r["completed"] + r["late"] == r["selected"]
    assert all(o.status == "late" for o in log.timeline if o.device >= 5)  # the slow class


def test_wait_waits_for_every_selected_device() -> None:
    log = run("fedavg", {"stragglers": "wait"})
    assert all(r["late"] == 0 and r["completed"] == r["selected"] for r in log.rounds)
    slow = [r for r in log.rounds if any(o.device >= 5 and o.round == r["round"]
                                         for o in log.timeline)]
    assert slow, "the seed should select a slow device at least once"
    assert all(r["t_end_s"] - r["t_start_s"] > 5.0 for r in slow)  # past the deadline


def test_overcommit_selects_more_and_keeps_exactly_the_first_k() -> None:
    # no deadline: every selected device would finish, so exactly K are kept
    log = run("fedavg", {"stragglers": "overcommit", "overcommit": 1.3},
              ("training.deadline_s=null", "training.clients_per_round=3"))
    assert log.rounds
    for r in log.rounds:
        assert r["selected"] == math.ceil(3 * 1.3) == 4
        assert r["completed"] == 3 and r["not_needed"] == 1
        outs = [o for o in log.timeline if o.round == r["round"]]
        kept = max(o.t_end for o in outs if o.status == "completed")
        assert all(o.t_end >= kept for o in outs if o.status == "not_needed")
        assert r["t_end_s"] == pytest.approx(kept)  # the round ends with the K-th arrival


@pytest.mark.parametrize(("mode", "select", "keep", "wait"), [
    ("discard", 10, 10, False), ("wait", 10, 10, True), ("overcommit", 13, 10, False)])
def test_plan(mode: str, select: int, keep: int, wait: bool) -> None:
    p = FedAvg(PolicyOptions(stragglers=mode), context())  # type: ignore[arg-type]
    plan = p.plan(0, 10)
    assert (plan.select, plan.keep, plan.wait_all) == (select, keep, wait)


@pytest.mark.parametrize(("k", "factor", "select"), [(10, 1.1, 11), (3, 1.3, 4), (7, 1.3, 10),
                                                     (100, 1.3, 130), (5, 1.0, 5)])
def test_overcommit_rounds_up_without_float_error(k: int, factor: float, select: int) -> None:
    p = FedAvg(PolicyOptions(stragglers="overcommit", overcommit=factor), context())
    assert p.plan(0, k).select == select
