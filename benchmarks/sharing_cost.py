"""What do shared links cost the engine? (timing only, one run each, same process)

Runs the same fleet twice, timing only: with private links (every transfer gets its
path's bandwidth: the exact per-device fast path, no events per device) and with
``fleet.network.sharing: max_min`` and a shared server access link (every selected
device a SimPy process, its download and upload flows of the max-min fair networks).
Prints the CPU seconds of ``Engine.run`` for each and their ratio (target: at most 2),
over ``--repeats`` pairs run in turn (private, shared, private, ...) so that a change of
load touches both sides, and the median of the pairs' ratios.

    python benchmarks/sharing_cost.py [--devices 100000] [--per-round 1000]
        [--rounds 100] [--server-mbps 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

SCENARIO = """
name: sharing-cost
seed: 0
data:
  dataset: digits
  partition: {{name: iid, options: {{samples_per_device: 32}}}}
model: {{arch: cnn4, options: {{channels: [8, 16, 32, 32]}}}}
fleet:
  devices: {devices}
  classes:
    - {{name: phone, share: 0.6, peak_macs_per_s: 2.0e9, uplink_mbps: 10, downlink_mbps: 40}}
    - {{name: iot-board, share: 0.4, peak_macs_per_s: 4.0e8, uplink_mbps: 2,
       downlink_mbps: 8}}
  traces:
    generator: markov
    streams: counter
    horizon_s: 86400
    options: {{levels: [1.0, 0.5, 0.2], mean_dwell_s: 600, mean_online_s: 14400,
              mean_offline_s: 1800}}
  network: {network}
training:
  mode: timing
  rounds: {rounds}
  clients_per_round: {per_round}
  deadline_s: 120
selector: {{name: random, options: {{candidates: draws}}}}
"""


def cpu_s(devices: int, per_round: int, rounds: int, network: str) -> tuple[float, int]:
    from fleetsim.build import build, load_scenario

    sc = load_scenario(None, text=SCENARIO.format(devices=devices, per_round=per_round,
                                                  rounds=rounds, network=network))
    engine = build(sc).engine
    c0 = time.process_time()
    log = engine.run()
    return time.process_time() - c0, sum(r["completed"] for r in log.rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--per-round", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--server-mbps", type=float, default=1000.0)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    print(f"{a.devices:,} devices, {a.per_round:,} a round, {a.rounds} rounds, timing only")
    m = a.server_mbps
    shared_net = (f"{{sharing: max_min, server_link: {{up_mbps: {m}, "
                  f"down_mbps: {m}}}}}")
    ratios = []
    for k in range(a.repeats):
        private, n_priv = cpu_s(a.devices, a.per_round, a.rounds, "{sharing: 'off'}")
        shared, n_shared = cpu_s(a.devices, a.per_round, a.rounds, shared_net)
        ratios.append(shared / private)
        print(f"pair {k + 1}: private links {private:6.1f} CPU s ({n_priv:,} updates "
              f"arrived), shared server link ({m:g} Mbit/s) {shared:6.1f} CPU s "
              f"({n_shared:,} arrived): {ratios[-1]:.2f}x")
    print(f"cost of sharing: {statistics.median(ratios):.2f}x, the median of "
          f"{a.repeats} pairs (range {min(ratios):.2f}-{max(ratios):.2f}x; target <= 2)")
    print(f"load average at end: {os.getloadavg()[0]:.2f} (1 min)")

if __name__ == "__main__":
    main()
