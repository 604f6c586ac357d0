"""Does keeping the full network on DISTREAL's front change the study? (a paired test)

The previous version of docs/reproduction.md blamed DISTREAL's result on its DSE front
losing the full network (d = 0) to noise. This runs ``distreal`` with
``policy.options.anchor_full: true`` (d = 0 always a candidate, preferred unless a front
vector beats it by more than its spread) at plain DISTREAL's chosen learning rate and
batch-norm mode (from the sweep's ``policies.txt``), on the study's seeds and availability
speeds at equal simulated time, and pairs each run with the study's plain ``distreal``
run of the same seed and speed (same devices, traces and data). Prints, per pair and on
average, the final accuracy (at the time budget), the time to the target, the share of
selected devices whose update arrived in time and the mean kept share of filters, and the
paired difference of final accuracy with its 95% t-interval.

    python benchmarks/anchor_test.py [--sweep runs/paper-lr] [--study runs/paper]
        [--out runs/paper-anchor] [--jobs 2]

Run it after ``bash benchmarks/rerun_study.sh`` (which calls it as its last step).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import subprocess
import sys
from pathlib import Path

from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


def chosen_options(policies_txt: Path) -> str:
    """Plain DISTREAL's ``;``-joined options in the sweep's ``--policies`` line."""
    for entry in policies_txt.read_text().strip().split(","):
        name, _, opts = entry.partition(":")
        if name == "distreal" and "anchor_full" not in opts:
            return opts
    raise SystemExit(f"{policies_txt}: no plain distreal entry")


def summary(run_dir: Path, target: float) -> tuple[float, float, float, float]:
    """(final accuracy, time to target in s or nan, in-time share, mean kept share)."""
    with (run_dir / "rounds.csv").open() as f:
        rows = list(csv.DictReader(f))
    acc = [(float(r["t_end_s"]), float(r["accuracy"])) for r in rows
           if r["accuracy"] not in ("", "nan")]
    reach = next((t for t, a in acc if a >= target), math.nan)
    selected = sum(int(r["selected"]) for r in rows)
    completed = sum(int(r["completed"]) for r in rows)
    kept = statistics.mean(float(r["mean_kept_share"]) for r in rows
                           if r["mean_kept_share"] not in ("", "nan"))
    return acc[-1][1], reach, completed / selected, kept


def only(pattern: str, where: Path) -> Path:
    found = sorted(where.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"{where}: expected one {pattern!r}, found {len(found)}")
    return found[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="scenarios/paper/mnist.yaml")
    ap.add_argument("--sweep", type=Path, default=Path("runs/paper-lr"))
    ap.add_argument("--study", type=Path, default=Path("runs/paper"))
    ap.add_argument("--out", type=Path, default=Path("runs/paper-anchor"))
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--dwells", default="5,20,80")
    ap.add_argument("--budget", default="600")
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--jobs", default="2")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="more settings for the anchored runs (those the study had)")
    ap.add_argument("--fleetsim", default=None, help="the fleetsim command (default: this "
                    "Python's)")
    a = ap.parse_args()
    opts = chosen_options(a.sweep / "policies.txt")
    cmd = ([a.fleetsim] if a.fleetsim else [sys.executable, "-c",
                                            "from fleetsim.cli import entry; entry()"])
    subprocess.run([*cmd, "compare", a.scenario, "--policies",
                    f"distreal:anchor_full=true;{opts}", "--seeds", a.seeds,
                    "--set", f"fleet.traces.options.mean_dwell_s={a.dwells}",
                    "--set", "training.rounds=null",
                    "--set", f"training.time_budget_s={a.budget}",
                    *[x for kv in a.set for x in ("--set", kv)],
                    "--out", str(a.out), "--jobs", a.jobs, "--quiet"], check=True)
    scen = Path(a.scenario).stem
    plain = only("distreal@*", a.study / scen)
    anchored = only("distreal+anchor_full=true@*", a.out / scen)
    print(f"plain:    {plain}\nanchored: {anchored}")
    pairs = []
    for setting in sorted(p.name for p in plain.iterdir() if p.is_dir()):
        for seed_dir in sorted((plain / setting).iterdir()):
            other = anchored / setting / seed_dir.name
            if not (other / "rounds.csv").is_file():
                continue
            p, q = summary(seed_dir, a.target), summary(other, a.target)
            pairs.append((p, q))
            print(f"{setting} {seed_dir.name}: final {p[0]:.3f} -> {q[0]:.3f}, "
                  f"to {a.target:g} {p[1]:.0f} -> {q[1]:.0f} s, in time {p[2]:.2f} -> "
                  f"{q[2]:.2f}, kept share {p[3]:.3f} -> {q[3]:.3f}")
    if len(pairs) < 2:
        raise SystemExit("fewer than two pairs: run the study first")
    diff = [q[0] - p[0] for p, q in pairs]
    n, m = len(diff), statistics.mean(diff)
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(diff) / math.sqrt(n)
    for k, name in ((0, "final accuracy"), (2, "in-time share"), (3, "kept share")):
        print(f"mean {name}: plain {statistics.mean(p[k] for p, _ in pairs):.3f}, "
              f"anchored {statistics.mean(q[k] for _, q in pairs):.3f}")
    print(f"reached {a.target:g}: plain {sum(not math.isnan(p[1]) for p, _ in pairs)}/{n}, "
          f"anchored {sum(not math.isnan(q[1]) for _, q in pairs)}/{n}")
    print(f"anchored - plain final accuracy over {n} pairs: {m:+.4f} "
          f"[{m - half:+.4f}, {m + half:+.4f}] (95% t-interval)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
