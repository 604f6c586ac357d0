"""training.local_epochs: each device passes E times over its own data per round."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fleetsim.build import build, load_scenario
from fleetsim.errors import UserError
from fleetsim.nn import build_model
from fleetsim.rng import int_seed
from fleetsim.training import batch_indices
from tests.test_engine import ONE_DEVICE

TWO_DEVICES = """
name: two
seed: 1
data: {dataset: digits, partition: {name: dirichlet, options: {alpha: 0.5}}}
model: {arch: mlp, options: {hidden: [8]}}
fleet:
  devices: 2
  classes:
    - {name: only, share: 1.0, peak_macs_per_s: 1.0e9, uplink_mbps: 1.0e6,
       downlink_mbps: 1.0e6, latency_s: 0.0}
  traces: {generator: constant}
training:
  rounds: 2
  clients_per_round: 2
  deadline_s: null
  local_epochs: EPOCHS
  batch_size: 16
eval: {every_rounds: 2}
"""


def test_local_epochs_and_local_steps_exclude_each_other() -> None:
    text = TWO_DEVICES.replace("EPOCHS", "1")
    assert load_scenario(None, text=text).training.local_epochs == 1
    with pytest.raises(UserError, match="local_steps or local_epochs"):
        load_scenario(None, ["training.local_steps=5"], text=text)
    with pytest.raises(UserError, match="local_epochs"):
        load_scenario(None, ["training.local_epochs=0"], text=text)
    # local_steps' default alone is no conflict, and without local_epochs nothing changes
    plain = load_scenario(None, text=ONE_DEVICE)
    assert plain.training.local_epochs is None and plain.training.local_steps == 5


@pytest.mark.parametrize("epochs", [1.0, 1.5, 0.3])
def test_each_device_does_its_own_epochs_mini_batches(epochs: float) -> None:
    sc = load_scenario(None, ["training.mode=timing"],
                       text=TWO_DEVICES.replace("EPOCHS", str(epochs)))
    built = build(sc)
    eng = built.engine
    n = [int(x) for x in eng.n_samples]
    assert n[0] != n[1] and min(n) > 16  # two different sample counts
    log = eng.run()
    assert len(log.timeline) == 4
    b = 16
    for o in log.timeline:
        nd = n[o.device]
        steps = math.ceil(epochs * nd / b)
        assert o.status == "completed"
        assert o.steps == steps
        # the last mini-batch holds what is left of ceil(E n) samples, and is timed so
        last_b = math.ceil(epochs * nd) - (steps - 1) * b
        assert 1 <= last_b <= b
        macs = (steps - 1) * eng.costs.step_macs(None, b) + eng.costs.step_macs(None, last_b)
        path = eng.fleet.path(o.device)
        nbytes = eng.costs.model_bytes()
        expect = path.download_s(nbytes) + macs / 1.0e9 + path.upload_s(nbytes)
        assert o.t_end - o.t_start == pytest.approx(expect, rel=1e-9)


def test_one_epoch_covers_every_sample_exactly_once() -> None:
    sc = load_scenario(None, text=TWO_DEVICES.replace("EPOCHS", "1"))
    built = build(sc)
    part = built.backend.trainer.partition  # type: ignore[union-attr]
    checked = 0
    for d in range(2):
        own = part.of(d)
        n = len(own)
        steps = math.ceil(n / 16)
        for r in range(3):
            batches = batch_indices(part, d, r, steps, 16, sc.seed, samples=n)
            assert len(batches) == steps
            assert all(len(x) == 16 for x in batches[:-1])
            got = np.sort(np.concatenate(batches))
            np.testing.assert_array_equal(got, np.sort(own))
            checked += 1
        assert n % 16 != 0  # the last mini-batch is a short one for these devices
    assert checked == 6


def test_local_epochs_training_equals_centralised_sgd_over_one_epoch() -> None:
    text = ONE_DEVICE.replace("  local_steps: 5\n", "  local_epochs: 1\n")
    text = text.replace("rounds: 3", "rounds: 2")
    sc = load_scenario(None, text=text)
    built = build(sc)
    log = built.engine.run()
    trainer = built.backend.trainer  # type: ignore[union-attr]
    n = len(trainer.partition.of(0))
    assert n % 16 != 0
    assert [o.steps for o in log.timeline] == [math.ceil(n / 16)] * 2

    def reference(samples: int | None) -> dict[str, torch.Tensor]:
        torch.manual_seed(int_seed(sc.seed, "init"))
        ref = build_model("mlp", trainer.data.input_shape, trainer.data.num_classes,
                          {"hidden": [16]})
        opt = torch.optim.SGD(ref.parameters(), lr=0.1)
        for r in range(2):
            for idx in batch_indices(trainer.partition, 0, r, math.ceil(n / 16), 16, sc.seed,
                                     samples=samples):
                t = torch.from_numpy(idx)
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(ref(trainer.data.x_train[t]), trainer.data.y_train[t]
                                ).backward()
                opt.step()
        return ref.state_dict()

    state = built.engine.state
    assert state is not None
    for k, v in reference(n).items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=1e-6)
    # and the short last mini-batch matters: full batches would give another model
    full = reference(None)
    assert any(not torch.allclose(state[k], v, atol=1e-6) for k, v in full.items())


def test_steps_range_of_fednova_still_wins_over_epochs() -> None:
    sc = load_scenario(None, ["training.mode=timing", "policy.name=fednova",
                              "policy.options={steps_range: [3, 3]}"],
                       text=TWO_DEVICES.replace("EPOCHS", "2"))
    log = build(sc).engine.run()
    assert log.timeline and all(o.steps == 3 for o in log.timeline)


def test_epoch_counts_ignore_float_error() -> None:
    from fleetsim.training import epoch_samples, epoch_steps

    assert 1.1 * 50 > 55  # 55.00000000000001
    assert epoch_samples(1.1, 50) == 55 and epoch_steps(1.1, 50, 5) == 11
    assert epoch_steps(1.0, 10, 4) == 3 and epoch_samples(2.5, 10) == 25
    assert epoch_steps(1.0, 5, 16) == 1  # b = min(batch, n): one mini-batch of all 5


def test_distreal_policies_stop_after_the_devices_own_steps(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fleetsim.policies import STOP, Assignment, StepObservation
    from fleetsim.policies.distreal import Distreal, DistrealStatic
    from tests.policies.test_distreal import COSTS, ctx, front_file

    p = str(front_file(tmp_path))
    c = ctx(local_epochs=1.0, deadline_s=1e9)

    def at(step: int, steps: int) -> StepObservation:
        return StepObservation(0, 0, 0, step, 0.0, 1.0, 1e9, 0.1, 1e9, 16,
                               Assignment(steps=steps, samples=steps * 16), COSTS,
                               np.random.default_rng(0))

    for pol in (Distreal(Distreal.Options(front=p), c),
                DistrealStatic(DistrealStatic.Options(front=p), c)):
        assert pol.decide(at(3, 4)) != STOP  # ctx.local_steps (10) is not what counts
        assert pol.decide(at(4, 4)) == STOP
        assert pol.decide(at(12, 13)) != STOP


def test_distreal_static_fits_the_devices_own_step_count(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fleetsim.policies import Assignment, StepObservation
    from fleetsim.policies.distreal import DistrealStatic
    from tests.policies.test_distreal import COSTS, ctx, front_file

    p = str(front_file(tmp_path))
    full = COSTS.step_macs((0.0,) * 4, 16)
    # class 0 (1e9 MAC/s at availability 0.5): 10 full steps take 10 * full / 5e8 s
    deadline = 10 * full / 5e8
    pol = DistrealStatic(DistrealStatic.Options(front=p), ctx(local_epochs=1.0,
                                                             deadline_s=deadline))

    def vec(steps: int) -> tuple[float, ...] | None:
        return pol.decide(StepObservation(0, 0, 0, 0, 0.0, 1.0, 1e9, 0.1, 1e9, 16,
                                          Assignment(steps=steps), COSTS,
                                          np.random.default_rng(0))).vector

    assert vec(10) == (0.0,) * 4  # 10 full steps just fit
    v = vec(20)  # twice the work: a cheaper vector
    assert v is not None and COSTS.step_macs(v, 16) * 20 <= deadline * 5e8
    assert COSTS.step_macs(v, 16) < full


def test_batch_indices_past_the_epoch_go_on_with_full_batches() -> None:
    """work: fill trains past the epoch: the epoch's last mini-batch stays short and the
    ones after it are full, taking the next entries of the device's sample stream."""
    sc = load_scenario(None, text=TWO_DEVICES.replace("EPOCHS", "1"))
    part = build(sc).backend.trainer.partition  # type: ignore[union-attr]
    own = part.of(0)
    n, b = len(own), 16
    planned, short = math.ceil(n / b), n - (math.ceil(n / b) - 1) * b
    assert 0 < short < b
    got = batch_indices(part, 0, 1, planned + 3, b, sc.seed, samples=n)
    assert [len(x) for x in got] == [b] * (planned - 1) + [short] + [b] * 3
    # the same entries, in the same order, as one run of the stream (no gap, no repeat)
    stream_order = np.concatenate(batch_indices(part, 0, 1, planned + 4, b, sc.seed))
    np.testing.assert_array_equal(np.concatenate(got), stream_order[:n + 3 * b])
    # stopping before the epoch's end never reaches the short one
    early = batch_indices(part, 0, 1, planned - 1, b, sc.seed, samples=n)
    assert [len(x) for x in early] == [b] * (planned - 1)


def test_work_fill_past_the_epoch_trains_the_mini_batches_it_was_timed_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every completed update's MACs (what its time was computed from) equal the MACs of
    the mini-batches the trainer really cut for it."""
    from fleetsim.training import Trainer

    text = TWO_DEVICES.replace("EPOCHS", "1").replace("deadline_s: null", "deadline_s: 0.002")
    sc = load_scenario(None, ["policy.name=uniform-adaptive", "policy.options.work=fill",
                              "policy.options.useful_only=false",
                              "policy.options.rates=[0.0]"], text=text)
    built = build(sc)
    trained: dict[tuple[int, int], int] = {}
    orig = Trainer.train

    def spy(self: Trainer, state, job):  # type: ignore[no-untyped-def]
        sizes = [len(x) for x in batch_indices(self.partition, job.device, job.round,
                                               job.steps, self.batch, self.seed, job.samples)]
        trained[(job.round, job.device)] = sum(built.engine.costs.step_macs(None, s)
                                               for s in sizes)
        return orig(self, state, job)

    monkeypatch.setattr(Trainer, "train", spy)
    log = built.engine.run()
    n = [int(x) for x in built.engine.n_samples]
    past = 0
    for o in log.timeline:
        assert o.status == "completed"
        assert trained[(o.round, o.device)] == pytest.approx(o.macs, rel=1e-12)
        past += o.steps > math.ceil(n[o.device] / 16)
    assert past >= 2  # the deadline let devices train past their epoch
