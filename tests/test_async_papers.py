"""The asynchronous server true to its papers (issue 24, the seven findings).

Each test is a hand schedule or an independent plain re-implementation; each failed on
the engine before its fix. Times: one mini-batch takes exactly 1, 2 or 3 simulated
seconds at full availability (the schedule of ``tests/test_async.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fleetsim.build import build, load_scenario, trainer_settings
from fleetsim.errors import UserError
from fleetsim.training import Trainer, UpdateJob
from tests.test_async import _lowest_idle, scenario  # noqa: F401 (autouse fixture: the selector)
from tests.test_engine_faults import one_step_macs

TINY = Path(__file__).parents[1] / "scenarios" / "tiny.yaml"


@pytest.fixture(scope="module")
def step_macs() -> float:
    return one_step_macs()


# ------------------------------------------------------------------ (1) FedAsync mixing


def test_fedasync_mixes_with_the_current_model_as_in_xie_et_al(step_macs: float) -> None:
    """Xie et al. (arXiv 1903.03934), Algorithm 1: x_t = (1 - a_t) x_{t-1} + a_t x_new,
    a_t = alpha * s(staleness), re-implemented here in plain torch on the hand schedule:
    t=1 job 0 (device 0, from x0, fresh) -> x1; t=2 job 1 (device 1, from x0, 1 stale)
    -> x2, then job 2 (device 0, from x1, 1 stale) -> x3."""
    alpha = 0.6
    sc = scenario(step_macs, [1.0, 2.0, 3.0], conc=2, buf=1, rounds=3,
                  extra=("server.optimizer.lr=0.6", "server.staleness.name=polynomial",
                         "server.staleness.a=0.5"))
    built = build(sc)
    x0 = {k: v.clone() for k, v in built.engine.state.items()}  # type: ignore[union-attr]
    log = built.engine.run()
    jobs = sorted(log.timeline, key=lambda o: o.round)
    assert [(o.round, o.device, o.start_version, o.status) for o in jobs[:3]] == [
        (0, 0, 0, "completed"), (1, 1, 0, "completed"), (2, 0, 1, "completed")]
    assert [r["staleness_max"] for r in log.rounds] == [0, 1, 1]

    t = Trainer(trainer_settings(sc))
    n = built.engine.n_samples
    zero = ((0.0,) * len(t.model.groups),)

    def train(state, device: int, key: int):  # type: ignore[no-untyped-def]
        return t.train(state, UpdateJob(device, key, float(n[device]), zero, (0,))).update.state

    fl = [k for k, v in x0.items() if v.is_floating_point()]

    def mix(x, x_new, s: int):  # type: ignore[no-untyped-def]
        a_t = alpha * (1.0 + s) ** -0.5
        return {k: (1.0 - a_t) * x[k] + a_t * x_new[k] for k in fl}

    x1 = mix(x0, train(x0, 0, 0), 0)
    x2 = mix(x1, train(x0, 1, 0), 1)
    x3 = mix(x2, train(x1, 0, 1), 1)
    for k in fl:
        torch.testing.assert_close(built.engine.state[k], x3[k], rtol=1e-5, atol=1e-6)  # type: ignore[index]


def test_fedasync_rule_refuses_what_xie_et_al_do_not_define(step_macs: float) -> None:
    for extra, word in ((("server.rule=fedasync",), "buffer_size is 2"),
                        (("server.optimizer.lr=1.5",), "at most 1"),
                        (("server.optimizer.name=adam", "server.optimizer.lr=0.1"), "'adam'")):
        buf = 2 if "server.rule=fedasync" in extra else 1
        with pytest.raises(UserError) as e:
            build(scenario(step_macs, [1.0, 2.0], conc=2, buf=buf, rounds=2, extra=extra))
        assert "server.rule" in str(e.value) and word in str(e.value)
    # FedBuff's rule with a buffer of one stays available, explicitly
    build(scenario(step_macs, [1.0, 2.0], conc=2, buf=1, rounds=2,
                   extra=("server.rule=fedbuff", "server.optimizer.lr=1.5")))


# ------------------------------------------------------------------ (2) FedNova in async


def test_fednova_in_async_mode_is_refused_with_exit_2(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    from fleetsim.cli import main

    sets = ["policy.name=fednova", "server.mode=async", "server.concurrency=4",
            "server.buffer_size=2", "training.mode=timing"]
    with pytest.raises(UserError) as e:
        build(load_scenario(TINY, sets))
    assert "'fednova'" in str(e.value) and "server.mode 'sync'" in str(e.value)
    code = main(["run", str(TINY), "--quiet", *[a for s in sets for a in ("--set", s)]])
    err = capsys.readouterr().err
    assert code == 2 and "fednova" in err and "Traceback" not in err


# ------------------------------------------------------------------ (5) arrival at the budget


def test_an_arrival_exactly_at_the_time_budget_counts_in_async_mode(step_macs: float
                                                                     ) -> None:
    # without a budget, job 1 (device 1) arrives at t ~ 2 and fills the buffer: version 1
    free = build(scenario(step_macs, [1.0, 2.0, 3.0], mode="timing", rounds=3)).engine.run()
    t_arrive = sorted(free.timeline, key=lambda o: o.round)[1].t_end
    assert free.rounds[0]["t_end_s"] == t_arrive
    # with the budget exactly at that arrival, it still counts (as in a synchronous round)
    log = build(scenario(step_macs, [1.0, 2.0, 3.0], mode="timing", rounds=1000,
                         extra=(f"training.time_budget_s={t_arrive!r}",))).engine.run()
    assert len(log.rounds) == 1
    assert (log.rounds[0]["completed"], log.rounds[0]["t_end_s"]) == (2, t_arrive)
    assert max(o.t_end for o in log.timeline) <= t_arrive


def test_the_budget_rule_is_the_same_in_sync_mode(step_macs: float) -> None:
    # the synchronous counterpart: one device, its arrival exactly at the budget counts
    free = build(scenario(step_macs, [2.0], mode="timing", rounds=1, k=1,
                          server_mode="sync")).engine.run()
    t_arrive = free.timeline[0].t_end
    log = build(scenario(step_macs, [2.0], mode="timing", rounds=1000, k=1,
                         server_mode="sync",
                         extra=(f"training.time_budget_s={t_arrive!r}",))).engine.run()
    assert [r["completed"] for r in log.rounds] == [1]


# ------------------------------------------------------------------ (6) FedRolex's window


def test_fedrolex_window_moves_per_model_version_not_per_repeat(step_macs: float) -> None:
    # hidden width 12: the window's period is 12, which does not divide the repeat
    # stride 2**32, so a window keyed by the stream key would move (2**32 % 12 = 4)
    sc = scenario(step_macs, [1.0, 2.0, 3.0], mode="timing", rounds=3,
                  extra=("policy.name=fedrolex", "model.options.hidden=[12]"))
    built = build(sc)
    period = built.engine.policy.period  # type: ignore[attr-defined]
    assert period == 12 and (1 << 32) % period != 0
    log = built.engine.run()
    jobs = [o for o in sorted(log.timeline, key=lambda o: o.round) if o.job is not None]
    # a device's second job from one version (device 0: 1 s jobs) has the first's window
    twice = [o for o in jobs if sum(p.device == o.device and p.start_version ==
                                    o.start_version for p in jobs) > 1]
    assert len(twice) >= 2
    assert [o.job.offset for o in jobs] == [o.start_version % period for o in jobs]  # type: ignore[union-attr]
    # the streams still differ between a device's two jobs from one version
    assert len({o.job.round for o in twice}) == len(twice)  # type: ignore[union-attr]


def test_zero_staleness_weight_convention() -> None:
    """A fresh update has staleness 0 and weight 1 under every function (docs/async.md)."""
    from fleetsim.config import StalenessConfig
    from fleetsim.server.buffered import staleness_weight

    for name in ("constant", "polynomial", "hinge"):
        assert staleness_weight(StalenessConfig(name=name), 0) == 1.0
    assert staleness_weight(StalenessConfig(name="polynomial", a=0.5), 1) == \
        pytest.approx(1 / np.sqrt(2))


# ------------------------------------------------------------------ (4) concurrency kept busy


def test_devices_coming_online_start_at_once_while_jobs_run(step_macs: float, tmp_path: Path,
                                                            write_trace_file) -> None:  # type: ignore[no-untyped-def]
    """Concurrency 3; device 0 online from t=0 with 100 s jobs; devices 1 and 2 online
    from t=1: they start at t=1, not when device 0's job ends at t=100."""
    from tests.conftest import make_traces
    from tests.test_async import THREE, classes

    ts = make_traces([([0.0], [1.0])] * 3,
                     [([0.0], [1]), ([0.0, 1.0], [0, 1]), ([0.0, 1.0], [0, 1])],
                     horizon_s=10_000.0)
    write_trace_file("t.h5", ts)
    text = THREE.format(n=3, classes=classes([100.0], step_macs), mode="timing", rounds=2,
                        k=1, selector="test-lowest-idle", server_mode="async", conc=3, buf=3)
    (tmp_path / "s.yaml").write_text(text.replace("traces: {generator: constant}",
                                                  "traces: {file: t.h5}"))
    log = build(load_scenario(tmp_path / "s.yaml")).engine.run()
    first = {}
    for o in sorted(log.timeline, key=lambda o: o.round):
        first.setdefault(o.device, o.t_start)
    assert first == {0: 0.0, 1: 1.0, 2: 1.0}
    assert [r["completed"] for r in log.rounds] == [3, 3]


def test_next_online_by_hand() -> None:
    from fleetsim.traces.device import DeviceTrace
    from tests.conftest import make_traces

    def trace(on_t, on_v, period=None):  # type: ignore[no-untyped-def]
        ts = make_traces([([0.0], [1.0])], [(on_t, on_v)], period_s=period)
        return DeviceTrace(np.asarray([0.0]), np.asarray([1.0]), np.asarray(on_t, float),
                           np.asarray(on_v, np.uint8), ts.period_s)

    tr = trace([0.0, 5.0, 8.0], [0, 1, 0])
    assert [tr.next_online(t) for t in (0.0, 4.5, 5.0, 7.9, 8.0, 100.0)] == \
        [5.0, 5.0, 5.0, 7.9, np.inf, np.inf]
    per = trace([0.0, 5.0, 8.0], [0, 1, 0], period=10.0)
    assert [per.next_online(t) for t in (0.0, 6.0, 8.5, 23.0, 35.0)] == \
        [5.0, 6.0, 15.0, 25.0, 35.0]
    assert trace([0.0], [0]).next_online(3.0) == np.inf


# ------------------------------------------------------------------ (3) Oort in async mode

OORT_HALF = ("selector.name=oort", "selector.options.epsilon=0.5",
             "selector.options.epsilon_decay=1.0", "selector.options.epsilon_min=0.5")


def test_oort_in_async_mode_exploits_its_share(step_macs: float) -> None:
    # 60 devices of four speeds: jobs end one at a time, so the server asks Oort for one
    # device at a time; floor((1 - 0.5) * 1) = 0 exploited picks, for ever, before the fix
    speeds = [1.0, 1.1, 1.2, 1.3]
    text = scenario(step_macs, speeds, mode="timing", rounds=10, conc=4, buf=4,
                    extra=("fleet.devices=60", *OORT_HALF))
    log = build(text).engine.run()
    jobs = sorted(log.timeline, key=lambda o: o.round)
    ended: dict[int, float] = {}
    exploited = 0
    for o in jobs:  # a pick of a device whose earlier job had ended: an exploited pick
        if o.device in ended and ended[o.device] <= o.t_start:
            exploited += 1
        ended[o.device] = min(ended.get(o.device, np.inf), o.t_end)
    assert len(jobs) >= 40
    # about half of the picks after the first four (nothing is explored at t=0)
    assert 0.4 * (len(jobs) - 4) <= exploited <= 0.6 * len(jobs)


def test_oort_pacer_runs_once_per_version_in_async_mode(step_macs: float) -> None:
    sc = scenario(step_macs, [1.0, 2.0], mode="timing", rounds=2,
                  extra=("selector.name=oort", "selector.options.pacer_step=2"))
    oort = build(sc).engine.selector
    oort.exploit_history = [1.0, 1.0, 1.0, 1.0]  # utility stalls: the pacer relaxes T
    t0 = oort.threshold
    for _ in range(3):  # three selections from version 2 (a pacer round): one step
        oort.select_idle(2, 0.0, 1, lambda d: True, np.random.default_rng(0))
    assert oort.threshold == t0 + oort.options.pacer_delta
    oort.select_idle(3, 0.0, 1, lambda d: True, np.random.default_rng(0))
    assert oort.threshold == t0 + oort.options.pacer_delta  # 3 is no pacer round
