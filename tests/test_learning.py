"""Learning quality in CI: short real runs on scikit-learn's digits must really learn.

Every other end-to-end test checks bookkeeping (rows, bits, files); these check that the
model gets good. Five rounds of five devices on the 8x8 digits (10 classes: chance is 0.1)
with a deadline every device meets. Thresholds sit well below what was measured over
seeds 0-9 on this code (final accuracy, min / mean):

- fedavg, MLP, iid: 0.919 / 0.931
- heterofl (half width for the slow class), MLP: 0.897 / 0.916
- federated_dropout (rate 0.25), MLP: 0.914 / 0.929
- fedavg, MLP, dirichlet(0.5) labels: 0.855 / 0.907
- fedavg, cnn4 with batch norm: 0.961 / 0.967

so a run that learns at all passes, and one whose updates are lost, averaged wrongly or
stepped the wrong way does not. The whole file takes a few seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetsim.build import load_scenario, run_scenario

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.yaml"
BASE = ["training.rounds=5", "training.clients_per_round=5", "training.deadline_s=600",
        "training.local_steps=20", "eval.every_rounds=1"]
MLP = ["model.options={hidden: [32]}"]
FAST = ["fleet.classes.0.peak_macs_per_s=1.0e8", "fleet.classes.1.peak_macs_per_s=1.0e8"]

CASES = {
    "fedavg-mlp": (MLP, (0, 1, 2), 0.85),
    "heterofl-mlp": ([*MLP, "policy.name=heterofl",
                      "policy.options={widths: {fast: 1.0, slow: 0.5}}"], (0, 1, 2), 0.85),
    "federated_dropout-mlp": ([*MLP, "policy.name=federated_dropout",
                               "policy.options={rate: 0.25}"], (0, 1, 2), 0.85),
    "fedavg-mlp-dirichlet": ([*MLP, "data.partition={name: dirichlet, options: {alpha: 0.5}}"],
                             (0, 1), 0.8),
    "fedavg-cnn4-bn": (["model.arch=cnn4", "model.options={channels: [8, 16, 16, 16], norm: bn}",
                        "training.optimizer.lr=0.1", *FAST], (0,), 0.92),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_five_rounds_on_digits_learn(case: str) -> None:
    overrides, seeds, threshold = CASES[case]
    assert seeds
    for seed in seeds:
        sc = load_scenario(SCENARIO, [*BASE, *overrides, f"seed={seed}"])
        rows = run_scenario(sc).rounds
        assert len(rows) == 5
        assert all(r["completed"] >= 1 for r in rows), "every round aggregates something"
        first, last = rows[0]["accuracy"], rows[-1]["accuracy"]
        assert last >= threshold, (case, seed, [round(r["accuracy"], 3) for r in rows])
        assert last > first + 0.1  # and it got there by training, round after round
        assert rows[-1]["loss"] < rows[0]["loss"]


def test_a_device_arriving_as_the_round_ends_counts_as_arrived() -> None:
    sc = load_scenario(SCENARIO, [
        "training.mode=timing", "seed=3", "training.local_steps=20",
        "policy.name=federated_dropout", "model.arch=cnn4",
        "model.options={channels: [8, 16, 16, 16]}", *FAST])
    rows = run_scenario(sc).rounds  # AssertionError: cut back without recorded work
    assert len(rows) == 4
