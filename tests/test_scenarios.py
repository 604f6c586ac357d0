"""Every shipped scenario is valid; the runnable ones run (tiny variants)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetsim.build import load_scenario
from fleetsim.cli import main

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((REPO / "scenarios").rglob("*.yaml"))
# data these need is the user's own (FEMNIST, CIFAR files)
NEEDS_USER_DATA = {"femnist.yaml", "cifar10.yaml"}


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: str(p.relative_to(REPO)))
def test_scenario_is_valid(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.name


@pytest.mark.parametrize("name", ["quickstart.yaml", "distreal-mnist.yaml",
                                  "paper/mnist.yaml", "fedbuff.yaml", "fedasync.yaml",
                                  "distreal-fedbuff.yaml", "scale-1m-timing.yaml"])
def test_scenario_runs_tiny(name: str, tmp_path: Path) -> None:
    assert main(["run", str(REPO / "scenarios" / name), "--out", str(tmp_path), "--quiet",
                 "--set", "training.rounds=1", "--set", "training.local_steps=2",
                 "--set", "policy.name=fedavg"]) == 0
    assert (tmp_path / "run.h5").exists()
