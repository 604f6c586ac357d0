"""The same FedAvg workload in Flower's simulation engine and in fleetsim, side by side.

Workload: the McMahan et al. CNN (``mcmahan_cnn``, 1.66M parameters) on the 5,000 MNIST
digits (4,000 for training, split IID over 100 clients by fleetsim's partitioner, the same
partition for both), 10 clients per round, 10 local mini-batches of 32 with SGD (lr 0.05),
20 rounds, FedAvg weighted by samples, both starting from the same initial weights; test
accuracy of the global model after the first and the last round.

* Flower (``flwr[simulation]``): a ``ServerApp`` with ``flwr.serverapp.strategy.FedAvg``
  and a ``ClientApp`` that trains the plain PyTorch model, on the Ray backend with 2 CPUs
  (1 CPU per client, 1 torch thread); clients read their data from a prepared ``.npz``
  (already normalised), so Flower does not pay for parsing MNIST.
* fleetsim: ``fleetsim run`` of the same workload (devices always online, no deadline) with
  the pool backend and 2 workers.

Each runs in its own subprocess, in turn, in one run of this script. Printed per system:
wall time of the whole subprocess (start-up included), peak memory of all its processes
(resident set sizes summed over the process tree, sampled every 0.1 s; shared pages count
once per process that maps them, for both), the final accuracy (they should agree within
2 points: the clients selected each round differ). The speedup is last (target: fleetsim
with 2 workers at least 2x faster than Flower, with less memory).

    python benchmarks/vs_flower.py [--rounds 20] [--steps 10]

Needs ``pip install '.[bench]'`` (flwr[simulation]); without it, says so and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
IID = "{name: iid}"

SCENARIO = """
name: vs-flower
seed: 0
data:
  dataset: mnist5k
  test_fraction: 0.2
  partition: {partition}
model: {{arch: mcmahan_cnn}}
fleet:
  devices: {clients}
  classes:
    - {{name: node, share: 1.0, peak_macs_per_s: 1.0e10}}
  traces:
    generator: markov
    options: {{levels: [1.0], mean_offline_s: 0}}  # always online, full speed
training:
  rounds: {rounds}
  clients_per_round: {per_round}
  deadline_s: null
  local_steps: {steps}
  batch_size: {batch}
  optimizer: {{lr: {lr}, momentum: 0.0}}
  backend: pool
  workers: {workers}
eval:
  every_rounds: {eval_every}
output: {{plot: false}}
"""


# --------------------------------------------------------------------------- Flower side


def _plain_mcmahan() -> Any:
    """The McMahan CNN written the plain PyTorch way (fleetsim's parameter names)."""
    import torch.nn.functional as F
    from torch import nn

    class McMahanCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
            self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
            self.fc1 = nn.Linear(64 * 7 * 7, 512)
            self.head = nn.Linear(512, 10)

        def forward(self, x: Any) -> Any:
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            return self.head(F.relu(self.fc1(x.flatten(1))))

    return McMahanCNN()


_DATA: dict[str, Any] = {}


def _data(path: str) -> dict[str, Any]:
    """The prepared arrays, loaded once per process (each Ray worker keeps them)."""
    if not _DATA:
        import numpy as np
        import torch

        with np.load(path) as z:
            for k in z.files:
                _DATA[k] = torch.from_numpy(z[k]) if k.startswith(("x_", "y_")) else z[k]
    return _DATA


def flower_child(cfg: dict[str, Any]) -> None:
    """Run the workload in Flower's simulation engine; prints a JSON line."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    torch.set_num_threads(1)
    path = cfg["data"]
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        d = _data(path)
        pid = int(context.node_config["partition-id"])
        rnd = int(msg.content["config"]["server-round"])
        own = d["part_idx"][d["part_off"][pid]:d["part_off"][pid + 1]]
        model = _plain_mcmahan()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
        rng = np.random.default_rng([cfg["seed"], rnd, pid])
        b = min(cfg["batch"], len(own))
        need = cfg["steps"] * b
        order = np.concatenate([rng.permutation(len(own)) for _ in range(-(-need // len(own)))])
        for j in range(cfg["steps"]):
            idx = torch.from_numpy(own[order[j * b:(j + 1) * b]])
            loss = F.cross_entropy(model(d["x_train"][idx]), d["y_train"][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                              "metrics": MetricRecord({"num-examples": len(own)})})
        return Message(content=content, reply_to=msg)

    accuracy: dict[int, float] = {}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        # as fleetsim: after every eval_every-th round from the first on, and the last
        if (server_round - 1) % cfg["eval_every"] and server_round != cfg["rounds"]:
            return None
        d = _data(path)
        model = _plain_mcmahan()
        model.load_state_dict(arrays.to_torch_state_dict())
        model.eval()
        correct = 0
        with torch.no_grad():
            for lo in range(0, len(d["y_test"]), 1000):
                out = model(d["x_test"][lo:lo + 1000])
                correct += int((out.argmax(1) == d["y_test"][lo:lo + 1000]).sum())
        accuracy[server_round] = correct / len(d["y_test"])
        return MetricRecord({"accuracy": accuracy[server_round]})

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        init = torch.load(cfg["init"], weights_only=True)
        strategy = FedAvg(fraction_train=cfg["per_round"] / cfg["clients"],
                          fraction_evaluate=0.0, min_train_nodes=cfg["per_round"],
                          min_available_nodes=cfg["clients"])
        strategy.start(grid=grid, initial_arrays=ArrayRecord(init),
                       num_rounds=cfg["rounds"], evaluate_fn=evaluate)

    run_simulation(server_app=server_app, client_app=client_app,
                   num_supernodes=cfg["clients"],
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "num_gpus": 0,
                                                 "include_dashboard": False}})
    print(json.dumps({"accuracy": accuracy.get(cfg["rounds"], float("nan"))}))


# --------------------------------------------------------------------------- harness


def workload(*, rounds: int = 20, steps: int = 10, batch: int = 32, partition: str = IID,
             eval_every: int | None = None, workers: int = 2) -> dict[str, Any]:
    """The FedAvg workload both sides run (100 clients, 10 a round, SGD lr 0.05):
    ``partition`` as fleetsim's YAML, evaluation every ``eval_every`` rounds (None:
    after the first and the last), fleetsim's pool ``workers``."""
    return {"clients": 100, "per_round": 10, "rounds": rounds, "steps": steps,
            "batch": batch, "lr": 0.05, "seed": 0, "partition": partition,
            "eval_every": eval_every or rounds, "workers": workers}



def prepare(cfg: dict[str, Any], work: Path) -> Path:
    """The fleetsim scenario file, and the data, partition and initial weights Flower gets."""
    import numpy as np
    import torch

    from fleetsim.build import load_scenario, trainer_settings
    from fleetsim.training import Trainer

    text = SCENARIO.format(**cfg)
    scenario = work / "vs-flower.yaml"
    scenario.write_text(text)
    trainer = Trainer(trainer_settings(load_scenario(scenario)))
    torch.save(trainer.initial_state(), work / "init.pt")
    ds, part = trainer.data, trainer.partition
    np.savez(work / "data.npz", x_train=ds.x_train.numpy(), y_train=ds.y_train.numpy(),
             x_test=ds.x_test.numpy(), y_test=ds.y_test.numpy(), part_idx=part.indices,
             part_off=part.offsets)
    return scenario


def measured(cmd: list[str]) -> tuple[float, float, str]:
    """Wall time, peak summed RSS (MB) of the process tree, and stdout of ``cmd``."""
    import psutil

    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_DEDUP_LOGS="0")
    peak = 0.0
    stop = threading.Event()
    with tempfile.TemporaryFile(mode="w+") as out_f:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out_f, stderr=subprocess.STDOUT, text=True,
                             env=env, cwd=ROOT)

        def sample() -> None:
            nonlocal peak
            root = psutil.Process(p.pid)
            while not stop.is_set():
                total = 0
                try:
                    procs = [root, *root.children(recursive=True)]
                except psutil.Error:
                    break
                for q in procs:
                    with contextlib.suppress(psutil.Error):  # it may have just exited
                        total += q.memory_info().rss
                peak = max(peak, total / 2**20)
                stop.wait(0.1)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        rc = p.wait()
        wall = time.perf_counter() - t
        stop.set()
        th.join()
        out_f.seek(0)
        out = out_f.read()
    if rc:
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)}\n{out[-4000:]}")
    return wall, peak, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=10, help="local mini-batches per round")
    ap.add_argument("--batch", type=int, default=32, help="mini-batch size")
    ap.add_argument("--flower-child", help=argparse.SUPPRESS)  # internal: config JSON
    args = ap.parse_args()
    if args.flower_child:
        flower_child(json.loads(args.flower_child))
        return
    try:
        import flwr
        import ray  # noqa: F401
    except ImportError as exc:
        print(f"vs_flower: Flower's simulation engine is not installed ({exc}). Install it "
              "with `pip install '.[bench]'` (flwr[simulation]) and run again.")
        return
    import csv

    cfg = workload(rounds=args.rounds, steps=args.steps, batch=args.batch)
    with tempfile.TemporaryDirectory(prefix="fleetsim-vs-flower-") as tmp:
        work = Path(tmp)
        scenario = prepare(cfg, work)
        fcfg = dict(cfg, data=str(work / "data.npz"), init=str(work / "init.pt"))
        fl_wall, fl_mem, fl_out = measured([sys.executable, str(Path(__file__).resolve()),
                                            "--flower-child", json.dumps(fcfg)])
        fl_acc = json.loads(fl_out.strip().splitlines()[-1])["accuracy"]
        fs_wall, fs_mem, _ = measured([sys.executable, "-m", "fleetsim.cli", "run",
                                       str(scenario), "--quiet", "--out", str(work / "run")])
        with (work / "run" / "rounds.csv").open() as f:
            fs_acc = float(list(csv.DictReader(f))[-1]["accuracy"])
    print(f"FedAvg, mcmahan_cnn on mnist5k: {cfg['clients']} clients (IID), "
          f"{cfg['per_round']} per round, {cfg['steps']} steps of {cfg['batch']}, "
          f"{cfg['rounds']} rounds; 2 CPUs")
    print(f"Flower {flwr.__version__} (Ray, 2 CPUs)  wall {fl_wall:6.1f} s, peak memory "
          f"{fl_mem:6.0f} MB, final accuracy {fl_acc:.4f}")
    print(f"fleetsim (pool, 2 workers)  wall {fs_wall:6.1f} s, peak memory {fs_mem:6.0f} MB, "
          f"final accuracy {fs_acc:.4f}")
    print(f"accuracy difference {abs(fl_acc - fs_acc) * 100:.1f} points (within 2: "
          f"{'yes' if abs(fl_acc - fs_acc) <= 0.02 else 'NO'}); memory Flower / fleetsim "
          f"{fl_mem / fs_mem:.2f}")
    print(f"speedup fleetsim vs Flower, wall time (target >= 2)  {fl_wall / fs_wall:.2f}")


if __name__ == "__main__":
    main()
