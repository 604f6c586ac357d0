"""The engine where results used to go wrong: stalls, cut-offs, ties, caps and budgets.

Each test names the defect of issue 13 it guards against; times and MACs are computed by
hand from the trace and the cost model (one mini-batch is made to take exactly one
simulated second at full availability).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fleetsim.build import build, load_scenario
from fleetsim.errors import UserError
from fleetsim.fleet import class_counts
from fleetsim.policies.base import POLICIES, Assignment, Decision, Policy, StepObservation
from tests.conftest import make_traces

FLEET = """
name: faults
seed: 1
data: {{dataset: digits, partition: {{name: iid}}}}
model: {{arch: mlp, options: {{hidden: [8]}}}}
fleet:
  devices: {n}
  assignment: blocks
  classes:
    - {{name: only, share: 1.0, peak_macs_per_s: {peak}, uplink_mbps: {up},
       downlink_mbps: {down}, latency_s: 0.0}}
  traces: {{file: {trace}}}
training:
  mode: timing
  rounds: {rounds}
  clients_per_round: {k}
  deadline_s: {deadline}
  local_steps: {steps}
  batch_size: 16
"""


def one_step_macs() -> float:
    """MACs of one mini-batch of 16 on the scenario's MLP (so peak = this is 1 step/s)."""
    sc = load_scenario(None, text=FLEET.format(n=1, peak=1.0, up=1e9, down=1e9, trace="x.h5",
                                               rounds=1, k=1, deadline="null", steps=1)
                       .replace("traces: {file: x.h5}", "traces: {generator: constant}"))
    return build(sc).engine.costs.step_macs(None, 16)


@pytest.fixture(scope="module")
def step_macs() -> float:
    return one_step_macs()


@pytest.fixture(autouse=True)
def _test_policies():  # type: ignore[no-untyped-def]
    """This module's policies, registered for its tests only (they would otherwise show up
    in `fleetsim schema` and the generated scenario reference)."""
    saved = dict(POLICIES._items)
    POLICIES.add("test-deciding-base", _Deciding)
    POLICIES.add("test-many-steps", _ManySteps)
    POLICIES.add("test-never-stops", _NeverStops)
    yield
    POLICIES._items.clear()
    POLICIES._items.update(saved)


def scenario(tmp_path: Path, write_trace_file, ts, *, n: int = 1, k: int = 1,  # type: ignore[no-untyped-def]
             deadline: float | None = None, steps: int = 5, rounds: int = 1,
             peak: float, up: float = 1e9, down: float = 1e9, extra: list[str] | None = None):
    write_trace_file("t.h5", ts)
    text = FLEET.format(n=n, peak=peak, up=up, down=down, trace="t.h5", rounds=rounds, k=k,
                        deadline="null" if deadline is None else repr(deadline), steps=steps)
    (tmp_path / "s.yaml").write_text(text)
    return load_scenario(tmp_path / "s.yaml", extra or [])


# ---------------------------------------------------------------- 1. stalls for ever


@pytest.mark.parametrize("over", [["training.deadline_s=null"],
                                  ["training.deadline_s=10",
                                   "policy.options.stragglers=wait"]])
def test_device_that_can_never_finish_is_a_clear_error_when_the_server_waits(
        tmp_path: Path, write_trace_file, step_macs: float, over: list[str]) -> None:  # type: ignore[no-untyped-def]
    # availability drops to 0 for ever at 2.5 s (no period): step 3 never ends
    ts = make_traces([([0.0, 2.5], [1.0, 0.0])])
    sc = scenario(tmp_path, write_trace_file, ts, peak=step_macs, deadline=10, extra=over)
    with pytest.raises(UserError, match="can never finish"):
        build(sc).engine.run()


def test_stalled_device_through_the_cli_exits_2_without_traceback(
        tmp_path: Path, write_trace_file, step_macs: float,  # type: ignore[no-untyped-def]
        capsys: pytest.CaptureFixture[str]) -> None:
    from fleetsim.cli import main

    scenario(tmp_path, write_trace_file, make_traces([([0.0, 2.5], [1.0, 0.0])]),
             peak=step_macs)
    code = main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o"), "--quiet"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "can never finish" in err and "Traceback" not in err


def test_stalled_device_under_a_deadline_is_late_with_the_work_it_did(
        tmp_path: Path, write_trace_file, step_macs: float) -> None:  # type: ignore[no-untyped-def]
    ts = make_traces([([0.0, 2.5], [1.0, 0.0])])
    sc = scenario(tmp_path, write_trace_file, ts, peak=step_macs, deadline=10.0)
    (o,) = build(sc).engine.run().timeline
    assert o.status == "late" and o.t_end == 10.0 and math.isfinite(o.t_end)
    assert o.steps == 2
    assert o.macs == pytest.approx(2.5 * step_macs, rel=1e-9)  # 2 steps + half of step 3


def test_stall_under_overcommit_is_not_needed_once_k_arrived(
        tmp_path: Path, write_trace_file, step_macs: float) -> None:  # type: ignore[no-untyped-def]
    ts = make_traces([([0.0, 2.5], [1.0, 0.0])] + [([0.0], [1.0])] * 3)
    sc = scenario(tmp_path, write_trace_file, ts, n=4, k=3, peak=step_macs, steps=4,
                  extra=["policy.options.stragglers=overcommit", "policy.options.overcommit=1.3"])
    log = build(sc).engine.run()
    by = {o.device: o for o in log.timeline}
    assert by[0].status == "not_needed" and by[0].steps == 2
    assert by[0].macs == pytest.approx(2.5 * step_macs, rel=1e-9)
    assert [by[d].status for d in (1, 2, 3)] == ["completed"] * 3


# ------------------------------------------------ 2./3. zero availability, partial MACs


def test_zero_availability_over_a_whole_period_is_late_not_a_crash(
        tmp_path: Path, write_trace_file, step_macs: float) -> None:  # type: ignore[no-untyped-def]
    ts = make_traces([([0.0], [0.0])], period_s=100.0, horizon_s=100.0)
    sc = scenario(tmp_path, write_trace_file, ts, peak=step_macs, deadline=30.0)
    (o,) = build(sc).engine.run().timeline
    assert (o.status, o.t_end, o.steps, o.macs) == ("late", 30.0, 0, 0.0)


def test_late_device_on_a_non_periodic_trace_reports_its_partial_macs(
        tmp_path: Path, write_trace_file, step_macs: float) -> None:  # type: ignore[no-untyped-def]
    # availability 0.5 from 1 s on, for ever: step 1 ends at 1, step 2 at 3, step 3 at 5
    ts = make_traces([([0.0, 1.0], [1.0, 0.5])])
    sc = scenario(tmp_path, write_trace_file, ts, peak=step_macs, deadline=4.0)
    log = build(sc).engine.run()
    (o,) = log.timeline
    assert o.status == "late" and o.steps == 2
    assert o.macs == pytest.approx(2.5 * step_macs, rel=1e-9)  # 2 steps + (4-3)*0.5
    assert log.rounds[0]["macs_wasted"] == pytest.approx(2.5 * step_macs, rel=1e-9)


def test_offline_mid_step_at_half_availability_counts_the_done_share(
        tmp_path: Path, write_trace_file, step_macs: float) -> None:  # type: ignore[no-untyped-def]
    ts = make_traces([([0.0, 2.0], [1.0, 0.5])], [([0.0, 3.5], [1, 0])])
    sc = scenario(tmp_path, write_trace_file, ts, peak=step_macs, deadline=100.0)
    (o,) = build(sc).engine.run().timeline
    # steps 1, 2 by 2 s; step 3 runs at 0.5 from 2 s and is cut at 3.5 s: 0.75 of a step
    assert (o.status, o.t_end, o.steps) == ("dropped", 3.5, 2)
    assert o.macs == pytest.approx(2.75 * step_macs, rel=1e-9)


def test_offline_during_download_and_during_upload(
        tmp_path: Path, write_trace_file, step_macs: float) -> None:  # type: ignore[no-untyped-def]
    sc0 = scenario(tmp_path, write_trace_file, make_traces([([0.0], [1.0])]), peak=step_macs)
    nbytes = build(sc0).engine.costs.model_bytes()
    mbps = nbytes * 8 / 1e6 / 2.0  # each transfer takes 2 s
    # device 0 goes offline at 1 s (downloading), device 1 at 8 s (uploading from 7 s)
    ts = make_traces([([0.0], [1.0])] * 2, [([0.0, 1.0], [1, 0]), ([0.0, 8.0], [1, 0])])
    sc = scenario(tmp_path, write_trace_file, ts, n=2, k=2, peak=step_macs, up=mbps,
                  down=mbps, deadline=100.0)
    log = build(sc).engine.run()
    a, b = sorted(log.timeline, key=lambda o: o.device)
    assert (a.status, a.t_end, a.steps, a.macs) == ("dropped", 1.0, 0, 0.0)
    assert a.bytes_down == nbytes // 2 and a.bytes_up == 0
    assert (b.status, b.t_end, b.steps) == ("dropped", 8.0, 5)
    assert b.macs == pytest.approx(5 * step_macs, rel=1e-9)
    assert b.bytes_down == nbytes and b.bytes_up == nbytes // 2
    assert log.rounds[0]["bytes_up"] == nbytes // 2  # traffic, not updates received


# ---------------------------------------------------------- 5. no mini-batch fits


@pytest.mark.parametrize("selector", ["oort", "tifl"])
def test_partial_work_with_no_mini_batch_is_too_slow_and_the_selector_learns_it(
        tmp_path: Path, write_trace_file, step_macs: float, selector: str) -> None:  # type: ignore[no-untyped-def]
    sc0 = scenario(tmp_path, write_trace_file, make_traces([([0.0], [1.0])]), peak=step_macs)
    mbps = build(sc0).engine.costs.model_bytes() * 8 / 1e6 / 0.25  # transfers take 0.25 s
    # device 0 needs 1 s a mini-batch, device 1 4 s: neither fits before the 0.5 s deadline
    ts = make_traces([([0.0], [1.0]), ([0.0], [0.25])])
    sc = scenario(tmp_path, write_trace_file, ts, n=2, k=2, peak=step_macs, deadline=0.5,
                  up=mbps, down=mbps,
                  extra=["policy.name=fedprox", f"selector.name={selector}"])
    built = build(sc)
    log = built.engine.run()
    a, b = sorted(log.timeline, key=lambda o: o.device)
    assert (a.status, b.status) == ("too_slow", "too_slow")
    # it says so at once, after its download (the round does not wait for it)
    assert a.t_end == pytest.approx(0.25, rel=1e-9) and a.steps == 0 and a.bytes_up == 0
    row = log.rounds[0]
    assert (row["too_slow"], row["dropped"], row["completed"]) == (2, 0, 0)
    # the selector hears how long one mini-batch + upload would take: 1.5 s and 4.5 s
    sel = built.engine.selector
    if selector == "oort":
        assert sel.duration_s[:2] == pytest.approx([1.5, 4.5], rel=1e-9)
    else:
        assert (sel.latency_sum[:2] / sel.latency_n[:2]) == pytest.approx([1.5, 4.5], rel=1e-9)


# ------------------------------------------------------ 7. over-commitment accounting


def test_overcommit_cuts_back_the_work_of_devices_still_training(
        tmp_path: Path, write_trace_file, step_macs: float) -> None:  # type: ignore[no-untyped-def]
    # three fast devices (1 step/s) and one at quarter availability (4 s a step);
    # every transfer takes 0.4 s
    sc0 = scenario(tmp_path, write_trace_file, make_traces([([0.0], [1.0])]), peak=step_macs)
    mbps = build(sc0).engine.costs.model_bytes() * 8 / 1e6 / 0.4
    ts = make_traces([([0.0], [1.0])] * 3 + [([0.0], [0.25])])
    sc = scenario(tmp_path, write_trace_file, ts, n=4, k=3, peak=step_macs, steps=4,
                  up=mbps, down=mbps, extra=["policy.options.stragglers=overcommit"])
    log = build(sc).engine.run()
    by = {o.device: o for o in log.timeline}
    # the third arrival (0.4 + 4 + 0.4 s) closes the round
    assert log.rounds[0]["t_end_s"] == pytest.approx(4.8, rel=1e-9)
    slow = by[3]
    assert slow.status == "not_needed" and slow.t_end == log.rounds[0]["t_end_s"]
    # its step 1 ran from 0.4 to 4.4 s; of step 2 it did 0.4 s at 0.25 by the close
    assert slow.steps == 1
    assert slow.macs == pytest.approx(1.1 * step_macs, rel=1e-9)
    assert log.rounds[0]["macs_wasted"] == pytest.approx(slow.macs, rel=1e-9)
    assert slow.bytes_up == 0


# ---------------------------------------------------------- 9. arrival at the deadline


class _Deciding(Policy):
    """The base policy's decisions, but through decide() (the engine's other path)."""

    def decide(self, obs: StepObservation) -> Decision:
        return super().decide(obs)




@pytest.mark.parametrize("policy", ["fedavg", "test-deciding-base"])
def test_an_update_arriving_exactly_at_the_deadline_counts(
        tmp_path: Path, write_trace_file, step_macs: float, policy: str) -> None:  # type: ignore[no-untyped-def]
    ts = make_traces([([0.0], [1.0])])
    sc = scenario(tmp_path, write_trace_file, ts, peak=step_macs, up=7.0, down=9.0,
                  extra=[f"policy.name={policy}"])
    (free,) = build(sc).engine.run().timeline
    arrival = free.t_end  # with no deadline
    for deadline, status in ((arrival, "completed"), (np.nextafter(arrival, 0), "late")):
        sc = scenario(tmp_path, write_trace_file, ts, peak=step_macs, up=7.0, down=9.0,
                      deadline=float(deadline), extra=[f"policy.name={policy}"])
        (o,) = build(sc).engine.run().timeline
        assert o.status == status, (deadline, arrival)


# -------------------------------------------------------------- 11. the step cap


class _ManySteps(Policy):
    """Asks for 150 mini-batches with local_steps 1 (as FedNova's steps_range may)."""

    def assign(self, round: int, device: int, device_class: int,
               rng: np.random.Generator) -> Assignment:
        return Assignment(steps=150)


class _NeverStops(Policy):
    def decide(self, obs: StepObservation) -> Decision:
        return Decision(self.zero)




def test_an_explicit_step_count_is_never_truncated(
        tmp_path: Path, write_trace_file, step_macs: float) -> None:  # type: ignore[no-untyped-def]
    ts = make_traces([([0.0], [1.0])])
    sc = scenario(tmp_path, write_trace_file, ts, peak=step_macs, steps=1,
                  extra=["policy.name=test-many-steps"])
    (o,) = build(sc).engine.run().timeline
    assert o.status == "completed" and o.steps == 150


def test_a_policy_that_never_stops_is_an_error_not_a_truncation(
        tmp_path: Path, write_trace_file, step_macs: float) -> None:  # type: ignore[no-untyped-def]
    ts = make_traces([([0.0], [1.0])])
    sc = scenario(tmp_path, write_trace_file, ts, peak=step_macs * 1e3, steps=1,
                  extra=["policy.name=test-never-stops"])
    with pytest.raises(UserError, match="did not stop"):
        build(sc).engine.run()


# -------------------------------------------------------------- 12. the time budget


def test_no_round_ends_past_the_time_budget(
        tmp_path: Path, write_trace_file, step_macs: float) -> None:  # type: ignore[no-untyped-def]
    ts = make_traces([([0.0], [1.0])])
    # each round takes 5 s (+ transfers); a budget of 12 s cuts the third round at 12 s
    sc = scenario(tmp_path, write_trace_file, ts, peak=step_macs, rounds="null",  # type: ignore[arg-type]
                  extra=["training.time_budget_s=12", "training.server_time_s=0"])
    log = build(sc).engine.run()
    assert len(log.rounds) == 3
    assert all(r["t_end_s"] <= 12.0 for r in log.rounds)
    assert log.rounds[-1]["t_end_s"] == 12.0 and log.rounds[-1]["late"] == 1
    assert [r["completed"] for r in log.rounds] == [1, 1, 0]


# ---------------------------------------------------------- 8. device-class counts


@pytest.mark.parametrize("n", [7, 3_000_000, 10**9 + 7])
def test_class_counts_sum_to_the_fleet_for_shares_within_tolerance(n: int) -> None:
    shares = [0.3333333, 0.3333333, 0.3333334 - 5e-7]  # sums to 1 - 5e-7
    counts = class_counts(shares, n)
    assert counts.sum() == n and (counts >= 0).all()
    assert np.allclose(counts / n, np.array(shares) / sum(shares), atol=2 / n + 1e-12)


def test_large_fleet_with_shares_within_tolerance_builds() -> None:
    from fleetsim.fleet import Fleet
    from fleetsim.scenario import FleetConfig

    cfg = FleetConfig.model_validate({
        "devices": 3_000_000, "traces": {"generator": "constant"},
        "classes": [{"name": f"c{i}", "share": s, "peak_macs_per_s": 1e9}
                    for i, s in enumerate([0.3333333, 0.3333333, 0.3333334 - 5e-7])]})
    fleet = Fleet(cfg, seed=0)
    assert len(fleet.class_of) == 3_000_000
    assert np.bincount(fleet.class_of).tolist() == class_counts(
        [0.3333333, 0.3333333, 0.3333334 - 5e-7], 3_000_000).tolist()
