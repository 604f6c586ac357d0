"""The cost model: MACs per step, bytes, and calibrated seconds in a scenario."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetsim.build import build, load_scenario
from fleetsim.calibration import Calibration, write_calibration
from fleetsim.costs import CostModel, comm_seconds
from fleetsim.nn import build_model
from tests.test_engine import ONE_DEVICE


def test_step_macs_scale_with_batch_and_backward_factor() -> None:
    m = build_model("cnn4", (1, 8, 8), 10, {"channels": [4, 4, 4, 4]})
    c = CostModel(m, backward_factor=2.0)
    fwd = m.measure().macs
    assert c.step_macs(None, 16) == fwd * 16 * 3
    assert CostModel(m, backward_factor=1.0).step_macs(None, 16) == fwd * 16 * 2
    half = (0.5,) * 4
    assert c.step_macs(half, 16) < c.step_macs(None, 16)
    assert c.model_bytes(half) < c.model_bytes() == 4 * sum(p.numel() for p in m.parameters())


def test_comm_seconds() -> None:
    assert comm_seconds(1_000_000, 8.0, 0.1) == pytest.approx(1.1)


def test_scenario_uses_calibration_file(tmp_path: Path) -> None:
    a, b = 2e-9, 0.004  # host: 0.5 GMAC/s plus 4 ms per step
    write_calibration(Calibration(a, b, 0.99, "mlp"), tmp_path / "cal.json")
    sc = load_scenario(None, ["training.mode=timing", f"costs.calibration={tmp_path}/cal.json",
                              "training.rounds=1"], text=ONE_DEVICE)
    eng = build(sc).engine
    macs = eng.costs.model.measure().macs * 16 * 3
    assert eng.costs.step_macs(None, 16) == pytest.approx(macs + b / a)
    log = eng.run()
    peak = 1.0e9  # the class's peak: 2x this host
    path = eng.fleet.path(0)
    nbytes = eng.costs.model_bytes()
    expect = path.download_s(nbytes) + 5 * (a * macs + b) / (a * peak) + path.upload_s(nbytes)
    assert log.timeline[0].t_end == pytest.approx(expect, rel=1e-9)


def test_missing_calibration_file_is_a_user_error(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from fleetsim.cli import main

    (tmp_path / "s.yaml").write_text(ONE_DEVICE)
    code = main(["run", str(tmp_path / "s.yaml"), "--set", "costs.calibration=nope.json"])
    err = capsys.readouterr().err
    assert code == 2 and "nope.json" in err and "Traceback" not in err


def test_channel_block_rounds_kept_channels_up_in_timed_macs_only() -> None:
    m = build_model("cnn4", (1, 8, 8), 10, {"channels": [16, 32, 32, 32]})
    exact, blocked = CostModel(m), CostModel(m, channel_block=16)
    v = (0.25, 0.5, 0.6, 0.0)  # keeps 12, 16, 13, 32 channels
    padded = m.measure({"c0": 16, "c1": 16, "c2": 16, "c3": 32}).macs
    assert blocked.timed_forward_macs(v) == padded
    assert blocked.step_macs(v, 4) == padded * 4 * 3
    assert exact.step_macs(v, 4) == exact.step(v, 4).macs < blocked.step_macs(v, 4)
    # what is reported stays exact
    assert blocked.step(v, 4) == exact.step(v, 4)
    assert blocked.model_bytes(v) == exact.model_bytes(v)
    # whole blocks and the full network are unaffected; a group never grows past its size
    whole = (0.0, 0.5, 0.5, 0.5)  # 16 channels each
    assert blocked.step_macs(whole, 4) == exact.step_macs(whole, 4)
    assert CostModel(m, channel_block=64).step_macs(v, 4) == exact.step_macs(None, 4)
    with pytest.raises(ValueError, match="channel_block"):
        CostModel(m, channel_block=0)


def test_scenario_takes_channel_block_from_calibration(tmp_path: Path) -> None:
    from fleetsim.errors import UserError

    write_calibration(Calibration(2e-9, 0.0, 0.99, "mlp", channel_block=8),
                      tmp_path / "cal.json")
    base = ["training.mode=timing", f"costs.calibration={tmp_path}/cal.json"]
    assert build(load_scenario(None, base, text=ONE_DEVICE)).engine.costs.channel_block == 8
    sc = load_scenario(None, [*base, "costs.channel_block=8"], text=ONE_DEVICE)
    assert build(sc).engine.costs.channel_block == 8
    # another block would apply the fit's a and b to MACs counted differently
    sc = load_scenario(None, [*base, "costs.channel_block=1"], text=ONE_DEVICE)
    with pytest.raises(UserError, match=r"^s.yaml: at 'costs\.channel_block'.*blocks of 8"):
        build(sc, source="s.yaml")
    # without a calibration the scenario's block is used as is
    sc = load_scenario(None, ["training.mode=timing", "costs.channel_block=4"], text=ONE_DEVICE)
    assert build(sc).engine.costs.channel_block == 4
