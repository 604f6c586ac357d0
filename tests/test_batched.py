"""Batched training (fleetsim.batched) agrees with sequential Trainer.train; training.device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fleetsim.batched import check_batchable, full_model_job, train_batched
from fleetsim.build import load_scenario, trainer_settings
from fleetsim.data import Partition
from fleetsim.errors import UserError
from fleetsim.training import Trainer, UpdateJob, resolve_device
from tests.conftest import TINY

TOL = 1e-5

MODELS = {
    "mlp": ["model.arch=mlp", "model.options={hidden: [12, 10]}"],
    "cnn4": ["model.arch=cnn4", "model.options={channels: [3, 4, 4, 5]}"],
    "mcmahan_cnn": ["model.arch=mcmahan_cnn", "model.options={channels: [3, 4], hidden: 8}"],
    "cnn4_bn": ["model.arch=cnn4", "model.options={channels: [3, 4, 4, 5], norm: bn}"],
    "resnet8": ["model.arch=resnet8", "model.options={width: 0.25}"],
}


def _trainer(arch: str, *extra: str) -> Trainer:
    sc = load_scenario(None, [*MODELS[arch], "training.batch_size=8",
                              "training.optimizer.lr=0.2", *extra], text=TINY)
    return Trainer(trainer_settings(sc))


def _job(device: int, steps: int = 3, round: int = 2, groups: int = 1,
         prox_mu: float = 0.0) -> UpdateJob:
    return UpdateJob(device=device, round=round, weight=10.0 + device,
                     vectors=((0.0,) * groups,), step_vector=(0,) * steps, prox_mu=prox_mu)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _compare(t: Trainer, jobs: list[UpdateJob]) -> None:
    state = t.initial_state()
    seq = [t.train(state, job) for job in jobs]
    bat = train_batched(t, state, jobs)
    assert len(bat) == len(seq) == len(jobs)
    for s, b, job in zip(seq, bat, jobs, strict=True):
        assert b.update.device == job.device and b.update.weight == job.weight
        assert b.update.steps == s.update.steps == job.steps
        assert b.batches == s.batches
        assert dict(b.update.masks) == dict(s.update.masks)  # every element trained
        assert all(v.device.type == "cpu" for v in b.update.state.values())
        assert _max_diff(dict(b.update.state), dict(s.update.state)) <= TOL
        assert b.loss_sum == pytest.approx(s.loss_sum, abs=TOL)
        # the comparison is not vacuous: training moved the weights
        assert _max_diff(dict(s.update.state), state) > 1e-3
    # and each device trained on its own data
    assert _max_diff(dict(seq[0].update.state), dict(seq[1].update.state)) > 1e-3


@pytest.mark.parametrize("arch", list(MODELS))
def test_batched_equals_sequential_plain_sgd(arch: str) -> None:
    t = _trainer(arch)
    groups = len(t.model.groups)
    _compare(t, [_job(d, groups=groups) for d in (0, 3, 5, 6)])


@pytest.mark.parametrize("arch", ["mlp", "cnn4"])
def test_batched_equals_sequential_momentum_weight_decay_prox(arch: str) -> None:
    t = _trainer(arch, "training.optimizer.momentum=0.9",
                 "training.optimizer.weight_decay=0.01")
    groups = len(t.model.groups)
    _compare(t, [_job(1, groups=groups, prox_mu=0.5), _job(2, groups=groups),
                 _job(4, groups=groups, prox_mu=0.1)])


def test_jobs_of_different_steps_and_batch_sizes_are_grouped() -> None:
    t = _trainer("mlp")
    # device 7 holds 5 samples only: its mini-batches have 5, the others' 8
    parts = [t.partition.of(d) for d in range(8)]
    parts[7] = parts[7][:5]
    sizes = np.cumsum([0] + [len(p) for p in parts])
    t.partition = Partition(np.concatenate(parts), sizes.astype(np.int64))
    jobs = [_job(0, steps=3, groups=2), _job(1, steps=4, groups=2),
            _job(7, steps=3, groups=2), _job(2, steps=3, groups=2, round=5)]
    _compare(t, jobs)


def test_local_epochs_jobs_with_a_shorter_last_batch_agree() -> None:
    t = _trainer("cnn4")
    n = [len(t.partition.of(d)) for d in range(4)]
    # 1.5 epochs: ceil(1.5 n) samples in mini-batches of 8, the last one shorter
    jobs = []
    for d in range(4):
        samples = -(-3 * n[d] // 2)
        steps = -(-samples // 8)
        jobs.append(UpdateJob(device=d, round=1, weight=1.0, vectors=((0.0,) * 4,),
                              step_vector=(0,) * steps, samples=samples))
    assert any(j.samples % 8 for j in jobs)  # a shorter last mini-batch is tested
    _compare(t, jobs)


def test_sub_networks_are_refused() -> None:
    t = _trainer("mlp")
    sub = UpdateJob(device=0, round=0, weight=1.0, vectors=((0.0, 0.0), (0.5, 0.0)),
                    step_vector=(0, 1, 0))
    assert full_model_job(_job(0, groups=2)) and not full_model_job(sub)
    with pytest.raises(UserError, match=r"training\.batched.*device 0 trains sub-networks"):
        train_batched(t, t.initial_state(), [_job(1, groups=2), sub])


# ---------------------------------------------------------------- batch norm


def _bn_trainer(arch: str, stats: str, *extra: str) -> Trainer:
    opts = {"cnn4_bn": "channels: [3, 4, 4, 5], norm: bn", "resnet8": "width: 0.25"}[arch]
    sc = load_scenario(None, [f"model.arch={MODELS[arch][0].split('=')[1]}",
                              f"model.options={{{opts}, bn_stats: {stats}}}",
                              "training.batch_size=8", "training.optimizer.lr=0.2", *extra],
                       text=TINY)
    return Trainer(trainer_settings(sc))


def _perturbed(t: Trainer) -> dict[str, torch.Tensor]:
    """The initial state with running statistics away from (0, 1) and a count of 3, so
    that a device's own statistics, momentum and count all show in the result."""
    state = t.initial_state()
    g = torch.Generator().manual_seed(5)
    for k, v in state.items():
        if k.endswith("running_mean"):
            state[k] = torch.randn(v.shape, generator=g) * 0.3
        elif k.endswith("running_var"):
            state[k] = 0.5 + torch.rand(v.shape, generator=g)
        elif k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(3)
    return state


def _compare_bn(t: Trainer, jobs: list[UpdateJob]) -> None:
    state = _perturbed(t)
    seq = [t.train(state, job) for job in jobs]
    bat = train_batched(t, state, jobs)
    running = [k for k in state if k.endswith(("running_mean", "running_var"))]
    for s, b in zip(seq, bat, strict=True):
        assert b.update.state.keys() == s.update.state.keys() == state.keys()
        for k in state:  # every tensor: weights, running statistics, counts
            assert b.update.state[k].dtype == s.update.state[k].dtype, k
            assert float((b.update.state[k].double() - s.update.state[k].double()
                          ).abs().max()) <= TOL, k
        assert b.loss_sum == pytest.approx(s.loss_sum, abs=TOL)
        if t.model.bn_stats == "running":  # the statistics moved, per device
            assert running and max(float((s.update.state[k] - state[k]).abs().max())
                                   for k in running) > 1e-3
            counts = [k for k in state if k.endswith("num_batches_tracked")]
            assert counts and all(int(s.update.state[k]) == 3 + s.update.steps
                                  for k in counts)
        else:  # batch statistics only: nothing tracked in training
            assert all(torch.equal(s.update.state[k], state[k]) for k in running)
    if t.model.bn_stats == "running":
        k = running[0]
        assert float((seq[0].update.state[k] - seq[1].update.state[k]).abs().max()) > 1e-4


@pytest.mark.parametrize("stats", ["running", "batch", "static"])
def test_batched_batch_norm_equals_sequential_cnn4(stats: str) -> None:
    t = _bn_trainer("cnn4_bn", stats)
    _compare_bn(t, [_job(d, groups=4) for d in (0, 3, 5, 6)])


def test_batched_batch_norm_equals_sequential_resnet8_momentum_prox() -> None:
    t = _bn_trainer("resnet8", "running", "training.optimizer.momentum=0.9",
                    "training.optimizer.weight_decay=0.01")
    groups = len(t.model.groups)
    _compare_bn(t, [_job(1, groups=groups, prox_mu=0.1), _job(2, groups=groups),
                    _job(4, groups=groups)])


def test_batched_batch_norm_cumulative_momentum() -> None:
    """momentum None (a cumulative average, 1 / num_batches_tracked): the count each
    device's statistics are averaged with starts from the global state's."""
    t = _bn_trainer("cnn4_bn", "running")
    for m in t.model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    _compare_bn(t, [_job(d, groups=4) for d in (1, 2)])


def test_a_batch_norm_called_directly_is_refused() -> None:
    t = _bn_trainer("cnn4_bn", "running")
    check_batchable(t, [_job(0, groups=4)])  # batch norm through DroppableNet.bn: accepted
    original = type(t.model).functional

    def odd(self, x):  # type: ignore[no-untyped-def]
        return original(self, x) + self.bns[0](torch.zeros(1, 3, 2, 2)).sum()

    t.model.functional = odd.__get__(t.model)  # type: ignore[method-assign]
    with pytest.raises(UserError, match="calls a batch-norm module directly"):
        train_batched(t, t.initial_state(), [_job(0, groups=4), _job(1, groups=4)])
    assert not t.model.bns[0]._forward_pre_hooks  # the guard is removed afterwards


def test_a_parameter_used_outside_conv_and_linear_is_refused() -> None:
    t = _trainer("mlp")
    original = type(t.model).functional

    def odd(self, x):  # type: ignore[no-untyped-def]
        return original(self, x) + self.p("head.bias")

    t.model.functional = odd.__get__(t.model)  # type: ignore[method-assign]
    with pytest.raises(UserError, match=r"outside DroppableNet\.conv"):
        train_batched(t, t.initial_state(), [_job(0, groups=2), _job(1, groups=2)])
    # the model is restored afterwards
    assert "linear" not in vars(t.model) and "p" not in vars(t.model)


# ---------------------------------------------------------------- training.device


def test_device_cpu_and_auto_without_gpu_train_identically(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    base = _trainer("mlp")
    auto = _trainer("mlp", "training.device=auto")
    cpu = _trainer("mlp", "training.device=cpu")
    assert base.settings.device == "cpu" and auto.settings.device == "auto"
    state = base.initial_state()
    job = _job(3, groups=2)
    ref = base.train(state, job)
    for t in (auto, cpu):
        assert t.device == torch.device("cpu")
        got = t.train(state, job)
        assert all(torch.equal(got.update.state[k], ref.update.state[k]) for k in state)
        assert got.loss_sum == ref.loss_sum
    assert all(v.device.type == "cpu" for v in ref.update.state.values())


def test_cuda_without_gpu_is_a_user_error(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    sc = load_scenario(None, ["training.device=cuda"], text=TINY)
    with pytest.raises(UserError, match=r"training\.device.*cuda.*Allowed: cpu, or auto"):
        Trainer(trainer_settings(sc))
    with pytest.raises(UserError, match=r"training\.device"):
        resolve_device("tpu")
    with pytest.raises(UserError, match=r"training\.device"):
        load_scenario(None, ["training.device=tpu"], text=TINY)


# ---------------------------------------------------------------- training.batched


def _rounds(tmp_path, name: str, *overrides: str) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    import csv
    from pathlib import Path

    from fleetsim.cli import main

    scenario = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.yaml"
    out = tmp_path / name
    args = ["run", str(scenario), "--out", str(out), "--quiet"]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    with open(out / "rounds.csv") as f:
        return list(csv.DictReader(f))


def test_batched_run_agrees_with_the_one_by_one_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    plain = _rounds(tmp_path, "plain")
    _rounds(tmp_path, "off", "training.batched=false")
    on = _rounds(tmp_path, "on", "training.batched=true")
    assert (tmp_path / "off" / "rounds.csv").read_bytes() == \
        (tmp_path / "plain" / "rounds.csv").read_bytes()  # false: the same bits
    assert len(on) == len(plain) == 4
    for a, b in zip(plain, on, strict=True):
        for k in a:
            try:
                x, y = float(a[k]), float(b[k])
            except ValueError:
                assert a[k] == b[k], k
                continue
            assert y == pytest.approx(x, rel=1e-4, abs=1e-5), k


def test_in_process_batched_keeps_job_order_and_trains_sub_networks_one_by_one(
        monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import fleetsim.batched
    from fleetsim.backends import BackendSettings, InProcess
    from fleetsim.build import backend_settings

    assert backend_settings(load_scenario(None, ["training.batched=true"], text=TINY)).batched
    assert not backend_settings(load_scenario(None, [], text=TINY)).batched
    calls: list[list[int]] = []
    real = fleetsim.batched.train_batched

    def spy(trainer, state, jobs):  # type: ignore[no-untyped-def]
        calls.append([j.device for j in jobs])
        return real(trainer, state, jobs)

    monkeypatch.setattr(fleetsim.batched, "train_batched", spy)
    t = _trainer("mlp")
    sub = UpdateJob(device=2, round=1, weight=1.0, vectors=((0.0, 0.0), (0.5, 0.0)),
                    step_vector=(1, 0, 1))
    jobs = [_job(0, groups=2), sub, _job(4, groups=2), _job(5, steps=2, groups=2)]
    state = t.initial_state()
    seq = [t.train(state, job) for job in jobs]
    got = list(InProcess(t.settings, BackendSettings(batched=True), trainer=t).train(state, jobs))
    assert [r.update.device for r in got] == [0, 2, 4, 5]
    assert calls == [[0, 4, 5]]  # the full-model jobs went through the batched path
    list(InProcess(t.settings, BackendSettings(), trainer=t).train(state, jobs))
    assert calls == [[0, 4, 5]]  # and only with batched on
    for s, b in zip(seq, got, strict=True):
        assert _max_diff(dict(b.update.state), dict(s.update.state)) <= TOL
    # the sub-network's update is Trainer.train's, bit for bit (masks included)
    assert all(torch.equal(got[1].update.state[k], seq[1].update.state[k]) for k in state)
    assert got[1].update.masks.keys() == seq[1].update.masks.keys()


def test_batched_needs_the_in_process_backend() -> None:
    with pytest.raises(UserError, match=r"training\.batched needs training\.backend"):
        load_scenario(None, ["training.batched=true", "training.backend=pool"], text=TINY)


def test_device_data_follows_a_replaced_dataset() -> None:
    from fleetsim.data import Dataset

    t = _trainer("mlp")
    d = t.data
    x, _, _, yt = t.device_data()
    assert x is d.x_train and yt is d.y_test  # on the CPU: the tensors themselves
    t.data = Dataset(d.name, d.x_train, d.y_train, d.x_train[:7], d.y_train[:7],
                     d.input_shape, d.num_classes)  # what the DSE does
    assert len(t.device_data()[3]) == 7
    acc, _ = t.evaluate(t.initial_state())
    assert acc * 7 == pytest.approx(round(acc * 7))  # evaluated on the 7 samples


def test_gpu_benchmark_smoke_runs_both_models() -> None:
    """benchmarks/gpu.py --smoke: the GPU benchmark's code runs (here on the CPU) for the
    McMahan CNN and ResNet-20, and its two paths agree."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
    done = subprocess.run([sys.executable, str(script), "--smoke"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"^\w+\s+(\w+)\s+2 devices .* max \|diff\| (\S+)$", done.stdout, re.M)
    assert [m for m, _ in rows] == ["mcmahan_cnn", "resnet20"], done.stdout
    assert all(float(d) <= TOL for _, d in rows)


def test_batched_running_statistics_match_plain_torch_by_hand() -> None:
    """An independent reference: after one step, device i's first batch norm's running
    statistics are (1 - m) * start + m * (mean, unbiased variance) of its own first
    convolution's outputs on its own mini-batch, computed here with plain PyTorch."""
    import torch.nn.functional as F

    from fleetsim.training import batch_indices

    t = _bn_trainer("cnn4_bn", "running")
    state = _perturbed(t)
    jobs = [_job(d, steps=1, groups=4) for d in (2, 5)]
    bat = train_batched(t, state, jobs)
    x_all = t.data.x_train
    for job, res in zip(jobs, bat, strict=True):
        (idx,) = batch_indices(t.partition, job.device, job.round, 1, t.batch, t.seed)
        h = F.conv2d(x_all[torch.from_numpy(idx)].double(),
                     state["convs.0.weight"].double(), state["convs.0.bias"].double(),
                     padding=1)
        mean = h.mean((0, 2, 3))
        n = h.numel() / h.shape[1]
        var = ((h - mean[None, :, None, None]) ** 2).sum((0, 2, 3)) / (n - 1)
        want_mean = 0.9 * state["bns.0.running_mean"].double() + 0.1 * mean
        want_var = 0.9 * state["bns.0.running_var"].double() + 0.1 * var
        got = res.update.state
        assert torch.allclose(got["bns.0.running_mean"].double(), want_mean, atol=1e-6)
        assert torch.allclose(got["bns.0.running_var"].double(), want_var, atol=1e-5)
        assert int(got["bns.0.num_batches_tracked"]) == 4
