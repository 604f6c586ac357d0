"""What a shared upload cell and batteries change (timing only): docs/network.md.

Runs scenarios/network-energy.yaml, schedule only (training.mode=timing), in three worlds
-- private links and no energy; uploads sharing one 20 Mbit/s cell (no energy);
batteries without charging (private links) -- for FedAvg, FedProx, FjORD (and DISTREAL
with --policies), 20 clients a round, a 4x wider CNN whose updates are sent with 64 bytes
per parameter (16x fp32: updates of ~6 MB, the size of a ~1.5M-parameter model), so the
cell is busy. Prints a table and writes the figure.

    python benchmarks/network_energy_study.py --out /tmp/ne-study \\
        --figure docs/figures/network-energy.png --policies fedavg,fedprox,fjord,distreal
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--set", "training.mode=timing", "--set", "training.clients_per_round=20",
          "--set", "model.options.channels=[16,32,64,64]", "--set", "costs.bytes_per_param=64",
          "--quiet"]
NO_ENERGY = ["--set", "fleet.classes.0.energy=null", "--set", "fleet.classes.1.energy=null"]
PRIVATE = ["--set", "fleet.network.sharing=off"]
BATTERY = [x for k in (0, 1) for x in (
    "--set", f"fleet.classes.{k}.energy.battery.charge_when=never",
    "--set", f"fleet.classes.{k}.energy.battery.initial_fraction=[0.05,0.08]")]
WORLDS = {"private": PRIVATE + NO_ENERGY, "shared": NO_ENERGY, "battery": PRIVATE + BATTERY}
LABELS = {"private": "private links, no energy", "shared": "uploads share a 20 Mbit/s cell",
          "battery": "batteries (no charging)"}
POLICIES = ["fedavg", "fedprox", "fjord"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the runs")
    ap.add_argument("--figure", help="write the figure here")
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated "
                    f"(default {','.join(POLICIES)}; distreal first computes its DSE front)")
    a = ap.parse_args()
    policies = a.policies.split(",")
    rows = []
    for world, extra in WORLDS.items():
        for pol in policies:
            out = Path(a.out) / f"{world}-{pol}"
            subprocess.run([sys.executable, "-m", "fleetsim.cli", "run",
                            str(ROOT / "scenarios" / "network-energy.yaml"), *COMMON, *extra,
                            "--set", f"policy.name={pol}", "--out", str(out)],
                           check=True, cwd=ROOT)
            d = pd.read_csv(out / "rounds.csv")
            r = {"world": world, "policy": pol, "span_s": d.t_end_s.iloc[-1],
                 "completed": int(d.completed.sum()), "late": int(d.late.sum()),
                 "dropped": int(d.dropped.sum()), "bytes_up_MB": d.bytes_up.sum() / 1e6}
            if "link_busy_share" in d:
                r["busy_share"] = d.link_busy_share.mean()
            if "energy_j" in d:
                r["energy_kJ"] = d.energy_j.sum() / 1e3
                r["battery_ended"] = int(d.battery_ended.sum())
            rows.append(r)
    df = pd.DataFrame(rows)
    print(df.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    if a.figure:
        figure(df, a.figure, policies)


def figure(d: pd.DataFrame, path: str, policies: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(1, 3, figsize=(12, 3.6))
    x, w = np.arange(len(policies)), 0.27
    for i, world in enumerate(WORLDS):
        s = d[d.world == world].set_index("policy").loc[policies]
        ax[0].bar(x + (i - 1) * w, s.completed, w, label=LABELS[world])
        ax[1].bar(x + (i - 1) * w, s.span_s / 60, w)
        ax[2].bar(x + (i - 1) * w, s.late + s.dropped, w)
    for a, t in zip(ax, ["updates aggregated (30 rounds x 20)",
                         "simulated time of 30 rounds (min)",
                         "device-rounds lost (late + dropped)"]):
        a.set_xticks(x, policies)
        a.set_title(t, fontsize=10)
    ax[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
