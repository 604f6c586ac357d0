"""The update pipeline in whole runs: sync and async, sub-networks, bytes, attackers,
epsilon, and nothing changed when nothing is configured."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fleetsim.build import build, load_scenario, run_scenario, trainer_settings
from fleetsim.build_pipeline import update_pipeline
from fleetsim.pipeline import UpdatePipeline
from fleetsim.results import timeline_arrays
from fleetsim.server.aggregation import Aggregator
from fleetsim.server.buffered import BufferedAggregator
from fleetsim.server.privacy import epsilon
from fleetsim.training import Trainer, UpdateJob
from fleetsim.transforms import topk_count
from tests.conftest import TINY

ASYNC = ["server.mode=async", "server.concurrency=4", "server.buffer_size=4"]


def scenario(*sets: str, text: str = TINY):  # type: ignore[no-untyped-def]
    return load_scenario(None, list(sets), text=text)


def test_nothing_configured_hands_out_the_aggregators_of_before() -> None:
    sc = scenario()
    assert update_pipeline(sc, np.zeros(8, int)) is None
    pipe = UpdatePipeline()  # the engine's default
    g = {"w": torch.zeros(2)}
    assert type(pipe.aggregator("fedavg", g, (), 0)) is Aggregator
    assert type(pipe.buffered(g, ())) is BufferedAggregator
    assert pipe.upload_bytes(12345) == 12345
    assert pipe.figures() == {}


def test_explicit_mean_is_the_default_bit_for_bit() -> None:
    a = run_scenario(scenario())
    b = run_scenario(scenario("server.aggregator.name=mean"))
    assert a.rounds == b.rounds
    assert timeline_arrays(a).keys() == timeline_arrays(b).keys()


@pytest.mark.parametrize("sets", [
    ["server.aggregator.name=median"],
    ["server.aggregator.name=trimmed_mean", "server.aggregator.options.trim=0.25"],
    ["server.aggregator.name=multi_krum", "server.aggregator.options.f=0",
     "server.aggregator.options.m=2"],
    ["server.aggregator.name=norm_bound", "server.aggregator.options.max_norm=1.0"],
])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_robust_rules_run_with_sub_networks_in_both_modes(sets: list[str], mode: str) -> None:
    extra = ASYNC if mode == "async" else []
    sc = scenario("policy.name=heterofl", *sets, *extra)
    log = run_scenario(sc)
    done = [r for r in log.rounds if r["completed"]]
    assert done and all(math.isfinite(r["accuracy"]) for r in log.rounds)
    if "multi_krum" in sets[0]:
        assert all(r["aggregation_skipped"] in (0, 1) for r in log.rounds)


def test_median_changes_the_model_and_keeps_the_schedule() -> None:
    a = run_scenario(scenario())
    b = run_scenario(scenario("server.aggregator.name=median"))
    assert [r["completed"] for r in a.rounds] == [r["completed"] for r in b.rounds]
    assert [r["accuracy"] for r in a.rounds] != [r["accuracy"] for r in b.rounds]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_topk_uploads_the_bytes_of_its_wire_format(mode: str) -> None:
    extra = ASYNC if mode == "async" else []
    sc = scenario("training.update_transforms=[{name: topk, options: {ratio: 0.05}}]", *extra)
    built = build(sc)
    n = built.engine.costs.params()
    k = topk_count(0.05, n)
    # the parameters the update transforms are those the cost model counts
    assert n == sum(p.numel() for p in built.backend.trainer.params.values())
    log = built.engine.run()
    built.backend.close()
    tl = timeline_arrays(log)
    done = tl["status"] == 0
    assert done.any()
    assert set(tl["bytes_up"][done]) == {k * 4 + k * 4}
    assert (tl["bytes_down"][done] == n * 4).all()


def test_compression_lets_more_devices_arrive_on_a_slow_uplink() -> None:
    slow = ["training.mode=timing", "fleet.classes.1.uplink_mbps=0.001",
            "fleet.classes.0.uplink_mbps=0.002", "training.rounds=10"]
    plain = run_scenario(scenario(*slow))
    topk = run_scenario(scenario(*slow, "training.update_transforms=[{name: topk, options: "
                                        "{ratio: 0.01}}]"))
    arrived = [sum(r["completed"] for r in log.rounds) for log in (plain, topk)]
    assert arrived[1] > arrived[0]


def test_attackers_are_marked_in_the_timeline() -> None:
    sc = scenario("fleet.classes.1.attack={name: sign_flip, options: {scale: 5}}")
    built = build(sc)
    log = built.engine.run()
    built.backend.close()
    tl = timeline_arrays(log)
    cls = np.asarray(built.engine.fleet.class_of)
    assert (tl["attacker"] == (cls[tl["device"]] == 1)).all()
    assert tl["attacker"].any() and not tl["attacker"].all()
    assert "attacker" not in timeline_arrays(run_scenario(scenario()))


def test_sign_flip_and_gaussian_attacks_send_what_they_say() -> None:
    from fleetsim.attacks import Gaussian, SignFlip
    start = {"w": torch.tensor([1.0, 1.0, 1.0, 1.0])}
    x = torch.tensor([2.0, 0.0, 1.0, 1.5])
    pipe = UpdatePipeline(attacks=[None, SignFlip(SignFlip.Options(scale=5))],
                          class_of=np.array([0, 1]))
    from fleetsim.updates import Update
    honest = pipe.process(Update(0, 1.0, {"w": x}, {}, 1), start, ["w"], 0)
    assert torch.equal(honest.state["w"], x)
    bad = pipe.process(Update(1, 1.0, {"w": x}, {}, 1), start, ["w"], 0)
    assert bad.state["w"].tolist() == [1 - 5 * 1.0, 1 + 5 * 1.0, 1.0, 1 - 5 * 0.5]
    pipe = UpdatePipeline(attacks=[Gaussian(Gaussian.Options(std=3.0))],
                          class_of=np.array([0]))
    n = 100_000
    mask = torch.arange(n) % 2 == 0
    u = Update(0, 1.0, {"w": torch.zeros(n)}, {"w": mask}, 1)
    sent = pipe.process(u, {"w": torch.zeros(n)}, ["w"], 0).state["w"]
    assert abs(float(sent[mask].std()) / 3.0 - 1) < 0.02
    assert (sent[~mask] == 0).all()  # what it did not train stays unchanged


def test_label_flip_trains_on_flipped_labels() -> None:
    sc = scenario()
    settings = trainer_settings(sc)
    flipped = Trainer(type(settings)(**{**settings.__dict__, "label_flip": frozenset({2})}))
    honest = Trainer(settings)
    by_hand = Trainer(settings)
    c = by_hand.data.num_classes
    by_hand.data.y_train[:] = c - 1 - by_hand.data.y_train  # the dataset's labels flipped
    by_hand._on_device = None
    g = honest.initial_state()
    job = UpdateJob(2, 0, 1.0, ((),), (0, 0, 0))
    a = flipped.train(g, job).update.state
    b = by_hand.train(g, job).update.state
    h = honest.train(g, job).update.state
    for k in a:
        assert torch.equal(a[k], b[k])
    assert any(not torch.equal(a[k], h[k]) for k in a)
    other = UpdateJob(3, 0, 1.0, ((),), (0, 0, 0))  # device 3 is honest
    for k in a:
        assert torch.equal(flipped.train(g, other).update.state[k],
                           honest.train(g, other).update.state[k])


def test_dp_noise_reports_the_accountants_epsilon() -> None:
    sc = scenario("training.update_transforms=[{name: clip, options: {max_norm: 1.0}}]",
                  "server.noise={name: gaussian_noise, options: {noise_multiplier: 1.1, "
                  "delta: 1.0e-5}}", "training.rounds=4")
    log = run_scenario(sc)
    steps = 0
    for r in log.rounds:
        steps += r["completed"] > 0
        assert r["epsilon"] == pytest.approx(epsilon(1.1, 4 / 8, steps, 1e-5), rel=1e-12)
        assert r["noise_std"] > 0 or r["completed"] == 0
    assert log.rounds[-1]["epsilon"] > log.rounds[0]["epsilon"] > 0


def test_async_topk_and_krum_run() -> None:
    sc = scenario(*ASYNC, "server.buffer_size=5", "server.concurrency=6",
                  "server.aggregator={name: krum, options: {f: 1}}",
                  "training.update_transforms=[{name: clip, options: {max_norm: 5}}, "
                  "{name: topk, options: {ratio: 0.1}}]",
                  "fleet.classes.1.attack={name: gaussian, options: {std: 10}}")
    log = run_scenario(sc)
    assert all(math.isfinite(r["accuracy"]) for r in log.rounds)
    assert sum(r["completed"] for r in log.rounds) > 0


def test_epsilon_counts_only_rounds_that_aggregated() -> None:
    from fleetsim.server.privacy import GaussianNoise
    from fleetsim.updates import Update
    noise = GaussianNoise(GaussianNoise.Options(noise_multiplier=1.3, delta=1e-5))
    pipe = UpdatePipeline(noise=noise, clip_norm=1.0, sample_rate=0.25)
    g = {"w": torch.zeros(3)}
    assert pipe.figures()["epsilon"] == 0.0  # a round where nobody arrived
    agg = pipe.aggregator("fedavg", g, (), 1)
    agg.add(Update(0, 1.0, {"w": torch.ones(3)}, {}, 1))
    agg.result()
    assert pipe.figures()["epsilon"] == epsilon(1.3, 0.25, 1, 1e-5)
    agg = pipe.aggregator("fedavg", g, (), 2)  # every update rejected: nothing released
    assert not agg.add(Update(0, 1.0, {"w": torch.full((3,), math.nan)}, {}, 1))
    agg.result()
    figs = pipe.figures()
    assert figs["epsilon"] == epsilon(1.3, 0.25, 1, 1e-5) and figs["noise_std"] == 0.0
    agg = pipe.aggregator("fedavg", g, (), 3)
    agg.add(Update(0, 1.0, {"w": torch.ones(3)}, {}, 1))
    agg.result()
    assert pipe.figures()["epsilon"] == epsilon(1.3, 0.25, 2, 1e-5) > epsilon(1.3, 0.25, 1, 1e-5)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_residuals_and_streams_give_the_same_bits_on_the_worker_pool(mode: str) -> None:
    # top-k's residual, QSGD's and the Gaussian attack's streams live in the main process
    # and are applied in arrival order, so a pool of workers gives the in-process bits
    sets = ["training.rounds=4", "training.update_transforms=[{name: topk, options: "
            "{ratio: 0.2}}, {name: qsgd, options: {levels: 4}}]",
            "fleet.classes.1.attack={name: gaussian, options: {std: 0.01}}",
            "server.aggregator.name=median", *(ASYNC if mode == "async" else [])]
    local = run_scenario(scenario(*sets))
    pool = run_scenario(scenario(*sets, "training.backend=pool", "training.workers=2"))
    assert local.rounds == pool.rounds
    a, b = timeline_arrays(local), timeline_arrays(pool)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_attacks_clip_and_rules_with_sub_networks(mode: str) -> None:
    sets = ["policy.name=heterofl", "server.aggregator.name=median",
            "training.update_transforms=[{name: clip, options: {max_norm: 2.0}}]",
            "fleet.classes.1.attack={name: sign_flip, options: {scale: 5}}",
            *(ASYNC if mode == "async" else [])]
    log = run_scenario(scenario(*sets))
    assert sum(r["completed"] for r in log.rounds) > 0
    assert all(math.isfinite(r["accuracy"]) for r in log.rounds)
    assert timeline_arrays(log)["attacker"].any()


def test_dp_noise_with_sub_networks() -> None:
    log = run_scenario(scenario(
        "policy.name=heterofl",
        "training.update_transforms=[{name: clip, options: {max_norm: 1.0}}]",
        "server.noise={name: gaussian_noise, options: {noise_multiplier: 1.0}}"))
    assert all(r["noise_std"] > 0 for r in log.rounds if r["completed"])
    assert log.rounds[-1]["epsilon"] > 0
