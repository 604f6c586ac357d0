"""fleetsim compare on Ray: a real local Ray with 2 CPUs gives the local backend's bits."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetsim.batch import expand_grid, run_batch

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "scenarios" / "tiny.yaml")


def test_ray_backend_matches_local(tmp_path: Path) -> None:
    grid = expand_grid([TINY], "fedavg,fedavg:stragglers=wait", "0-1",
                       ["training.clients_per_round=3,1000"])  # 4 cells run, 4 fail
    local = run_batch(grid, tmp_path / "local", jobs=2, backend="local", progress=False)
    remote = run_batch(grid, tmp_path / "ray", jobs=2, backend="ray", progress=False)
    assert not ray.is_initialized()  # the batch shut down the Ray it started
    assert (local.ran, local.failed) == (remote.ran, remote.failed) == (4, 4)

    def files(out: Path) -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.csv"))}

    got, want = files(tmp_path / "ray"), files(tmp_path / "local")
    assert len([k for k in got if k.endswith("rounds.csv")]) == 4
    assert got == want  # rounds.csv of every cell, and failures.csv
    assert all((tmp_path / "ray" / Path(k).parent / "run.h5").is_file()
               for k in got if k.endswith("rounds.csv"))
