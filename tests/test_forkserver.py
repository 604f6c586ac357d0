"""``fleetsim run`` starts the pool's fork server before it imports torch, and only for
a pool run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY

# Run in a fresh interpreter: this test process has long imported torch, and may have
# started a fork server of its own for other tests.
PROBE = """
import sys
from multiprocessing import forkserver
from fleetsim import cli
args = cli.parser().parse_args(["run", sys.argv[1], *sys.argv[2:]])
cli._start_fork_server(args)
started = forkserver._forkserver._forkserver_pid is not None
print(started, "torch" in sys.modules, forkserver._forkserver._preload_modules)
"""

# ``fleetsim run`` itself: the server is asked for before anything imports torch
ORDER = """
import sys
from fleetsim import cli, forkserver
def start():
    print("torch imported first" if "torch" in sys.modules else "server first")
    sys.exit(0)
forkserver.start = start
cli.main(["run", sys.argv[1], "--set", "training.backend=pool"])
print("never started")
"""


@pytest.mark.parametrize(("sets", "started"), [
    (["--set", "training.backend=pool"], True),
    ([], False),  # the tiny scenario trains in-process: no server, no process wasted
    (["--set", "training.backend=pool", "--set", "training.mode=timing"], False),  # no
    # training, no workers
])
def test_fork_server_starts_first_for_pool_runs(tmp_path: Path, sets: list[str],
                                                started: bool) -> None:
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(TINY)
    out = subprocess.run([sys.executable, "-c", PROBE, str(scenario), *sets],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == str(started)
    assert out[1] == "False"  # torch not imported yet: the server's imports come first
    if started:
        assert "fleetsim.training" in " ".join(out[2:])


def test_fleetsim_run_starts_the_server_before_torch(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(TINY)
    out = subprocess.run([sys.executable, "-c", ORDER, str(scenario)], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "server first"


def test_a_bad_scenario_still_gets_its_error(tmp_path: Path) -> None:
    """The peek at the scenario says nothing; ``fleetsim run`` reports it (exit 2)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("rounds:", "roundz:"))
    p = subprocess.run([sys.executable, "-m", "fleetsim.cli", "run", str(bad), "--out",
                        str(tmp_path / "out")], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert "roundz" in p.stderr and "Traceback" not in p.stderr
