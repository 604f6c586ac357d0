"""Are a set of runs' results the same bits as before a change? (engine refactors)

Runs a fixed list of scenarios (sync and async, real training and timing only,
over-commitment, deciding policies) with the command line and prints, per case, the
SHA-256 of its ``rounds.csv`` and of every dataset of the ``timeline`` group of its
``run.h5`` (the provenance attributes, which hold wall times, are left out).

    python benchmarks/result_hashes.py --save hashes.json     # before the change
    python benchmarks/result_hashes.py --check hashes.json    # after: exit 1 on a change
    python benchmarks/result_hashes.py --only tiny,async-timing --check hashes.json

A case's figures depend on the machine's float arithmetic (torch's kernels), so compare
hashes made on one machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TIMING = "training.mode=timing"
CASES: dict[str, tuple[str, list[str]]] = {
    "tiny": ("scenarios/tiny.yaml", []),
    "quickstart-3": ("scenarios/quickstart.yaml", ["training.rounds=3"]),
    "fedbuff-6": ("scenarios/fedbuff.yaml", ["training.rounds=6"]),
    "fedasync-20": ("scenarios/fedasync.yaml", ["training.rounds=20", "eval.every_rounds=5"]),
    "distreal-fedbuff-timing": ("scenarios/distreal-fedbuff.yaml", [TIMING]),
    "overcommit": ("scenarios/policies/fedavg.yaml", ["policy.options.stragglers=overcommit"]),
    "wait": ("scenarios/policies/fedavg.yaml", ["policy.options.stragglers=wait",
                                                 "training.rounds=4"]),
    "fednova": ("scenarios/policies/fednova.yaml", ["training.rounds=4"]),
    "fedrolex-timing": ("scenarios/policies/fedrolex.yaml", [TIMING]),
    "heterofl-timing": ("scenarios/policies/heterofl.yaml", [TIMING]),
    "oort-timing": ("scenarios/policies/oort.yaml", [TIMING]),
    "fjord-timing": ("scenarios/policies/fjord.yaml", [TIMING]),
    "scale-timing": ("scenarios/scale-10k.yaml", [TIMING, "training.rounds=40"]),
    "async-timing": ("scenarios/scale-10k.yaml", [TIMING, "training.rounds=40",
                                                  "server.mode=async",
                                                  "server.concurrency=60",
                                                  "server.buffer_size=20"]),
    "async-budget-timing": ("scenarios/fedbuff.yaml", [TIMING, "training.rounds=1000",
                                                       "training.time_budget_s=900"]),
    "sync-budget-timing": ("scenarios/tiny.yaml", [TIMING, "training.rounds=1000",
                                                   "training.time_budget_s=400"]),
}


def _digest(path: Path) -> dict[str, str]:
    import h5py
    import numpy as np

    out = {"rounds.csv": hashlib.sha256((path / "rounds.csv").read_bytes()).hexdigest()}
    with h5py.File(path / "run.h5", "r") as f:
        h = hashlib.sha256()
        for grp in ("rounds", "timeline"):
            if grp not in f:
                continue
            for k in sorted(f[grp]):
                a = np.ascontiguousarray(f[grp][k][:])
                h.update(f"{grp}/{k}:{a.dtype.str}:{a.shape}".encode())
                h.update(a.tobytes())
        out["run.h5"] = h.hexdigest()
    return out


def run_case(name: str) -> dict[str, str]:
    scenario, sets = CASES[name]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", "from fleetsim.cli import entry; entry()", "run",
               scenario, "--out", tmp + "/run", "--quiet"]
        for s in sets:
            cmd += ["--set", s]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        return _digest(Path(tmp) / "run")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save", help="write the hashes to this JSON file")
    ap.add_argument("--check", help="compare with the hashes in this JSON file")
    ap.add_argument("--only", help="comma-separated case names (default: all)")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(CASES)
    ref = json.loads(Path(args.check).read_text()) if args.check else {}
    got, bad = {}, []
    for name in names:
        t0 = time.perf_counter()
        got[name] = run_case(name)
        verdict = ""
        if args.check:
            verdict = "same" if ref.get(name) == got[name] else "DIFFERENT"
            if verdict != "same":
                bad.append(name)
        print(f"{name:26s} {got[name]['rounds.csv'][:12]} {got[name]['run.h5'][:12]} "
              f"{time.perf_counter() - t0:6.1f} s {verdict}", flush=True)
    if args.save:
        old = json.loads(Path(args.save).read_text()) if Path(args.save).exists() else {}
        Path(args.save).write_text(json.dumps({**old, **got}, indent=1, sort_keys=True))
    if bad:
        print("different:", ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
