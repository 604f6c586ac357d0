"""Asynchronous server mode (FedBuff, FedAsync): schedules by hand, equivalences, determinism.

One mini-batch is made to take exactly 1, 2 or 3 simulated seconds at full availability;
transfers are nearly instant (1e9 Mbit/s), so times are those integers up to ~1e-9.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fleetsim.build import build, load_scenario, trainer_settings
from fleetsim.engine import ASYNC_REPEAT_STRIDE
from fleetsim.nn import build_model
from fleetsim.rng import int_seed
from fleetsim.server.buffered import BufferedAggregator, staleness_weight
from fleetsim.server.selection import SELECTORS, Selector
from fleetsim.training import Trainer, UpdateJob, batch_indices
from fleetsim.updates import Update
from tests.test_engine_faults import one_step_macs

THREE = """
name: async3
seed: 5
data: {{dataset: digits, partition: {{name: iid}}}}
model: {{arch: mlp, options: {{hidden: [8]}}}}
fleet:
  devices: {n}
  assignment: blocks
  classes:
{classes}
  traces: {{generator: constant}}
training:
  mode: {mode}
  rounds: {rounds}
  clients_per_round: {k}
  deadline_s: null
  local_steps: 1
  batch_size: 16
  optimizer: {{lr: 0.1}}
eval: {{every_rounds: 1}}
selector: {{name: {selector}}}
server: {{mode: {server_mode}, concurrency: {conc}, buffer_size: {buf}}}
"""


def classes(speeds_s: list[float], step_macs: float) -> str:
    share = 1.0 / len(speeds_s)
    return "\n".join(
        f"    - {{name: c{i}, share: {share!r}, peak_macs_per_s: {step_macs / s!r}, "
        "uplink_mbps: 1.0e9, downlink_mbps: 1.0e9, latency_s: 0.0}"
        for i, s in enumerate(speeds_s))


class LowestIdle(Selector):
    """The n lowest-numbered devices that are idle and online (a schedule one can follow)."""

    def select(self, round: int, now_s: float, n: int, is_online: Callable[[int], bool],
               rng: np.random.Generator) -> list[int]:
        return [d for d in range(self.fleet.n_devices) if is_online(d)][:n]


@pytest.fixture(autouse=True)
def _lowest_idle():  # type: ignore[no-untyped-def]
    saved = dict(SELECTORS._items)
    SELECTORS.add("test-lowest-idle", LowestIdle)
    yield
    SELECTORS._items.clear()
    SELECTORS._items.update(saved)


@pytest.fixture(scope="module")
def step_macs() -> float:
    return one_step_macs()


def scenario(step_macs: float, speeds_s: list[float], *, mode: str = "full", rounds: int = 3,
             k: int = 2, server_mode: str = "async", conc: int = 2, buf: int = 2,
             selector: str = "test-lowest-idle", extra: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    text = THREE.format(n=len(speeds_s), classes=classes(speeds_s, step_macs), mode=mode,
                        rounds=rounds, k=k, selector=selector, server_mode=server_mode,
                        conc=conc, buf=buf)
    return load_scenario(None, list(extra), text=text)


def test_hand_computed_schedule_concurrency_2_buffer_2(step_macs: float) -> None:
    # devices 0, 1, 2 take 1, 2 and 3 s a job; the selector takes the lowest idle ids
    sc = scenario(step_macs, [1.0, 2.0, 3.0], mode="timing", rounds=3)
    log = build(sc).engine.run()
    jobs = sorted(log.timeline, key=lambda o: o.round)
    got = [(o.round, o.device, round(o.t_start, 6), round(o.t_end, 6), o.start_version,
            o.status) for o in jobs]
    assert got == [
        # job, device, start, end, start version, status
        (0, 0, 0.0, 1.0, 0, "completed"),   # t=1: buffer [j0]; device 0 restarts (j2)
        (1, 1, 0.0, 2.0, 0, "completed"),   # t=2: buffer [j0, j1] -> version 1
        (2, 0, 1.0, 2.0, 0, "completed"),   # just after: stale by 1; buffer [j2]
        (3, 1, 2.0, 4.0, 1, "completed"),   # started once version 1 existed
        (4, 0, 2.0, 3.0, 1, "completed"),   # t=3: buffer [j2, j4] -> version 2
        (5, 0, 3.0, 4.0, 2, "completed"),   # t=4: j3 (stale by 1), then j5 -> version 3
        (6, 1, 4.0, 4.0, 2, "not_needed"),  # started at j3's arrival; the run ended
    ]
    assert all(o.device != 2 for o in jobs)  # the slowest device is never the lowest idle
    # the rows: which updates each version aggregated, and their staleness
    rows = log.rounds
    assert [(r["completed"], r["staleness_max"], r["staleness_mean"]) for r in rows] == \
        [(2, 0, 0.0), (2, 1, 0.5), (2, 1, 0.5)]
    assert [round(r["t_end_s"], 6) for r in rows] == [2.0, 3.0, 4.0]
    assert rows[0]["selected"] == 3  # jobs 0, 1, 2 started before version 1


def test_same_instant_arrivals_are_handled_together_and_in_start_order(step_macs: float
                                                                      ) -> None:
    # both devices take 2 s: at t=2 both arrive; the buffer of 2 fills before any restart,
    # so the two replacements start from version 1 (no staleness at all)
    sc = scenario(step_macs, [2.0, 2.0], mode="timing", rounds=3)
    log = build(sc).engine.run()
    assert all(r["staleness_max"] == 0 for r in log.rounds)
    assert [o.start_version for o in sorted(log.timeline, key=lambda o: o.round)
            if o.status == "completed"] == [0, 0, 1, 1, 2, 2]


def test_max_staleness_drops_updates_untrained(step_macs: float) -> None:
    sc = scenario(step_macs, [1.0, 2.0, 3.0], mode="timing", rounds=3,
                  extra=("server.max_staleness=0",))
    log = build(sc).engine.run()
    stale = [o for o in log.timeline if o.status == "stale"]
    assert stale and all(o.job is None for o in stale)
    assert (stale[0].round, stale[0].device, stale[0].start_version) == (2, 0, 0)
    assert sum(r["stale"] for r in log.rounds) == len(stale)
    assert all(r["staleness_max"] == 0 for r in log.rounds)


def test_weights_applied_equal_the_fedbuff_formula_by_hand(step_macs: float) -> None:
    sc = scenario(step_macs, [1.0, 2.0, 3.0], rounds=2)
    built = build(sc)
    x0 = {k: v.clone() for k, v in built.engine.state.items()}  # type: ignore[union-attr]
    built.engine.run()
    t = Trainer(trainer_settings(sc))
    n = built.engine.n_samples
    zero = ((0.0,),) if len(t.model.groups) == 1 else ((0.0,) * len(t.model.groups),)

    def train(state, device: int, key: int):  # type: ignore[no-untyped-def]
        return t.train(state, UpdateJob(device, key, float(n[device]), zero, (0,))).update.state

    xj0, xj1 = train(x0, 0, 0), train(x0, 1, 0)
    w0, w1 = float(n[0]), float(n[1])
    fl = [k for k, v in x0.items() if v.is_floating_point()]
    x1 = {k: x0[k] + (w0 * (xj0[k] - x0[k]) + w1 * (xj1[k] - x0[k])) / (w0 + w1) for k in fl}
    # version 2: job 2 (device 0, from version 0, its second job from it: stale by 1) and
    # job 4 (device 0, from version 1, fresh), FedBuff's 1/sqrt(1 + s) on the stale one
    xj2 = train(x0, 0, 0 + 1 * ASYNC_REPEAT_STRIDE)
    xj4 = train(x1, 0, 1)
    s = 1.0 / np.sqrt(2.0)
    x2 = {k: x1[k] + (w0 * s * (xj2[k] - x0[k]) + w0 * (xj4[k] - x1[k])) / (2 * w0)
          for k in fl}
    for k in fl:
        torch.testing.assert_close(built.engine.state[k], x2[k], rtol=1e-6, atol=1e-7)  # type: ignore[index]


def test_staleness_functions() -> None:
    from fleetsim.config import StalenessConfig

    assert staleness_weight(StalenessConfig(name="constant"), 7) == 1.0
    assert staleness_weight(StalenessConfig(name="polynomial", a=0.5), 3) == 0.5
    assert staleness_weight(StalenessConfig(name="polynomial", a=1.0), 0) == 1.0
    h = StalenessConfig(name="hinge", a=0.5, b=2.0)
    assert [staleness_weight(h, s) for s in (0, 2, 4)] == [1.0, 1.0, 0.5]


def test_buffered_aggregator_by_hand() -> None:
    g = {"w": torch.tensor([1.0, 1.0, 1.0]), "bn.running_mean": torch.tensor([0.0]),
         "n": torch.tensor(3)}
    start = {"w": torch.tensor([0.0, 0.0, 0.0]), "bn.running_mean": torch.tensor([0.0]),
             "n": torch.tensor(0)}
    agg = BufferedAggregator(g, buffers={"bn.running_mean"})
    # update 0: weight 1, trained elements 0 and 1, moved them by +2 and +4 from its start
    assert agg.add(0, Update(0, 1.0, {"w": torch.tensor([2.0, 4.0, 9.0]),
                                      "bn.running_mean": torch.tensor([2.0]),
                                      "n": torch.tensor(0)},
                             {"w": torch.tensor([True, True, False])}, 1), start, 0.5)
    # update 1: weight 3, fresh (weight 1), all elements, +1 each
    assert agg.add(1, Update(1, 3.0, {"w": torch.tensor([1.0, 1.0, 1.0]),
                                      "bn.running_mean": torch.tensor([6.0]),
                                      "n": torch.tensor(0)}, {}, 1), start, 1.0)
    assert not agg.add(2, Update(2, 1.0, {"w": torch.tensor([float("nan")] * 3),
                                          "bn.running_mean": torch.tensor([0.0]),
                                          "n": torch.tensor(0)}, {}, 1), start, 1.0)
    out = agg.result()
    # element 0: 1 + (1*0.5*2 + 3*1*1) / 4 = 2.0; element 1: 1 + (0.5*4 + 3) / 4 = 2.25;
    # element 2: 1 + 3*1 / 3 = 2.0; the statistic: (1*2 + 3*6) / 4 = 5; ints unchanged
    assert out["w"].tolist() == [2.0, 2.25, 2.0]
    assert out["bn.running_mean"].tolist() == [5.0]
    assert int(out["n"]) == 3
    with pytest.raises(ValueError):
        agg.add(1, Update(1, 1.0, g, {}, 1), start, 1.0)


def test_fedbuff_with_buffer_equal_to_concurrency_is_synchronous_fedavg(step_macs: float
                                                                         ) -> None:
    speeds = [1.5] * 3
    sync = scenario(step_macs, speeds, server_mode="sync", k=3, selector="random", rounds=3)
    fedbuff = scenario(step_macs, speeds, conc=3, buf=3, rounds=3)
    a, b = build(sync), build(fedbuff)
    la, lb = a.engine.run(), b.engine.run()
    assert [r["t_end_s"] for r in la.rounds] == pytest.approx([r["t_end_s"] for r in lb.rounds],
                                                              rel=1e-12)
    assert [r["completed"] for r in lb.rounds] == [3, 3, 3]
    for k, v in a.engine.state.items():  # type: ignore[union-attr]
        torch.testing.assert_close(b.engine.state[k], v, rtol=0, atol=1e-6)  # type: ignore[index]
    assert [r["accuracy"] for r in la.rounds] == pytest.approx(
        [r["accuracy"] for r in lb.rounds], abs=2e-3)


def test_fedasync_with_one_device_is_centralised_sgd(step_macs: float) -> None:
    sc = scenario(step_macs, [1.0], conc=1, buf=1, rounds=3, k=1)
    built = build(sc)
    built.engine.run()
    trainer = built.backend.trainer  # type: ignore[union-attr]
    torch.manual_seed(int_seed(sc.seed, "init"))
    ref = build_model("mlp", trainer.data.input_shape, trainer.data.num_classes,
                      {"hidden": [8]})
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for r in range(3):
        for idx in batch_indices(trainer.partition, 0, r, 1, 16, sc.seed):
            tt = torch.from_numpy(idx)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(ref(trainer.data.x_train[tt]), trainer.data.y_train[tt]).backward()
            opt.step()
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(built.engine.state[k], v, rtol=0, atol=1e-6)  # type: ignore[index]


ASYNC_TINY = ["server.mode=async", "server.concurrency=4", "server.buffer_size=2",
              "training.rounds=4"]


def _files(tmp_path: Path, name: str, extra: list[str]) -> tuple[bytes, bytes]:
    from fleetsim.cli import main

    out = tmp_path / name
    assert main(["run", str(Path(__file__).parents[1] / "scenarios" / "tiny.yaml"), "--out",
                 str(out), "--quiet", *[a for o in [*ASYNC_TINY, *extra]
                                        for a in ("--set", o)]]) == 0
    import h5py

    with h5py.File(out / "run.h5") as f:
        tl = b"".join(f["timeline"][k][:].tobytes() for k in sorted(f["timeline"]))
    return (out / "rounds.csv").read_bytes(), tl


def test_async_same_files_in_process_and_in_the_pool(tmp_path: Path) -> None:
    a = _files(tmp_path, "inproc", [])
    b = _files(tmp_path, "pool", ["training.backend=pool", "training.workers=2"])
    assert a == b
    assert a == _files(tmp_path, "again", [])


def test_async_rounds_are_versions_in_the_results(tmp_path: Path) -> None:
    from fleetsim.results import read_rounds

    _files(tmp_path, "r", [])
    rows = read_rounds(tmp_path / "r" / "rounds.csv")
    assert list(rows["round"]) == [0, 1, 2, 3]
    assert (rows["completed"] == 2).all()
    assert (np.diff(rows["t_end_s"]) >= 0).all()


def test_server_mode_is_a_grid_axis_and_report_reads_both(tmp_path: Path) -> None:
    from fleetsim.cli import main

    tiny = Path(__file__).parents[1] / "scenarios" / "tiny.yaml"
    out = tmp_path / "modes"
    assert main(["compare", str(tiny), "--seeds", "0", "--out", str(out), "--quiet",
                 "--set", "server.mode=sync,async", "--set", "training.rounds=2",
                 "--set", "server.concurrency=4", "--set", "server.buffer_size=4"]) == 0
    runs = sorted(p.parent.parent.name for p in out.rglob("run.h5"))
    assert runs == ["server.mode=async", "server.mode=sync"]
    assert main(["report", str(out), "--target-accuracy", "0.2"]) == 0
    summary = (out / "summary.csv").read_text()
    assert "server.mode=async" in summary and "server.mode=sync" in summary


def test_server_learning_rate_scales_the_pseudo_gradient() -> None:
    # sync FedAvg with server sgd lr 0.5 moves the model half way to the aggregate
    tiny = Path(__file__).parents[1] / "scenarios" / "tiny.yaml"
    base = ["training.rounds=1"]
    full = build(load_scenario(tiny, base))
    x0 = {k: v.clone() for k, v in full.engine.state.items()}  # type: ignore[union-attr]
    full.engine.run()
    half = build(load_scenario(tiny, [*base, "server.optimizer.lr=0.5"]))
    half.engine.run()
    for k, v in x0.items():
        if v.is_floating_point():
            want = v + 0.5 * (full.engine.state[k] - v)  # type: ignore[index]
            torch.testing.assert_close(half.engine.state[k], want, rtol=1e-6, atol=1e-7)  # type: ignore[index]


def test_async_batch_gives_the_same_files_with_any_jobs(tmp_path: Path) -> None:
    from fleetsim.cli import main

    tiny = Path(__file__).parents[1] / "scenarios" / "tiny.yaml"
    sets = [a for o in (*ASYNC_TINY[:-1], "training.rounds=2") for a in ("--set", o)]
    for jobs, name in ((1, "j1"), (2, "j2")):
        assert main(["compare", str(tiny), "--seeds", "0-1", "--out", str(tmp_path / name),
                     "--quiet", "--jobs", str(jobs), *sets]) == 0
    one = sorted((p.relative_to(tmp_path / "j1"), p.read_bytes())
                 for p in (tmp_path / "j1").rglob("rounds.csv"))
    two = sorted((p.relative_to(tmp_path / "j2"), p.read_bytes())
                 for p in (tmp_path / "j2").rglob("rounds.csv"))
    assert len(one) == 2 and one == two


@pytest.mark.parametrize("selector", ["random", "oort"])
def test_selectors_draw_only_idle_devices(selector: str) -> None:
    tiny = Path(__file__).parents[1] / "scenarios" / "tiny.yaml"
    sc = load_scenario(tiny, [*ASYNC_TINY, "training.mode=timing", "training.rounds=20",
                              f"selector.name={selector}"])
    log = build(sc).engine.run()
    by_device: dict[int, list[tuple[float, float]]] = {}
    for o in log.timeline:
        by_device.setdefault(o.device, []).append((o.t_start, o.t_end))
    assert len(log.timeline) > 40 and len(by_device) > 4
    for spans in by_device.values():
        spans.sort()
        # a device's next job starts no earlier than its previous one ended
        assert all(b[0] >= a[1] for a, b in itertools.pairwise(spans))


SLOW_DOWNLOAD = ("fleet.classes=[{name: fast, share: 0.5, peak_macs_per_s: 2.0e5}, "
                 "{name: slow, share: 0.5, peak_macs_per_s: 2.0e4, uplink_mbps: 2, "
                 "downlink_mbps: 0.0001}]")


@pytest.mark.parametrize("extra", [
    ("server.mode=async", "server.concurrency=4", "server.buffer_size=2", "training.rounds=2"),
    ("training.clients_per_round=1", "policy.options.stragglers=overcommit",
     "policy.options.overcommit=4", "training.rounds=3"),
])
def test_a_close_while_a_device_still_downloads_cuts_back_its_download(extra: tuple[str, ...]
                                                                       ) -> None:
    # review finding: the work record began after the download, so closing the round (or
    # ending the async run) during a device's download crashed in _cut_back
    tiny = Path(__file__).parents[1] / "scenarios" / "tiny.yaml"
    sc = load_scenario(tiny, ["training.mode=timing", SLOW_DOWNLOAD, *extra])
    log = build(sc).engine.run()
    cut = [o for o in log.timeline if o.status == "not_needed" and o.steps == 0]
    assert cut  # some device was stopped during its (very slow) download
    assert all(o.bytes_down < 1_000_000 and o.macs == 0.0 for o in cut)


def test_async_writes_exactly_training_rounds_aggregations() -> None:
    # review finding: arrivals at the instant of the last aggregation aggregated again
    tiny = Path(__file__).parents[1] / "scenarios" / "tiny.yaml"
    sc = load_scenario(tiny, [
        "training.mode=timing", "server.mode=async", "server.concurrency=4",
        "server.buffer_size=2", "training.rounds=1",
        "fleet.classes=[{name: a, share: 1.0, peak_macs_per_s: 2.0e5}]",
        "fleet.traces={generator: constant, options: {mean_online_s: 1.0e9}}"])
    log = build(sc).engine.run()
    assert len(log.rounds) == 1
    assert sum(o.status == "completed" for o in log.timeline) == 2
