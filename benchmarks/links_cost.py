"""What the shared-link model costs per round, measured in one run (no engine).

One "round": N uploads of S bytes start at uniformly random times in [0, 100) s and
share links max-min fairly (fleetsim.links.FlowNetwork, driven event by event as the
engine drives it). Cases:

- star: one 20 Mbit/s server link, two device classes (own caps 10 and 5 Mbit/s);
- cells: 10 cells of 20 Mbit/s behind one 200 Mbit/s backhaul;
- traces: the star, every device capped by its own Markov bandwidth trace (each flow
  then is a group of its own: the expensive case).

    python benchmarks/links_cost.py [--flows 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fleetsim.links import FlowNetwork, LinkSpec
from fleetsim.traces.bandwidth import make_generator

MBIT = 1e6 / 8


def one_round(net: FlowNetwork, starts: np.ndarray, paths: list, own: list,
              nbytes: float) -> int:
    done, i, n = 0, 0, len(starts)
    while i < n or net.active():
        ev = net.next_event()
        t_next = starts[i] if i < n else np.inf
        if ev is not None and ev.time_s <= t_next:
            done += len(net.advance(ev.time_s))
        else:
            net.start(float(t_next), i, paths[i], nbytes, own[i])
            i += 1
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--nbytes", type=float, default=2e6)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    n = a.flows
    gen = make_generator("markov_levels", {"levels_mbps": [2.0, 5.0, 10.0],
                                           "mean_dwell_s": 30.0}, "bench")
    cases = {
        "star": ({"server": LinkSpec(20 * MBIT)}, lambda i: ["server"],
                 lambda i: (10 if i % 2 else 5) * MBIT),
        "cells": ({**{f"cell{k}": LinkSpec(20 * MBIT) for k in range(10)},
                   "backhaul": LinkSpec(200 * MBIT)},
                  lambda i: [f"cell{i % 10}", "backhaul"],
                  lambda i: (10 if i % 2 else 5) * MBIT),
        "traces": ({"server": LinkSpec(20 * MBIT)}, lambda i: ["server"],
                   lambda i: gen.make(3600.0, np.random.default_rng(i))),
    }
    print(f"{n} uploads of {a.nbytes:g} B a round, starts uniform in [0, 100) s; "
          f"{a.rounds} rounds per case")
    for name, (links, path, own) in cases.items():
        paths = [path(i) for i in range(n)]
        owns = [own(i) for i in range(n)]
        t0 = time.perf_counter()
        for _ in range(a.rounds):
            starts = np.sort(rng.uniform(0, 100, n))
            assert one_round(FlowNetwork(links), starts, paths, owns, a.nbytes) == n
        per = (time.perf_counter() - t0) / a.rounds
        print(f"{name:8s} {per * 1e3:8.1f} ms per round ({per / n * 1e6:6.1f} us per flow)")


if __name__ == "__main__":
    main()
