"""Does any method end at chance accuracy for a mechanism reason? (issue 15)

Pilot runs of ``scenarios/paper/mnist.yaml`` with batch norm (``model.options.norm=bn``),
20 rounds, two seeds, for the sub-model methods at two learning rates: once with each
method's own model defaults (docs/policies.md, "Defaults of each method") and once with
the defaults overridden back to what every method used before them (``running`` batch
norm, activations rescaled). Prints, per method, learning rate and seed, the final test
accuracy and the lowest accuracy over the second half of the run (chance is 0.1):

    python benchmarks/method_pilot.py --out /tmp/method-pilot --jobs 2     # runs, then prints
    python benchmarks/method_pilot.py --out /tmp/method-pilot --print-only # prints only

About 40 runs of 1-2 minutes each on one core; complete cells are skipped on a rerun.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
POLICIES = "fedrolex,fjord,heterofl,federated_dropout,fedavg"
COMMON = ["--seeds", "0-1", "--set", "model.options.norm=bn", "--set", "training.rounds=20",
          "--set", "training.optimizer.lr=0.02,0.05", "--quiet"]
#: the settings every method had before method defaults existed (and nearest rounding)
BEFORE = ["--set", "model.options.bn_stats=running", "--set", "model.options.rescale=true"]
BEFORE_POLICIES = ("fedrolex:rounding=nearest,fjord:rounding=nearest,"
                   "heterofl:rounding=nearest,federated_dropout,fedavg")


def run(out: Path, jobs: int) -> None:
    base = [sys.executable, "-m", "fleetsim.cli", "compare", "scenarios/paper/mnist.yaml",
            "--jobs", str(jobs), *COMMON]
    for name, policies, extra in (("defaults", POLICIES, []),
                                  ("before", BEFORE_POLICIES, BEFORE)):
        subprocess.run([*base, "--policies", policies, *extra, "--out", str(out / name)],
                       cwd=REPO, check=True)


def show(out: Path) -> None:
    print(f"{'variant':9s} {'policy':18s} {'lr':>5s} {'seed':>4s} {'final':>6s} "
          f"{'min 2nd half':>12s}  model defaults in effect")
    for h5 in sorted(out.rglob("run.h5")):
        with h5py.File(h5) as f:
            acc = f["rounds/accuracy"][:]
            acc = acc[~np.isnan(acc)]
            recorded = json.loads(f.attrs.get("method_defaults", "[]"))
            text = str(f.attrs["scenario_text"])
        parts = h5.relative_to(out).parts  # variant/scenario/policy/overrides/seed-k
        lr = str(yaml.safe_load(text)["training"]["optimizer"]["lr"])
        eff = ", ".join(f"{r['option']}={r['in_effect']} ({r['outcome']})" for r in recorded)
        if not len(acc):  # a timing-only run has no accuracy
            acc = np.array([np.nan])
        print(f"{parts[0]:9s} {parts[2]:18s} {lr:>5s} {parts[-2][5:]:>4s} {acc[-1]:6.3f} "
              f"{acc[len(acc) // 2:].min():12.3f}  {eff}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--print-only", action="store_true")
    a = ap.parse_args()
    if not a.print_only:
        run(a.out, a.jobs)
    show(a.out)


if __name__ == "__main__":
    main()
