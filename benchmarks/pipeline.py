"""Robust aggregation under attack, and top-k compression, on the quickstart fleet.

Runs ``scenarios/quickstart.yaml`` (real training, 30 rounds, seed 0) with its phones split
into two classes of the same hardware, ``phone`` (40% of the fleet) and ``phone-b`` (20%),
so that one fifth of the fleet can attack while the devices, their traces and their data
stay those of the attack-free run:

1. attack-free, ``mean`` (FedAvg), uncompressed -- the reference;
2. ``phone-b`` flips its updates' signs, scale 5 (``attack: {name: sign_flip, options:
   {scale: 5}}``), under ``mean``, ``median``, ``trimmed_mean`` (trim 0.4: Yin et al. need
   beta above the attackers' share, and a round of 9-10 arrivals has 3 or more attackers
   in a quarter to a third of rounds) and ``multi_krum`` (f 2, m 5);
3. attack-free with ``topk`` at 1% and error feedback;
4. timing only, on a slow-uplink fleet (every uplink 0.02 Mbps): devices that arrive in
   time, uncompressed and with top-k at 1%;
5. (last, to tell the attack's cost from the rule's own) the robust rules attack-free.

Prints each run's final accuracy, bytes up, and the checks of issue 25's item 3, measured
in this one run.

    python benchmarks/pipeline.py [--rounds 30] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLASSES = ("fleet.classes=[{name: phone, share: 0.4, peak_macs_per_s: 2.0e9, uplink_mbps: 10, "
           "downlink_mbps: 40}, {name: phone-b, share: 0.2, peak_macs_per_s: 2.0e9, "
           "uplink_mbps: 10, downlink_mbps: 40%s}, {name: iot-board, share: 0.4, "
           "peak_macs_per_s: 4.0e8, uplink_mbps: 2, downlink_mbps: 8}]")
ATTACK = ", attack: {name: sign_flip, options: {scale: 5}}"
TOPK = "training.update_transforms=[{name: topk, options: {ratio: 0.01}}]"
RULES = {
    "mean": [],
    "median": ["server.aggregator.name=median"],
    "trimmed_mean": ["server.aggregator={name: trimmed_mean, options: {trim: 0.4}}"],
    "multi_krum": ["server.aggregator={name: multi_krum, options: {f: 2, m: 5}}"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import fleetsim

    path = ROOT / "scenarios" / "quickstart.yaml"
    base = [f"training.rounds={args.rounds}", f"seed={args.seed}", "output.plot=false"]
    print(f"load at start: {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    t0 = time.perf_counter()

    def run(label: str, *sets: str):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        r = fleetsim.run(path, overrides=[*base, *sets])
        rows = r.rounds
        acc = float(rows["accuracy"].iloc[-1])
        up = int(rows["bytes_up"].sum())
        done = int(rows["completed"].sum())
        skipped = int(rows["aggregation_skipped"].sum()) if "aggregation_skipped" in rows \
            else 0
        print(f"{label:<34} final accuracy {acc:.4f}  bytes up {up:>12,}  updates "
              f"aggregated {done:>4}  rounds skipped {skipped}  ({time.perf_counter() - t:.0f} s)",
              flush=True)
        return acc, up, done

    clean, clean_up, _ = run("attack-free, mean", CLASSES % "")
    attacked = {name: run(f"20% sign flip x5, {name}", CLASSES % ATTACK, *sets)[0]
                for name, sets in RULES.items()}
    topk, topk_up, _ = run("attack-free, topk 1% + EF", CLASSES % "", TOPK)
    slow = [CLASSES % "", "training.mode=timing"] + [
        f"fleet.classes.{i}.uplink_mbps=0.02" for i in range(3)]
    _, _, slow_plain = run("slow uplink (timing), plain", *slow)
    _, _, slow_topk = run("slow uplink (timing), topk 1%", *slow, TOPK)

    print(f"\nmain runs {time.perf_counter() - t0:.0f} s, load now {os.getloadavg()[0]:.2f}")
    print(f"mean under attack: {attacked['mean']:.4f} (chance 0.10; near chance: "
          f"{'MET' if attacked['mean'] <= 0.2 else 'NOT MET'})")
    for name in ("median", "trimmed_mean", "multi_krum"):
        gap = (clean - attacked[name]) * 100
        print(f"{name} under attack: {gap:+.2f} points below the attack-free mean "
              f"({'MET' if gap <= 3 else 'NOT MET'}: within 3)")
    ratio = clean_up / topk_up
    print(f"topk 1% bytes up: {ratio:.1f}x fewer ({'MET' if ratio >= 30 else 'NOT MET'}: >= 30x)"
          f"; accuracy {(clean - topk) * 100:+.2f} points below uncompressed "
          f"({'MET' if clean - topk <= 0.02 else 'NOT MET'}: within 2)")
    print(f"slow uplink: {slow_topk} updates arrived in time with topk vs {slow_plain} "
          f"without ({'MET' if slow_topk > slow_plain else 'NOT MET'})", flush=True)
    for name in ("median", "trimmed_mean", "multi_krum"):
        acc = run(f"attack-free, {name}", CLASSES % "", *RULES[name])[0]
        print(f"  {name} attack-free vs mean attack-free: {(clean - acc) * 100:+.2f} points "
              "below", flush=True)


if __name__ == "__main__":
    main()
