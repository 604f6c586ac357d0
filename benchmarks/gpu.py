"""Sequential against batched training of one FedAvg round, on the GPU (issues 17, 27).

A FedAvg round trains K devices' updates of the same full model. The sequential path
(:meth:`fleetsim.training.Trainer.train`, one device after another) leaves a GPU mostly
idle on small models; :func:`fleetsim.batched.train_batched` runs step j of all K devices
as one batched step (batch norm with per-device statistics). This times both for 10 and 50
devices a round of

- the McMahan CNN (``mcmahan_cnn``, MNIST 5k, 28x28x1) and
- ResNet-20 (``resnet20``, batch norm with running statistics, CIFAR-10 32x32x3: your
  copy with ``--cifar-root DIR``, else random images written in CIFAR-10's file format to
  a temporary folder -- the times do not depend on the pixels),

each device training ``--steps`` mini-batches of ``--batch``, checks that both paths give
the same updates (max abs difference of every parameter and running statistic), and prints
the times and the ratio (target: batched >= 4x sequential at 50 devices).

Without a GPU it says that the GPU figures cannot be measured here, runs the same
comparison on the CPU at a small size (``--cpu-devices`` devices, ``--cpu-steps`` steps)
and prints that ratio; it exits 0 either way. ``--smoke`` runs every model at a tiny size
(2 devices, 1 step of 4, one repeat) on whatever device there is: a check that the script
runs, not a measurement.

Usage: ``python benchmarks/gpu.py [--devices 10,50] [--steps 10] [--batch 32] [--repeats 3]
[--models mcmahan_cnn,resnet20] [--cifar-root DIR] [--smoke]``
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from fleetsim.batched import train_batched
from fleetsim.build import load_scenario, trainer_settings
from fleetsim.training import Trainer, UpdateJob

SCENARIO = """
name: gpu-bench
seed: 0
data:
  dataset: mnist5k
  partition: {name: iid}
model:
  arch: mcmahan_cnn
fleet:
  devices: 100
  classes:
    - {name: phone, share: 1.0, peak_macs_per_s: 2.0e9}
  traces:
    generator: markov
    options: {levels: [1.0], mean_dwell_s: 600}
training:
  rounds: 1
  clients_per_round: 10
  local_steps: 10
  batch_size: 32
policy:
  name: fedavg
"""

#: per model: scenario overrides (the dataset, the architecture)
MODELS = {
    "mcmahan_cnn": ["data.dataset=mnist5k", "model.arch=mcmahan_cnn"],
    "resnet20": ["data.dataset=cifar10", "model.arch=resnet20"],
}


def fake_cifar10(root: Path, per_batch: int = 1000) -> Path:
    """Random images in CIFAR-10's python pickle format (5 train batches, 1 test batch)."""
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        with (root / name).open("wb") as f:
            pickle.dump({b"data": data, b"labels": rng.integers(0, 10, per_batch).tolist()}, f)
    return root


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def compare(model: str, device: str, n: int, steps: int, batch: int, repeats: int,
            cifar_root: Path) -> tuple[float, float, float]:
    """Median seconds of the sequential and the batched round, and their max difference."""
    sc = load_scenario(None, [*MODELS[model], f"data.options={{root: {cifar_root}}}"
                              if model == "resnet20" else "data.options={}",
                              f"training.device={device}", f"training.batch_size={batch}",
                              f"fleet.devices={max(n, 2)}", f"training.clients_per_round={n}"],
                       text=SCENARIO)
    t = Trainer(trainer_settings(sc))
    state = t.initial_state()
    groups = len(t.model.groups)
    jobs = [UpdateJob(device=d, round=1, weight=1.0, vectors=((0.0,) * groups,),
                      step_vector=(0,) * steps) for d in range(n)]
    seq_times, bat_times = [], []
    seq = bat = None
    for r in range(repeats + 1):  # the first visit warms up (kernels, allocator)
        _sync(t.device)
        t0 = time.perf_counter()
        seq = [t.train(state, job) for job in jobs]
        _sync(t.device)
        t1 = time.perf_counter()
        bat = train_batched(t, state, jobs)
        _sync(t.device)
        t2 = time.perf_counter()
        if r:
            seq_times.append(t1 - t0)
            bat_times.append(t2 - t1)
    assert seq is not None and bat is not None
    diff = max(float((s.update.state[k].double() - b.update.state[k].double()).abs().max())
               for s, b in zip(seq, bat, strict=True) for k in state)
    return statistics.median(seq_times), statistics.median(bat_times), diff


def report(model: str, device: str, n: int, steps: int, batch: int, repeats: int,
           cifar_root: Path) -> float:
    seq, bat, diff = compare(model, device, n, steps, batch, repeats, cifar_root)
    ratio = seq / bat
    print(f"{device:5} {model:11} {n:3d} devices x {steps} steps of {batch}: sequential "
          f"{seq:8.3f} s, batched {bat:8.3f} s, ratio {ratio:5.2f}x, max |diff| {diff:.1e}",
          flush=True)
    return ratio


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default="10,50", help="devices a round (GPU)")
    ap.add_argument("--steps", type=int, default=10, help="local mini-batches (GPU)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: "
                    + ", ".join(MODELS))
    ap.add_argument("--cifar-root", type=Path, help="CIFAR-10 python batches (default: "
                    "random images in their format)")
    ap.add_argument("--cpu-devices", type=int, default=8, help="devices a round without GPU")
    ap.add_argument("--cpu-steps", type=int, default=3, help="local steps without GPU")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: check that it runs")
    a = ap.parse_args()
    models = a.models.split(",")
    unknown = set(models) - set(MODELS)
    if unknown:
        ap.error(f"--models: unknown {sorted(unknown)}; allowed: {', '.join(MODELS)}")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="fleetsim-cifar-") as tmp:
        root = a.cifar_root or fake_cifar10(Path(tmp), 64 if a.smoke else 1000)
        if a.cifar_root is None and "resnet20" in models:
            print(f"resnet20 on random images in CIFAR-10's format ({root})")
        gpu = torch.cuda.is_available()
        if a.smoke:
            dev = "cuda" if gpu else "cpu"
            for m in models:
                report(m, dev, 2, 1, 4, 1, root)
            print("smoke run: sizes too small to mean anything; not a measurement")
            return 0
        if gpu:
            print(f"GPU: {torch.cuda.get_device_name(0)}")
            for m in models:
                ratio = 0.0
                for n in (int(v) for v in a.devices.split(",")):
                    ratio = report(m, "cuda", n, a.steps, a.batch, a.repeats, root)
                print(f"{m}: ratio batched/sequential speed at the largest size: "
                      f"{ratio:.2f}x (target >= 4x at 50 devices)")
            return 0
        print("no GPU here (torch.cuda.is_available() is False): the GPU figures cannot be "
              "measured here; the CPU comparison at small size follows")
        for m in models:
            ratio = report(m, "cpu", a.cpu_devices, a.cpu_steps, a.batch, a.repeats, root)
            print(f"{m}: ratio batched/sequential speed on the CPU (1 thread): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
