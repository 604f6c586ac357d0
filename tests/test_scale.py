"""Huge fleets in timing-only mode, and the shortcuts that make them fast: same results.

No test here asserts a time: the benchmarks measure speed, the tests check that the fast
paths give exactly what the plain ones give and that memory stays bounded by design.
"""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
import torch

from fleetsim.build import build, load_scenario
from fleetsim.costs import measure_on_cpu
from fleetsim.nn import build_model
from fleetsim.results import timeline_arrays
from fleetsim.server.selection import online_sample
from fleetsim.traces import GeneratedTraces
from fleetsim.traces.source import CACHE_BYTES, CACHE_DEVICES

FLEET = """
name: scale
seed: 1
data:
  dataset: digits
  partition: {{name: iid, options: {{samples_per_device: 24}}}}
model: {{arch: cnn4, options: {{channels: [4, 8, 8, 8]}}}}
fleet:
  devices: {devices}
  classes:
    - {{name: phone, share: 0.6, peak_macs_per_s: 2.0e6, uplink_mbps: 10}}
    - {{name: board, share: 0.4, peak_macs_per_s: 4.0e5, uplink_mbps: 2, downlink_mbps: 8}}
  traces:
    generator: markov
    options: {{levels: [1.0, 0.5, 0.2], mean_dwell_s: 120, mean_online_s: 3600,
              mean_offline_s: 900}}
training:
  mode: timing
  rounds: {rounds}
  clients_per_round: {per_round}
  deadline_s: 60
  local_steps: 10
  batch_size: 16
"""


def scenario(devices: int = 300, rounds: int = 12, per_round: int = 20, *overrides: str):
    return load_scenario(None, list(overrides), text=FLEET.format(
        devices=devices, rounds=rounds, per_round=per_round))


def test_timing_only_runs_100k_devices_with_bounded_trace_memory() -> None:
    built = build(scenario(100_000, 4, 100))
    thresholds = gc.get_threshold()
    log = built.engine.run()
    assert gc.get_threshold() == thresholds  # the run's larger one is restored
    assert built.backend is None  # no model training, no data loaded into workers
    assert len(log.rounds) == 4 and all(r["selected"] == 100 for r in log.rounds)
    assert all(math.isnan(r["accuracy"]) for r in log.rounds)
    # fates are decided at round start, so a round costs the server a few events of its
    # own (its wait and its aggregation time), none per selected device
    assert log.events <= 3 * len(log.rounds) + 2
    src = built.engine.fleet._fleet_traces
    assert len(src._cache) <= CACHE_DEVICES and src._cached_bytes <= CACHE_BYTES
    assert src._cached_bytes == sum(t.nbytes for t in src._cache.values())
    # per-device state is arrays of the fleet's length, not Python objects per device
    assert built.engine.fleet.class_of.nbytes == 100_000 * 2
    assert gc.get_freeze_count() == 0  # the run unfroze what it froze


def test_oort_in_timing_mode_takes_the_loss_as_one() -> None:
    built = build(scenario(200, 3, 10, "selector.name=oort"))
    log = built.engine.run()
    sel = built.engine.selector
    done = [(o.device, o.steps) for o in log.timeline if o.status == "completed"]
    assert done
    for d, steps in done:  # utility = mini-batches x |loss|, the loss standing in as 1
        assert sel.utility[d] == steps  # type: ignore[attr-defined]


@pytest.mark.parametrize("overrides", [
    ("policy.name=fedavg",),
    ("policy.name=fedavg", "policy.options.stragglers=overcommit"),
    ("policy.name=fedavg", "policy.options.stragglers=wait"),
    ("policy.name=fedprox",),  # partial work at the deadline
    ("policy.name=fednova",),  # steps per device
    ("policy.name=heterofl",),  # sub-models per class
    ("policy.name=federated_dropout",),
])
def test_fixed_work_shortcut_schedules_exactly_like_the_policy_loop(
        overrides: tuple[str, ...]) -> None:
    fast = build(scenario(300, 12, 20, *overrides)).engine
    slow = build(scenario(300, 12, 20, *overrides)).engine
    assert fast.timer._fixed_work
    slow.timer._fixed_work = False  # every mini-batch through an observation and decide()
    a, b = fast.run(), slow.run()
    assert a.rounds == b.rounds
    ta, tb = timeline_arrays(a), timeline_arrays(b)
    assert all(np.array_equal(ta[k], tb[k], equal_nan=True) for k in ta)
    # not a trivial schedule: some device was late, dropped, or did other than 10 steps
    assert any(o.status != "completed" or o.steps != 10 for o in a.timeline)


def test_online_sample_walks_only_what_it_needs_and_matches_the_plain_walk() -> None:
    rng = np.random.default_rng(0)
    for n_dev, n, p_on in ((10, 3, 0.5), (1000, 7, 0.2), (100_000, 100, 0.9),
                           (500, 600, 0.5), (50, 5, 0.0)):
        order = rng.permutation(n_dev)
        online = rng.random(n_dev) < p_on
        calls: list[int] = []

        def is_online(d: int, online: np.ndarray = online, calls: list[int] = calls) -> bool:
            calls.append(d)
            return bool(online[d])

        got = online_sample(order, n, is_online)
        want = [d for d in order.tolist() if online[d]][:n]
        assert got == want
        last = order.tolist().index(want[-1]) if len(want) == n else n_dev - 1
        assert calls == order[:last + 1].tolist()  # each device checked once, in order


@pytest.mark.parametrize("arch,shape,classes,options", [
    ("mlp", (1, 8, 8), 10, {"hidden": [16, 8]}),
    ("cnn4", (1, 28, 28), 10, {"channels": [8, 16, 32, 32]}),
    ("cnn4", (1, 28, 28), 10, {"channels": [8, 16, 16, 16], "norm": "bn"}),
    ("mcmahan_cnn", (1, 28, 28), 10, {}),
    ("resnet8", (3, 32, 32), 10, {}),
])
def test_cost_measure_on_cpu_counts_what_the_meta_pass_counts(
        arch: str, shape: tuple[int, ...], classes: int, options: dict) -> None:
    model = build_model(arch, shape, classes, options)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    for trial in range(4):
        counts = None if trial == 0 else {g.name: int(rng.integers(1, g.channels + 1))
                                          for g in model.groups}
        a, b = model.measure(counts), measure_on_cpu(model, counts)
        assert (a.macs, a.params, a.activations) == (b.macs, b.params, b.activations)
    assert model.training and model._counter is None
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_trace_cache_is_bounded_by_bytes_and_rebuilds_the_same_trace() -> None:
    big = GeneratedTraces.from_name("markov", {"mean_dwell_s": 60.0}, 100, 86400.0, seed=3)
    one = big.device(0).nbytes
    assert one < 8 * 5 * 86400 / 60  # ~8 bytes per value kept, not a boxed float each
    small = GeneratedTraces(big.generator, "markov", 100, 86400.0, 3, cache_bytes=3 * one)
    for d in range(20):
        small.device(d)
    assert 1 <= len(small._cache) <= 5
    assert small._cached_bytes <= 3 * one or len(small._cache) == 1
    again = small.device(0)  # evicted, made again from its own stream
    ref = big.device(0)
    for t in (0.0, 1234.5, 86399.0, 200000.0):
        assert again.finish_time(t, 300.0) == ref.finish_time(t, 300.0)
        assert again.online_at(t) == ref.online_at(t)
        assert again.next_offline(t) == ref.next_offline(t)


def test_online_cache_answers_like_the_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    import fleetsim.traces.source as source

    monkeypatch.setattr(source, "ONLINE_CACHE_BYTES", 20_000)  # a few dozen devices
    opts = {"mean_dwell_s": 600.0, "mean_online_s": 3600.0, "mean_offline_s": 1800.0}
    fast = GeneratedTraces.from_name("markov", opts, 500, 86400.0, seed=5)
    ref = GeneratedTraces.from_name("markov", opts, 500, 86400.0, seed=5)
    rng = np.random.default_rng(1)
    for _ in range(3000):
        d, t = int(rng.integers(500)), float(rng.uniform(0, 3 * 86400.0))
        assert fast.online_at(d, t) == ref.device(d).online_at(t)
    assert 1 < len(fast._online) < 500  # bounded, and evicting
    assert fast._online_bytes <= 20_000
