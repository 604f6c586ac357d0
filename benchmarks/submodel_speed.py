"""Do sub-networks really train faster, as much as their MACs promise?

For each model and keep share (uniform dropout on every group), times real single-threaded
training steps (channel choice, sliced forward, cross-entropy, backward, SGD update of the
kept elements: the step the simulator trains and :mod:`fleetsim.calibration` measures) and
compares the measured speedup over the full network with the one predicted by the MAC
ratio.

Three more columns say where a shortfall comes from. ``native`` is the speedup of a
network *built* at the kept widths (no slicing at all): what the kernels give at those
widths. ``sliced/native`` is then what the slicing machinery costs (cutting out the kept
weights, writing the updated ones back). ``blocked`` is the speedup that MACs predict with
kept channels rounded up to the kernels' channel block (``--channel-block``; by default 16
with AVX-512, 8 with AVX2): what a cost model calibrated by ``fleetsim profile`` predicts.

Times are medians. Every repeat visits all configurations in turn, so slow drift of the
host hits them all alike; a visit runs three steps back to back, as a device trains its
local steps, and times the last two (the first re-acquires the memory that the previous
configuration released). Speedups are also given by the thread's CPU time, which other
processes on the host do not inflate.

Usage: ``python benchmarks/submodel_speed.py [--repeats N] [--batch B,...] [--models a,b]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from fleetsim.calibration import train_step
from fleetsim.costs import CostModel
from fleetsim.nn import DroppableNet, build_model, kept_counts

KEEP_SHARES = (1.0, 0.75, 0.5, 0.25)
# arch -> (input shape, classes): each on the data it is made for
MODELS = {
    "cnn4": ((1, 28, 28), 10),
    "femnist_cnn": ((1, 28, 28), 62),
    "mcmahan_cnn": ((1, 28, 28), 10),
    "resnet8": ((3, 32, 32), 10),
}
CNNS = ("cnn4", "femnist_cnn", "mcmahan_cnn")  # the target applies to these


def native_options(arch: str, counts: dict[str, int], keep: float) -> dict[str, Any]:
    """Options that build ``arch`` natively at the kept widths."""
    if arch == "cnn4":
        return {"channels": tuple(counts[f"c{i}"] for i in range(4))}
    if arch in ("femnist_cnn", "mcmahan_cnn"):
        return {"channels": (counts["conv1"], counts["conv2"]), "hidden": counts["fc1"]}
    if arch.startswith("resnet"):
        return {"width": keep}
    raise KeyError(arch)


class Config:
    """One timed configuration: a model, its optimizer and data, and a dropout vector."""

    def __init__(self, arch: str, options: dict[str, Any], vector_rate: float, batch: int,
                 seed: int) -> None:
        shape, classes = MODELS[arch]
        torch.manual_seed(seed)
        self.model: DroppableNet = build_model(arch, shape, classes, options).train()
        self.x = torch.randn(batch, *shape)
        self.y = torch.randint(0, classes, (batch,))
        self.vector = [vector_rate] * len(self.model.groups)
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def visit(self, gen: torch.Generator, record: bool, steps: int = 3) -> None:
        """``steps`` steps back to back; all but the first are timed when ``record``."""
        train_step(self.model, self.x, self.y, self.vector, gen)
        for _ in range(steps - 1):
            w0, c0 = time.perf_counter(), time.thread_time()
            train_step(self.model, self.x, self.y, self.vector, gen)
            if record:
                self.wall.append(time.perf_counter() - w0)
                self.cpu.append(time.thread_time() - c0)

    def medians(self) -> tuple[float, float]:
        return statistics.median(self.wall), statistics.median(self.cpu)


def default_block() -> int:
    """Channel block of this CPU's convolution kernels: floats per SIMD register."""
    return {"AVX512": 16, "AVX2": 8}.get(torch.backends.cpu.get_cpu_capability(), 1)


def measure(archs: list[str], batch: int, repeats: int, warmup: int, block: int,
            seed: int = 0) -> list[dict[str, Any]]:
    """One row per (model, keep share): MACs, times, predicted and measured speedups."""
    sliced: dict[tuple[str, float], Config] = {}
    native: dict[tuple[str, float], Config] = {}
    for arch in archs:
        full = Config(arch, {}, 0.0, batch, seed)
        for keep in KEEP_SHARES:
            sliced[(arch, keep)] = Config(arch, {}, 1.0 - keep, batch, seed)
            if keep < 1.0:
                counts = kept_counts(full.model.groups, [1.0 - keep] * len(full.model.groups))
                native[(arch, keep)] = Config(arch, native_options(arch, counts, keep), 0.0,
                                              batch, seed)
    everything = [*sliced.values(), *native.values()]
    gen = torch.Generator().manual_seed(seed)
    for rep in range(-warmup, repeats):
        for cfg in everything:
            cfg.visit(gen, record=rep >= 0)

    rows = []
    for arch in archs:
        model = sliced[(arch, 1.0)].model
        full_macs = model.measure().macs
        blocked = CostModel(model, channel_block=block)
        full_wall, full_cpu = sliced[(arch, 1.0)].medians()
        for keep in KEEP_SHARES:
            cfg = sliced[(arch, keep)]
            macs = model.measure(kept_counts(model.groups, cfg.vector)).macs
            wall, cpu = cfg.medians()
            nat_wall = native[(arch, keep)].medians()[0] if keep < 1.0 else full_wall
            predicted, measured = full_macs / macs, full_wall / wall
            rows.append({"model": arch, "keep": keep, "macs": macs, "step_ms": wall * 1e3,
                         "predicted": predicted, "measured": measured,
                         "blocked": blocked.step_macs(None, 1) / blocked.step_macs(cfg.vector, 1),
                         "ratio": measured / predicted, "cpu_ratio": full_cpu / cpu / predicted,
                         "native": full_wall / nat_wall, "sliced_native": nat_wall / wall})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'model':<12} {'keep':>5} {'MACs/sample':>12} {'step ms':>8} {'predicted':>9} "
            f"{'measured':>9} {'meas/pred':>9} {'(cpu)':>6} {'native':>7} {'sliced/native':>13} "
            f"{'blocked':>8} {'meas/blk':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<12} {r['keep']:>5.2f} {r['macs']:>12,d} "
                     f"{r['step_ms']:>8.2f} {r['predicted']:>8.2f}x {r['measured']:>8.2f}x "
                     f"{r['ratio']:>9.2f} {r['cpu_ratio']:>6.2f} {r['native']:>6.2f}x "
                     f"{r['sliced_native']:>13.2f} {r['blocked']:>7.2f}x "
                     f"{r['measured'] / r['blocked']:>8.2f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--models", default="cnn4,femnist_cnn,mcmahan_cnn,resnet8")
    ap.add_argument("--batch", default="32,128", help="batch sizes, comma-separated: small "
                    "batches show the fixed per-step costs, large ones the compute")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--channel-block", type=int, default=default_block(),
                    help="channel block for the 'blocked' prediction (default: this CPU's, "
                    f"{default_block()})")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one simulated device = one core
    summary = []
    for batch in (int(b) for b in args.batch.split(",")):
        rows = measure(args.models.split(","), batch, args.repeats, args.warmup,
                       args.channel_block)
        print(f"training step, batch {batch}, 1 thread, median of {2 * args.repeats}, "
              f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}; "
              "speedups over keep 1.00 (wall clock unless noted)")
        print(table(rows))
        print()
        half = [r for r in rows if r["keep"] == 0.5 and r["model"] in CNNS]
        if half:
            summary.append(f"keep 0.5, CNNs, batch {batch}, measured/predicted speedup: "
                           + ", ".join(f"{r['model']} {r['ratio']:.2f}" for r in half)
                           + f" (target >= 0.70; worst {min(r['ratio'] for r in half):.2f})")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
