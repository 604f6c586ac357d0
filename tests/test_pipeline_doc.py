"""docs/pipeline.md's example runs as written (the YAML after ``<!-- file: -->`` and the
command after ``<!-- run -->``), with fewer rounds, and shows what the page says."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import h5py
import numpy as np

from fleetsim.cli import main
from fleetsim.results import read_rounds

DOC = Path(__file__).resolve().parents[1] / "docs" / "pipeline.md"
FAST = ["--quiet", "--set", "training.rounds=3"]


def blocks(marker: str = "run") -> tuple[dict[str, str], str]:
    text = DOC.read_text()
    fence = r"\n```[a-z]*\n(.*?)\n```"
    files = dict(re.findall(r"<!-- file: (\S+) -->" + fence, text, re.S))
    runs = re.findall(rf"<!-- {marker} -->" + fence, text, re.S)
    assert len(runs) == 1
    return files, runs[0]


def test_example_runs_as_written(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    files, command = blocks()
    for name, body in files.items():
        (tmp_path / name).write_text(body + "\n")
    argv = shlex.split(command)
    assert argv[:2] == ["fleetsim", "run"]
    monkeypatch.chdir(tmp_path)
    assert main(argv[1:] + FAST) == 0
    out = tmp_path / "runs" / "robust"
    with h5py.File(out / "run.h5") as f:
        attacker = f["timeline/attacker"][:]
        status = f["timeline/status"][:]
        up = f["timeline/bytes_up"][:]
    assert attacker.any() and not attacker.all()
    # the page's claim: about a fifth of the plain update's bytes
    assert main(argv[1:] + FAST + ["--out", "plain", "--set", "training.update_transforms=[]",
                                   "--set", "server.aggregator={name: mean}"]) == 0
    with h5py.File(tmp_path / "plain" / "run.h5") as f:
        plain_up = f["timeline/bytes_up"][:]
    done = status == 0
    ratio = float(np.median(up[done])) / float(np.median(plain_up[done]))
    assert 0.15 < ratio < 0.25
    assert np.isfinite(read_rounds(out / "rounds.csv")["accuracy"][-1])


def test_dp_variant_reports_epsilon(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    files, command = blocks("run-dp")
    for name, body in files.items():
        (tmp_path / name).write_text(body + "\n")
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(command)[1:] + FAST) == 0
    rows = read_rounds(tmp_path / "runs" / "dp" / "rounds.csv")
    assert (rows["epsilon"] > 0).all() and (np.diff(rows["epsilon"]) > 0).all()
    assert (rows["noise_std"] > 0).all()
