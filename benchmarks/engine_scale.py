"""How fast, and in how much memory, does the engine simulate huge fleets (timing only)?

Runs ``training.mode: timing`` (the same engine and schedule, no training) for fleets of
1,000, 10,000 and 100,000 devices with lazily generated Markov traces (availability
levels changing every ~10 minutes, on/off periods of hours), 100 devices selected per
round, 1,000 rounds. Each size runs in its own subprocess, so its peak memory (maximum
resident set size of that process) is its own. Prints, per size, the wall time of the
whole process (imports and set-up included) and of the simulation, simulated SimPy events
per device-round and peak memory; targets at 100,000 devices: under 60 s and under 2 GB. Columns:
``wall s`` the whole process, ``engine s`` the simulation alone (``Engine.run``), ``events``
SimPy events scheduled (and processed: a few per round, none per device), ``us/dev-rd``
engine microseconds per selected device per round, ``sim h`` simulated hours covered.
The last line is the ratio of the largest to the smallest fleet: what 100x more devices cost.

    python benchmarks/engine_scale.py [--sizes 1000,10000,100000] [--rounds 1000]
        [--per-round 100] [--async-devices 100000] [--concurrency 1000] [--buffer 100]
        [--huge-devices 1000000] [--huge-per-round 1000] [--only-huge]
        [--huge-runs counter,device] [--huge-horizon-s 86400]

Then the huge fleet: ``--huge-devices`` (1,000,000) devices, ``--huge-per-round``
(1,000) selected per round, ``--rounds`` rounds, the same scenario otherwise: the wall
time of its whole process, its CPU time (what the run costs on a machine shared with
others) and its peak memory; targets: under 120 s and under 4 GB on 2 cores. It runs
once per ``--huge-runs`` entry: by default with ``fleet.traces.streams: counter``
(counter-based trace streams, many devices per numpy call) and with the default
per-device streams, both with the random selector's ``candidates: draws`` (8K random
device ids a round instead of a permutation of the whole fleet; ``device:permutation``
adds the default selector). Its traces are ``--huge-horizon-s`` long (one day, against
the one-week default the smaller fleets keep): the run covers ~2.1 simulated hours, and
a counter-stream trace starts with the same breakpoints whatever its horizon, so the run
reads what one-week traces would give it. ``--huge-devices 0`` skips it, ``--only-huge``
runs nothing else. The load average (``os.getloadavg``, 1 minute) is printed at the
start and end of every run, since the figures mean little on a loaded machine.

After the synchronous sizes it runs the asynchronous server (FedBuff, ``server.mode:
async``) on ``--async-devices`` devices with ``--concurrency`` training at once and a
buffer of ``--buffer``, for ``--rounds`` aggregations (100,000 arrivals with the
defaults); target: under 60 s on 2 cores. ``--async-devices 0`` skips it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEEK_S = 7 * 86400.0
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
    streams: {streams}
    horizon_s: {horizon}
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
selector: {{name: random, options: {{candidates: {candidates}}}}}
"""


def child(devices: int, rounds: int, per_round: int, mode: str = "sync",
          concurrency: int = 10, buffer: int = 10, candidates: str = "permutation",
          streams: str = "device", horizon_s: float = WEEK_S) -> None:
    """One size, in this process: prints a JSON line of figures."""
    from fleetsim.build import build, load_scenario

    t0 = time.perf_counter()
    sc = load_scenario(None, text=SCENARIO.format(devices=devices, rounds=rounds,
                                                  per_round=per_round, mode=mode,
                                                  concurrency=concurrency, buffer=buffer,
                                                  candidates=candidates, streams=streams,
                                                  horizon=horizon_s))
    built = build(sc)
    setup_s = time.perf_counter() - t0
    log = built.engine.run()
    use = resource.getrusage(resource.RUSAGE_SELF)
    peak_mb = use.ru_maxrss / 1024  # KiB on Linux
    # CPU seconds of the whole process (imports included): what the run costs whatever
    # else shares the machine; on an idle machine close to the wall time
    cpu_s = use.ru_utime + use.ru_stime
    print(json.dumps({"setup_s": setup_s, "run_s": log.wall_s, "events": log.events,
                      "rounds": len(log.rounds), "updates": sum(r["completed"]
                                                                for r in log.rounds),
                      "jobs": len(log.timeline),
                      "sim_h": log.rounds[-1]["t_end_s"] / 3600, "peak_mb": peak_mb,
                      "cpu_s": cpu_s}), flush=True)
    # as `fleetsim run` does (fleetsim.cli.entry): the interpreter's shutdown would
    # otherwise garbage-collect the run's million DeviceRound objects one last time
    gc.freeze()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--async-devices", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=1000)
    ap.add_argument("--buffer", type=int, default=100)
    ap.add_argument("--huge-devices", type=int, default=1_000_000)
    ap.add_argument("--huge-per-round", type=int, default=1000)
    ap.add_argument("--only-huge", action="store_true")
    ap.add_argument("--huge-runs", default="counter,device",
                    help="the huge fleet's runs, comma-separated, each STREAMS[:CANDIDATES]"
                    " (streams counter or device, candidates draws or permutation; "
                    "default draws), e.g. counter,device,device:permutation")
    ap.add_argument("--huge-horizon-s", type=float, default=86400.0,
                    help="length (period) of the huge fleet's generated traces")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)  # internal: one size
    ap.add_argument("--child-async", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-candidates", default="permutation", help=argparse.SUPPRESS)
    ap.add_argument("--child-streams", default="device", help=argparse.SUPPRESS)
    ap.add_argument("--child-horizon-s", type=float, default=WEEK_S, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.rounds, args.per_round,
              "async" if args.child_async else "sync", args.concurrency, args.buffer,
              args.child_candidates, args.child_streams, args.child_horizon_s)
        return
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    print(f"load average at start: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    if not args.only_huge:
        small_fleets(args, env)
    if args.huge_devices:
        huge_fleet(args, env)
    print(f"load average at end: {os.getloadavg()[0]:.2f} (1 min)")


def run_child(args: argparse.Namespace, env: dict[str, str], devices: int, per_round: int,
              *extra: str) -> dict:
    """One size in its own process: its figures, with the wall time of the whole process."""
    t = time.perf_counter()
    p = subprocess.run([sys.executable, __file__, "--child", str(devices), "--rounds",
                        str(args.rounds), "--per-round", str(per_round), *extra],
                       capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"{devices} devices failed:\n{p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["wall_s"] = wall
    return r


def huge_fleet(args: argparse.Namespace, env: dict[str, str]) -> None:
    """The huge fleet once per ``--huge-runs`` entry: counter or per-device trace
    streams, with the random selector's ``candidates: draws`` (8K random ids a round) or
    its default permutation of the whole fleet each round."""
    n, k = args.huge_devices, args.huge_per_round
    for run in args.huge_runs.split(","):
        streams, _, candidates = run.partition(":")
        candidates = candidates or "draws"
        load = os.getloadavg()[0]
        r = run_child(args, env, n, k, "--child-candidates", candidates, "--child-streams",
                      streams, "--child-horizon-s", str(args.huge_horizon_s))
        print(f"huge fleet, timing-only, trace streams: {streams}, traces "
              f"{args.huge_horizon_s / 3600:g} h long, selector candidates: {candidates}: "
              f"{n:,} devices, {k:,} per round, {r['rounds']:,} rounds "
              f"({r['rounds'] * k:,} device-rounds, {r['updates']:,} updates, "
              f"{r['sim_h']:.1f} simulated h): wall "
              f"{r['wall_s']:.1f} s (set-up {r['setup_s']:.1f} s, engine {r['run_s']:.1f} s "
              f"= {r['run_s'] / (r['rounds'] * k) * 1e6:.0f} us per device-round; "
              f"{r['cpu_s']:.1f} CPU s in all), peak "
              f"{r['peak_mb']:.0f} MB; load {load:.2f} at start")
        print(f"  vs targets: wall {r['wall_s']:.1f} s / 120 s = {r['wall_s'] / 120:.2f} "
              f"(CPU {r['cpu_s'] / 120:.2f}), "
              f"peak {r['peak_mb']:.0f} MB / 4096 MB = {r['peak_mb'] / 4096:.2f}")


def small_fleets(args: argparse.Namespace, env: dict[str, str]) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    res = {}
    print(f"timing-only, Markov traces (lazy), {args.per_round} selected per round, "
          f"{args.rounds} rounds")
    print(f"{'devices':>8} {'wall s':>7} {'engine s':>8} {'events':>9} {'us/dev-rd':>9} "
          f"{'updates':>8} {'sim h':>7} {'peak MB':>8}")
    for n in sizes:
        r = res[n] = run_child(args, env, n, args.per_round)
        wall = r["wall_s"]
        us = r["run_s"] / (r["rounds"] * args.per_round) * 1e6
        print(f"{n:>8,} {wall:>7.1f} {r['run_s']:>8.1f} {r['events']:>9,} {us:>9,.0f} "
              f"{r['updates']:>8,} {r['sim_h']:>7.1f} {r['peak_mb']:>8.0f}")
    big, small = res[max(sizes)], res[min(sizes)]
    if max(sizes) >= 100_000:
        print(f"{max(sizes):,} devices vs targets: wall {big['wall_s']:.1f} s / 60 s = "
              f"{big['wall_s'] / 60:.2f}, peak {big['peak_mb']:.0f} MB / 2048 MB = "
              f"{big['peak_mb'] / 2048:.2f}")
    print(f"{max(sizes):,} / {min(sizes):,} devices: wall x{big['wall_s'] / small['wall_s']:.2f}"
          f", peak memory x{big['peak_mb'] / small['peak_mb']:.2f}")
    if args.async_devices:
        n = args.async_devices
        r = run_child(args, env, n, args.per_round, "--child-async", "--concurrency",
                      str(args.concurrency), "--buffer", str(args.buffer))
        wall = r["wall_s"]
        print(f"async (FedBuff), {n:,} devices, concurrency {args.concurrency:,}, buffer "
              f"{args.buffer}: {r['rounds']:,} aggregations, {r['jobs']:,} jobs ended "
              f"({r['updates']:,} updates aggregated), {r['sim_h']:.1f} simulated h; wall "
              f"{wall:.1f} s (engine {r['run_s']:.1f} s), peak {r['peak_mb']:.0f} MB; wall / "
              f"60 s target = {wall / 60:.2f}")


if __name__ == "__main__":
    main()
