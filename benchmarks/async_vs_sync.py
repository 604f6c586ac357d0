"""Synchronous rounds versus FedBuff on one fleet: accuracy over simulated time.

Runs ``scenarios/fedbuff.yaml`` twice with real training, once with ``server.mode: sync``
(10 devices a round, 60 s deadline: late work is discarded) and once as written (FedBuff:
20 devices training at once, an aggregation every 10 arrivals, staleness weight
1/sqrt(1+s), each job limited to 60 s), each for the same number of aggregations. Prints
the simulated time each needs to reach the target accuracy, its ratio, the share of
started work that was aggregated, and writes the figure (``--out``, default
``docs/figures/async-vs-sync.png``).

    python benchmarks/async_vs_sync.py [--rounds 30] [--target 0.9] [--out FILE]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def time_to(rows, target: float) -> float:  # type: ignore[no-untyped-def]
    for t, a in zip(rows["t_end_s"], rows["accuracy"]):
        if not math.isnan(a) and a >= target:
            return float(t)
    return math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "figures" / "async-vs-sync.png"))
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import fleetsim

    path = ROOT / "scenarios" / "fedbuff.yaml"
    base = [f"training.rounds={args.rounds}", f"seed={args.seed}", "eval.every_rounds=1"]
    res = {}
    for mode in ("sync", "async"):
        r = fleetsim.run(path, overrides=[*base, f"server.mode={mode}"], progress=True)
        res[mode] = r
        tl = r.timeline
        used = (tl["status"] == "completed").mean()
        print(f"{mode:>5}: {len(r.rounds)} aggregations, {r.rounds['t_end_s'].iloc[-1] / 60:.1f}"
              f" simulated min, final accuracy {r.final_accuracy:.3f}, time to "
              f"{args.target:.2f}: {time_to(r.rounds, args.target) / 60:.1f} min, work "
              f"aggregated {used:.0%} of {len(tl)} jobs")
    ts, ta = (time_to(res[m].rounds, args.target) for m in ("sync", "async"))
    print(f"time to {args.target:.2f}, sync / async: {ts / ta:.2f}")
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=130)
    for mode, style in (("sync", "-o"), ("async", "-s")):
        rows = res[mode].rounds
        ok = rows["accuracy"].notna()
        label = "sync rounds (K=10, deadline 60 s)" if mode == "sync" else \
            "FedBuff (20 at once, buffer 10)"
        ax.plot(rows["t_end_s"][ok] / 60, rows["accuracy"][ok], style, ms=3, lw=1.4,
                label=label)
    ax.axhline(args.target, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("simulated time (minutes)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"scenarios/fedbuff.yaml, one fleet, seed {args.seed}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
