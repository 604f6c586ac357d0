"""Golden hashes of small timing-only runs: any change to the engine's results (a
schedule, a status, a byte count, a row) changes them.

A refactor of the engine must leave them as they are; a change that is meant to change
results updates them, and says why in its commit. ``benchmarks/result_hashes.py`` checks
more scenarios (real training included) before and after a change.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from fleetsim.build import build, load_scenario
from fleetsim.results import timeline_arrays, write_rounds_csv

TINY = Path(__file__).parents[1] / "scenarios" / "tiny.yaml"

CASES = {
    "sync": ["training.rounds=30"],
    "sync-overcommit": ["training.rounds=30", "policy.options.stragglers=overcommit",
                        "policy.options.overcommit=2.0"],
    "sync-budget": ["training.rounds=1000", "training.time_budget_s=400"],
    "async": ["training.rounds=30", "server.mode=async", "server.concurrency=4",
              "server.buffer_size=2"],
}

# made with the engine before its split into timing, servers and rows (commit 6710fb8)
GOLDEN = {
    "sync": "cf1fb5108c2522d0230107fbe0aa7b2a3915b4189167d5b92cf20313b0088bf9",
    "sync-overcommit": "060881d916c781c2a6b1e82f2809f28ad468fe504c3fa4410b1c3b4917409f72",
    "sync-budget": "ab3d306fe984d493788bd50f009e469f64b243204c7d77dda5a4bc3763eb313e",
    "async": "e9c7220941c7a31501544324f75a5ae4dc444f3038378b58da45cc9c3dc9e985",
}


def run_hash(extra: list[str], tmp_path: Path) -> str:
    log = build(load_scenario(TINY, ["training.mode=timing", *extra])).engine.run()
    h = hashlib.sha256()
    for k, v in sorted(timeline_arrays(log).items()):
        h.update(k.encode())
        h.update(np.ascontiguousarray(v).tobytes())
    csv = tmp_path / "rounds.csv"
    write_rounds_csv(csv, log.rounds)
    h.update(csv.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_hash(case: str, tmp_path: Path) -> None:
    got = run_hash(CASES[case], tmp_path)
    assert got == GOLDEN[case], f"{case}: {got}"
