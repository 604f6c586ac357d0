"""Sequential against batched training of one FedAvg round, on the GPU (issue 17).

A FedAvg round trains K devices' updates of the same full model. The sequential path
(:meth:`fleetsim.training.Trainer.train`, one device after another) leaves a GPU mostly
idle on small models; :func:`fleetsim.batched.train_batched` runs step j of all K devices
as one batched step. This times both for 10 and 50 devices a round of the McMahan CNN
(``mcmahan_cnn``, MNIST 5k, 28x28x1), each device training ``--steps`` mini-batches of
``--batch``, checks that both give the same updates (max abs difference of every
parameter), and prints the times and the ratio (target: batched >= 4x sequential at 50
devices). ResNet-20 is not timed: the batched path does not support batch norm.

Without a GPU it says that the GPU figures cannot be measured here, runs the same
comparison on the CPU at a small size (``--cpu-devices`` devices, ``--cpu-steps`` steps)
and prints that ratio; it exits 0 either way.

Usage: ``python benchmarks/gpu.py [--devices 10,50] [--steps 10] [--batch 32] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

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


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def compare(device: str, n: int, steps: int, batch: int, repeats: int
            ) -> tuple[float, float, float]:
    """Median seconds of the sequential and the batched round, and their max difference."""
    sc = load_scenario(None, [f"training.device={device}", f"training.batch_size={batch}",
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
    diff = max(float((s.update.state[k] - b.update.state[k]).abs().max())
               for s, b in zip(seq, bat, strict=True) for k in state)
    return statistics.median(seq_times), statistics.median(bat_times), diff


def report(device: str, n: int, steps: int, batch: int, repeats: int) -> float:
    seq, bat, diff = compare(device, n, steps, batch, repeats)
    ratio = seq / bat
    print(f"{device:5} mcmahan_cnn {n:3d} devices x {steps} steps of {batch}: sequential "
          f"{seq:8.3f} s, batched {bat:8.3f} s, ratio {ratio:5.2f}x, max |diff| {diff:.1e}",
          flush=True)
    return ratio


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default="10,50", help="devices a round (GPU)")
    ap.add_argument("--steps", type=int, default=10, help="local mini-batches (GPU)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu-devices", type=int, default=8, help="devices a round without GPU")
    ap.add_argument("--cpu-steps", type=int, default=3, help="local steps without GPU")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name(0)}")
        ratio = 0.0
        for n in (int(v) for v in a.devices.split(",")):
            ratio = report("cuda", n, a.steps, a.batch, a.repeats)
        print("resnet20: not timed (the batched path does not support batch norm)")
        print(f"ratio batched/sequential speed at the largest size: {ratio:.2f}x "
              "(target >= 4x at 50 devices)")
        return 0
    print("no GPU here (torch.cuda.is_available() is False): the GPU figures cannot be "
          "measured here; the CPU comparison at small size follows")
    ratio = report("cpu", a.cpu_devices, a.cpu_steps, a.batch, a.repeats)
    print(f"ratio batched/sequential speed on the CPU (1 thread): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
