"""``fleetsim model``: groups, channels and MACs of a scenario's model, by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetsim.cli import main

REPO = Path(__file__).resolve().parents[1]
NETS = REPO / "tests" / "nn" / "user_nets.py"


def test_mlp_macs_by_hand(capsys: pytest.CaptureFixture[str]) -> None:
    # tiny.yaml: an MLP 64 -> 16 -> 16 -> 10 on 8x8 digits
    assert main(["model", str(REPO / "scenarios" / "tiny.yaml")]) == 0
    out = capsys.readouterr().out
    full = 64 * 16 + 16 * 16 + 16 * 10  # 1440
    assert f"forward MACs per sample: {full:,}" in out
    assert f"mini-batch of 16 (forward x (1 + backward factor 2)): {full * 16 * 3:,}" in out
    params = (64 * 16 + 16) + (16 * 16 + 16) + (16 * 10 + 10)
    assert f"parameters: {params:,} ({params * 4:,} bytes" in out
    # h0 down to one channel keeps 64*1 + 1*16 + 160 MACs; h1 keeps 1024 + 16 + 10
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.startswith("  h")}
    assert rows["h0"][1] == "16" and rows["h0"][2] == f"{full - (64 + 16 + 160):,}"
    assert rows["h1"][1] == "16" and rows["h1"][2] == f"{full - (1024 + 16 + 10):,}"


def test_user_model_groups(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    sets = ["model.options={}", f"model.options.factory={NETS}:make_cnn4", "model.arch=user",
            "model.options.kwargs={channels: [4, 6, 8, 8]}", "data.dataset=digits"]
    args = ["model", str(REPO / "scenarios" / "tiny.yaml")]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "droppable groups: 4" in out
    channels = [ln.split()[1] for ln in out.splitlines()
                if ln.startswith("  ") and ln.split()[1:2] and ln.split()[1].isdigit()]
    assert channels == ["4", "6", "8", "8"]


def test_bad_scenario_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", str(REPO / "scenarios" / "tiny.yaml"), "--set",
                 "model.arch=nope"]) == 2
    assert "model.arch" in capsys.readouterr().err
