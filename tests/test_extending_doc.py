"""The extending guide's example works exactly as written.

The code and YAML are taken from ``docs/extending.md`` (the fenced block after each
``<!-- file: NAME -->`` marker, and the command after ``<!-- run -->``), written to a
temporary folder and run with the real ``fleetsim`` command, with small overrides only.
"""

from __future__ import annotations

import csv
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fleetsim import plugins as scenario_mod
from fleetsim.cli import main
from fleetsim.policies import POLICIES
from fleetsim.server.selection import SELECTORS

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
FAST = ["--quiet", "--set", "training.rounds=2", "--set", "fleet.devices=10",
        "--set", "training.clients_per_round=3"]


def blocks() -> tuple[dict[str, str], str]:
    """The files the guide shows, by name, and its run command."""
    text = DOC.read_text()
    fence = r"\n```[a-z]*\n(.*?)\n```"
    files = dict(re.findall(r"<!-- file: (\S+) -->" + fence, text, re.S))
    runs = re.findall(r"<!-- run -->" + fence, text, re.S)
    assert len(runs) == 1
    return files, runs[0]


def write_example(tmp_path: Path) -> tuple[dict[str, str], list[str]]:
    files, command = blocks()
    for name, body in files.items():
        (tmp_path / name).write_text(body + "\n")
    argv = shlex.split(command)
    assert argv[:2] == ["fleetsim", "run"]
    return files, argv[1:]


def fleetsim_command() -> list[str]:
    script = Path(sys.executable).parent / "fleetsim"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fleetsim.cli"]


def test_policy_example_is_short() -> None:
    files, _ = blocks()
    assert {"busy_dropout.py", "busy.yaml", "fastest_first.py"} <= set(files)
    assert len(files["busy_dropout.py"].splitlines()) < 40


def test_example_runs_as_written(tmp_path: Path) -> None:
    _, args = write_example(tmp_path)
    done = subprocess.run(fleetsim_command() + args + FAST, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "runs" / "busy"
    rows = list(csv.DictReader((out / "rounds.csv").open()))
    assert len(rows) == 2
    # the plugin's policy really ran: busy devices trained thinner networks
    assert min(float(r["mean_kept_share"]) for r in rows if r["mean_kept_share"]) < 1.0


def test_selector_example_and_error_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # plugins register into the process-wide registries: undo that after the test
    monkeypatch.setattr(POLICIES, "_items", dict(POLICIES._items))
    monkeypatch.setattr(SELECTORS, "_items", dict(SELECTORS._items))
    monkeypatch.setattr(scenario_mod, "_LOADED_PLUGINS", {})
    _, args = write_example(tmp_path)
    yaml_file = str(tmp_path / args[1])
    rest = ["--out", str(tmp_path / "sel"), *FAST]
    assert main(["run", yaml_file, *rest, "--set", "plugins=[busy_dropout.py, fastest_first.py]",
                 "--set", "selector.name=fastest-first"]) == 0
    assert (tmp_path / "sel" / "rounds.csv").exists()
    capsys.readouterr()

    assert main(["run", yaml_file, *rest, "--set", "policy.options={rat: 0.5}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert yaml_file in err and "'policy.options.rat'" in err and "rate (default 0.5)" in err
    assert main(["run", yaml_file, *rest, "--set", "policy.name=busy-dropuot"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "'policy.name'" in err and "busy-dropout" in err and "fedavg" in err


def model_blocks() -> tuple[dict[str, str], str]:
    """The guide's user-network files, by name, and their run command."""
    text = DOC.read_text()
    fence = r"\n```[a-z]*\n(.*?)\n```"
    files = dict(re.findall(r"<!-- model-file: (\S+) -->" + fence, text, re.S))
    runs = re.findall(r"<!-- model-run -->" + fence, text, re.S)
    assert len(runs) == 1 and {"tiny_resnet.py", "tiny_resnet.yaml"} <= set(files)
    return files, runs[0]


def test_user_network_example_runs_as_written(tmp_path: Path) -> None:
    files, command = model_blocks()
    for name, body in files.items():
        (tmp_path / name).write_text(body + "\n")
    argv = shlex.split(command)
    assert argv[:2] == ["fleetsim", "run"]
    done = subprocess.run(fleetsim_command() + argv[1:] + ["--quiet"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader((tmp_path / "runs" / "tiny-resnet" / "rounds.csv").open()))
    assert len(rows) == 2
    # the groups the guide names: the residual ties conv2 to the stem
    from fleetsim.nn import build_model

    model = build_model("user", (1, 8, 8), 10, {"factory": f"{tmp_path}/tiny_resnet.py:make_net"})
    assert [g.name for g in model.groups] == ["stem", "conv1"]
    assert model.specs["net.conv2.weight"].out == "stem"
