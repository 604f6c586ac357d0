"""How fast are generated traces at fleet scale, written out and used lazily?

Two measurements, each in its own child process so that its peak memory is its own:

1. write: the Markov generator for 100,000 devices over one week, changing level every
   10 minutes on average (~1,000 breakpoints per device, ~10^8 in all), written to an HDF5
   trace file: wall time and file size. Target: well under 60 s.
2. run: a timing-only run (no training) of 100 rounds with 100 clients per round on the
   same fleet, its traces generated lazily per device (only devices the rounds touch are
   ever made): wall time and peak memory (ru_maxrss). Targets: under 60 s, under 2 GB.

Usage: ``python benchmarks/trace_generate.py [--devices N] [--rounds R] [--out DIR]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

WEEK_S = 7 * 86400.0
MARKOV = {"levels": [1.0, 0.6, 0.3], "mean_dwell_s": 600.0}


def _peak_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def part_write(devices: int, out: Path) -> dict[str, float]:
    from fleetsim.traces import GeneratedTraces

    src = GeneratedTraces.from_name("markov", MARKOV, devices, WEEK_S, seed=0)
    t0 = time.perf_counter()
    src.write(out, chunk_devices=4000)
    wall = time.perf_counter() - t0
    import h5py

    with h5py.File(out) as f:
        breakpoints = int(f["availability/offsets"][-1])
    return {"write_s": wall, "file_mb": out.stat().st_size / 1e6,
            "breakpoints_per_device": breakpoints / devices, "peak_mb": _peak_mb()}


def part_run(devices: int, rounds: int) -> dict[str, float]:
    from fleetsim.build import build
    from fleetsim.scenario import Scenario

    sc = Scenario.model_validate({
        "name": "trace-scale", "seed": 0,
        "data": {"dataset": "digits",
                 "partition": {"name": "iid", "options": {"samples_per_device": 32}}},
        "model": {"arch": "mlp", "options": {"hidden": [32]}},
        "fleet": {"devices": devices,
                  "traces": {"generator": "markov", "options": MARKOV, "horizon_s": WEEK_S}},
        "training": {"mode": "timing", "rounds": rounds, "clients_per_round": 100,
                     "deadline_s": 300, "local_steps": 20, "batch_size": 32},
        "output": {"plot": False},
    })
    t0 = time.perf_counter()
    built = build(sc)
    t_build = time.perf_counter() - t0
    log = built.engine.run()
    wall = time.perf_counter() - t0
    completed = sum(r["completed"] for r in log.rounds)
    return {"build_s": t_build, "run_s": wall, "rounds": len(log.rounds),
            "completed_updates": completed, "sim_s": log.rounds[-1]["t_end_s"],
            "peak_mb": _peak_mb()}


def _child(args: list[str]) -> dict[str, float]:
    r = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                       check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--out", help="folder for the trace file (default: a temporary one)")
    ap.add_argument("--part", choices=["write", "run"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.part == "write":
        print(json.dumps(part_write(a.devices, Path(a.out) / "markov_week.h5")))
        return
    if a.part == "run":
        print(json.dumps(part_run(a.devices, a.rounds)))
        return
    with tempfile.TemporaryDirectory(dir=a.out) as tmp:
        w = _child(["--part", "write", "--devices", str(a.devices), "--out", tmp])
    r = _child(["--part", "run", "--devices", str(a.devices), "--rounds", str(a.rounds)])
    print(f"markov traces, {a.devices} devices x 1 week, level change every 600 s on average")
    print(f"  write file : {w['write_s']:.1f} s, {w['file_mb']:.0f} MB, "
          f"{w['breakpoints_per_device']:.0f} breakpoints/device, peak {w['peak_mb']:.0f} MB "
          f"(target < 60 s)")
    print(f"timing-only run on lazy traces: {r['rounds']:.0f} rounds x 100 clients")
    print(f"  wall       : {r['run_s']:.1f} s (build {r['build_s']:.1f} s) (target < 60 s)")
    print(f"  peak memory: {r['peak_mb']:.0f} MB (target < 2048 MB)")
    print(f"  simulated  : {r['sim_s']:.1f} s, {r['completed_updates']:.0f} updates in time")


if __name__ == "__main__":
    main()
