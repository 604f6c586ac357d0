"""User networks (model.arch: user): what the traced functional forward costs, and how
much faster their sub-networks train.

For each example network of ``examples/models/`` (at 3x32x32, 10 classes), times
single-threaded training steps (the simulator's: channel choice, sliced forward,
cross-entropy, backward, SGD on the kept elements; :func:`fleetsim.calibration.train_step`)
of the full network and of uniform keep shares, and a plain PyTorch step of the same
module (``net(x)``, backward, ``torch.optim.SGD``). Printed per network: ``traced/plain``,
the traced full network's step time over the plain module's (what interpreting the graph
costs), and per keep share the measured speedup over the traced full network next to the
one its MAC ratio predicts. Medians of thread CPU time, configurations interleaved.

Usage: ``python benchmarks/user_models.py [--repeats N] [--batch B]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from fleetsim.calibration import train_step
from fleetsim.nn import build_model, kept_counts

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "models"
NETS = {"resnet18": ("resnet18.py:make_net", {"width": 0.25}),
        "mobilenetv2": ("mobilenetv2.py:make_net", {"width": 0.5})}
KEEP = (1.0, 0.75, 0.5, 0.25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name, (ref, kwargs) in NETS.items():
        bench(name, ref, kwargs, args.batch, args.repeats)


def bench(name: str, ref: str, kwargs: dict[str, object], batch: int, repeats: int) -> None:
    """Time and print one network's steps (see the module docstring)."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_model("user", (3, 32, 32), 10,
                        {"factory": f"{EXAMPLES / ref}", "kwargs": kwargs}).train()
    build_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, 3, 32, 32), generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    opt = torch.optim.SGD(model.net.parameters(), lr=1e-3)
    n = len(model.groups)

    def plain() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model.net(x), y).backward()
        opt.step()

    steps = {"plain": plain} | {
        k: (lambda k=k: train_step(model, x, y, (1.0 - k,) * n, gen)) for k in KEEP}
    times: dict[object, list[float]] = {s: [] for s in steps}
    for r in range(-1, repeats):
        for s, fn in steps.items():
            fn()  # a device trains steps back to back: time the second
            c0 = time.thread_time()
            fn()
            if r >= 0:
                times[s].append(time.thread_time() - c0)
    med = {s: statistics.median(v) for s, v in times.items()}
    full_macs = model.measure().macs
    print(f"{name}: {n} groups, {full_macs / 1e6:.1f} MMACs/sample, built and traced "
          f"in {build_s:.2f} s, batch {batch}")
    for k in KEEP[1:]:
        macs = model.measure(kept_counts(model.groups, (1.0 - k,) * n)).macs
        print(f"  keep {k:.2f}: speedup {med[1.0] / med[k]:.2f}x measured, "
              f"{full_macs / macs:.2f}x by MACs")
    print(f"  traced/plain (full network): {med[1.0] / med['plain']:.3f}")


if __name__ == "__main__":
    main()
