"""How fast, and in how much memory, does the engine simulate huge fleets (timing only)?

Runs ``training.mode: timing`` (the same engine and schedule, no training) for fleets of
1,000, 10,000 and 100,000 devices with lazily generated Markov traces (availability
levels changing every ~10 minutes, on/off periods of hours), 100 devices selected per
round, 1,000 rounds. Each size runs in its own subprocess, so its peak memory (maximum
resident set size of that process) is its own. Prints, per size, the wall time of the
whole process (imports and set-up included) and of the simulation, simulated SimPy events
per second and peak memory; targets at 100,000 devices: under 60 s and under 2 GB. Columns:
``wall s`` the whole process, ``engine s`` the simulation alone (``Engine.run``), ``events``
SimPy events scheduled (and processed), ``sim h`` simulated hours covered. The last line is
the ratio of the largest to the smallest fleet: what 100x more devices cost.

    python benchmarks/engine_scale.py [--sizes 1000,10000,100000] [--rounds 1000]
        [--per-round 100] [--async-devices 100000] [--concurrency 1000] [--buffer 100]

After the synchronous sizes it runs the asynchronous server (FedBuff, ``server.mode:
async``) on ``--async-devices`` devices with ``--concurrency`` training at once and a
buffer of ``--buffer``, for ``--rounds`` aggregations (100,000 arrivals with the
defaults); target: under 60 s on 2 cores. ``--async-devices 0`` skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

SCENARIO = """
name: engine-scale-{devices}
seed: 0
data:
  dataset: digits
  # fleets larger than the dataset: every device draws its own 32 samples
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
    options: {{levels: [1.0, 0.5, 0.2], mean_dwell_s: 600, mean_online_s: 14400,
              mean_offline_s: 1800}}
training:
  mode: timing
  rounds: {rounds}
  clients_per_round: {per_round}
  deadline_s: 60
  local_steps: 20
  batch_size: 32
output: {{plot: false}}
server: {{mode: {mode}, concurrency: {concurrency}, buffer_size: {buffer}}}
"""


def child(devices: int, rounds: int, per_round: int, mode: str = "sync",
          concurrency: int = 10, buffer: int = 10) -> None:
    """One size, in this process: prints a JSON line of figures."""
    from fleetsim.build import build, load_scenario

    t0 = time.perf_counter()
    sc = load_scenario(None, text=SCENARIO.format(devices=devices, rounds=rounds,
                                                  per_round=per_round, mode=mode,
                                                  concurrency=concurrency, buffer=buffer))
    built = build(sc)
    setup_s = time.perf_counter() - t0
    log = built.engine.run()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"setup_s": setup_s, "run_s": log.wall_s, "events": log.events,
                      "rounds": len(log.rounds), "updates": sum(r["completed"]
                                                                for r in log.rounds),
                      "jobs": len(log.timeline),
                      "sim_h": log.rounds[-1]["t_end_s"] / 3600, "peak_mb": peak_mb}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--async-devices", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=1000)
    ap.add_argument("--buffer", type=int, default=100)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)  # internal: one size
    ap.add_argument("--child-async", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.rounds, args.per_round,
              "async" if args.child_async else "sync", args.concurrency, args.buffer)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = {}
    print(f"timing-only, Markov traces (lazy), {args.per_round} selected per round, "
          f"{args.rounds} rounds")
    print(f"{'devices':>8} {'wall s':>7} {'engine s':>8} {'events':>9} {'events/s':>9} "
          f"{'updates':>8} {'sim h':>7} {'peak MB':>8}")
    for n in sizes:
        t = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--child", str(n), "--rounds",
                            str(args.rounds), "--per-round", str(args.per_round)],
                           capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
        if p.returncode:
            raise SystemExit(f"{n} devices failed:\n{p.stderr[-3000:]}")
        r = json.loads(p.stdout.strip().splitlines()[-1])
        r["wall_s"] = wall
        res[n] = r
        print(f"{n:>8,} {wall:>7.1f} {r['run_s']:>8.1f} {r['events']:>9,} "
              f"{r['events'] / r['run_s']:>9,.0f} {r['updates']:>8,} {r['sim_h']:>7.1f} "
              f"{r['peak_mb']:>8.0f}")
    big, small = res[max(sizes)], res[min(sizes)]
    if max(sizes) >= 100_000:
        print(f"{max(sizes):,} devices vs targets: wall {big['wall_s']:.1f} s / 60 s = "
              f"{big['wall_s'] / 60:.2f}, peak {big['peak_mb']:.0f} MB / 2048 MB = "
              f"{big['peak_mb'] / 2048:.2f}")
    print(f"{max(sizes):,} / {min(sizes):,} devices: wall x{big['wall_s'] / small['wall_s']:.2f}"
          f", peak memory x{big['peak_mb'] / small['peak_mb']:.2f}")
    if args.async_devices:
        n = args.async_devices
        t = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--child", str(n), "--child-async",
                            "--rounds", str(args.rounds), "--concurrency",
                            str(args.concurrency), "--buffer", str(args.buffer)],
                           capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
        if p.returncode:
            raise SystemExit(f"async run failed:\n{p.stderr[-3000:]}")
        r = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"async (FedBuff), {n:,} devices, concurrency {args.concurrency:,}, buffer "
              f"{args.buffer}: {r['rounds']:,} aggregations, {r['jobs']:,} jobs ended "
              f"({r['updates']:,} updates aggregated), {r['sim_h']:.1f} simulated h; wall "
              f"{wall:.1f} s (engine {r['run_s']:.1f} s), peak {r['peak_mb']:.0f} MB; wall / "
              f"60 s target = {wall / 60:.2f}")


if __name__ == "__main__":
    main()
