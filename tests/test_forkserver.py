"""`fleetsim run` starts the pool's fork server before it imports torch itself."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs `fleetsim run` in a fresh interpreter with fleetsim.forkserver.start wrapped, so
# that each call says whether torch was imported by then.
DRIVER = textwrap.dedent("""
    import sys
    import fleetsim.forkserver as fs
    real = fs.start
    def spy(preload):
        print("start: torch imported =", "torch" in sys.modules, "preload =", list(preload))
        real(preload)
    fs.start = spy
    from fleetsim.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _run(tiny_yaml: Path, tmp_path: Path, backend: str) -> list[str]:
    p = subprocess.run([sys.executable, "-c", DRIVER, "run", str(tiny_yaml), "--quiet",
                        "--out", str(tmp_path / backend), "--set", f"training.backend={backend}",
                        "--set", "training.workers=1", "--set", "training.rounds=1"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / backend / "rounds.csv").exists()
    return [ln for ln in p.stdout.splitlines() if ln.startswith("start:")]


def test_run_starts_the_pool_server_before_torch(tiny_yaml: Path, tmp_path: Path) -> None:
    calls = _run(tiny_yaml, tmp_path, "pool")
    # first from cmd_run, before torch; then the pool's own call finds it running
    assert calls[0] == "start: torch imported = False preload = ['fleetsim.training']"
    assert len(calls) == 2


def test_inprocess_run_starts_no_server(tiny_yaml: Path, tmp_path: Path) -> None:
    assert _run(tiny_yaml, tmp_path, "inprocess") == []
