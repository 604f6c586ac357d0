"""What a shared upload cell and batteries change, with real training: docs/network.md.

Runs scenarios/network-energy.yaml (100 phones, MNIST 5k, cnn4, 30 rounds, real training)
for FedAvg, FedProx, FjORD and DISTREAL in three worlds: the same fleet with private links
and no energy model; as written (uploads share one 20 Mbit/s cell, phones on batteries
that charge while online); and the same with batteries that start low (5-8%) and never
charge, so that they end work. Prints, per policy and world, the simulated time of the 30
rounds, the final accuracy, the updates aggregated, device-rounds lost (late, dropped,
battery-ended), bytes up and joules; writes accuracy versus simulated time (one panel per
world).

    python benchmarks/network_energy_training.py --out /tmp/ne-train --jobs 2 \\
        --figure docs/figures/network-energy-training.png
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "network-energy.yaml"
# updates of ~6 MB (a ~1.5M-parameter model's, sent at 4 bytes a parameter) from the
# small CNN that is trained, and 20 devices a round: so that 20 uploads load the 20 Mbit/s
# cell (the scenario's own 10 a round of ~100 kB hardly do: busy share 2-9%)
COMMON = ["--set", "training.clients_per_round=20", "--set", "costs.bytes_per_param=256"]
WORLDS = {
    "private, no energy": ["--set", "fleet.network.sharing=off",
                           "--set", "fleet.classes.0.energy=null",
                           "--set", "fleet.classes.1.energy=null"],
    "shared cell + batteries": [],
    # the same, but the phones start low and never charge: batteries end work
    "shared cell + low batteries": [
        x for k in (0, 1) for x in (
            "--set", f"fleet.classes.{k}.energy.battery.charge_when=never",
            "--set", f"fleet.classes.{k}.energy.battery.initial_fraction=[0.05,0.08]")],
}
FOLDERS = {"private, no energy": "private_noenergy", "shared cell + batteries":
           "shared_battery", "shared cell + low batteries": "shared_lowbattery"}
POLICIES = ["fedavg", "fedprox", "fjord", "distreal"]


def run(world: str, policy: str, out: Path) -> Path:
    folder = out / f"{FOLDERS[world]}-{policy}"
    if not (folder / "rounds.csv").exists():  # resumable
        subprocess.run([sys.executable, "-m", "fleetsim.cli", "run", str(SCENARIO),
                        "--quiet", *COMMON, *WORLDS[world], "--set", f"policy.name={policy}",
                        "--out", str(folder)], check=True, cwd=ROOT)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the runs")
    ap.add_argument("--figure", help="write the figure here")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once")
    ap.add_argument("--policies", default=",".join(POLICIES))
    a = ap.parse_args()
    policies = a.policies.split(",")
    out = Path(a.out)
    # DISTREAL's DSE front is computed once (by its first run) and cached: run it first
    cells = [(w, p) for p in policies for w in WORLDS]
    first = [c for c in cells if c[1] == "distreal"][:1]
    for w, p in first:
        run(w, p, out)
    with ThreadPoolExecutor(a.jobs) as ex:
        folders = dict(zip(cells, ex.map(lambda c: run(c[0], c[1], out), cells)))
    rows, curves = [], {}
    for (w, p), f in folders.items():
        d = pd.read_csv(f / "rounds.csv")
        curves[w, p] = d[["t_end_s", "accuracy"]].dropna()
        rows.append({
            "world": w, "policy": p, "minutes": d.t_end_s.iloc[-1] / 60,
            "final_acc": d.accuracy.dropna().iloc[-1],
            "aggregated": int(d.completed.sum()), "late": int(d.late.sum()),
            "dropped": int(d.dropped.sum()),
            "battery_ended": int(d.battery_ended.sum()) if "battery_ended" in d else 0,
            "MB_up": d.bytes_up.sum() / 1e6,
            "kJ": d.energy_j.sum() / 1e3 if "energy_j" in d else float("nan"),
            "busy_share": d.link_busy_share.mean() if "link_busy_share" in d
            else float("nan")})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    if a.figure:
        figure(curves, policies, a.figure)


def figure(curves: dict, policies: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(WORLDS), figsize=(4.2 * len(WORLDS), 3.4), sharey=True)
    for ax, w in zip(axes, WORLDS):
        for p in policies:
            c = curves[w, p]
            ax.plot(c.t_end_s / 60, c.accuracy, marker=".", label=p)
        ax.set_title(w, fontsize=10)
        ax.set_xlabel("simulated minutes")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
