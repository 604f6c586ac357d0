"""Host calibration: the fit, the file, and a quick real profile of cnn4."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fleetsim.calibration import (
    Calibration,
    CalibrationPoint,
    blocked_train_macs,
    default_vectors,
    fit,
    fit_block,
    load_calibration,
    profile_host,
    run_profile,
    train_macs,
    write_calibration,
)
from fleetsim.errors import UserError
from fleetsim.nn import build_model, kept_counts


def _calibration() -> Calibration:
    points = (CalibrationPoint((0.0, 0.5), 8, 1000, 2e-3, 1.9e-3),
              CalibrationPoint((0.25, 0.25), 16, 3000, 4e-3, 3.8e-3))
    return Calibration(1e-6, 1e-3, 0.99, "mlp", "wall", 2.0, (1, 6, 6), 5,
                       {"node": "test"}, points, channel_block=4, r2_exact=0.9)


def test_fit_recovers_a_line() -> None:
    a, b, r2 = fit([1e6, 2e6, 4e6, 8e6], [1e-3 + 2e-9 * m for m in (1e6, 2e6, 4e6, 8e6)])
    assert a == pytest.approx(2e-9) and b == pytest.approx(1e-3) and r2 == pytest.approx(1.0)


def test_fit_block_finds_the_block_the_times_follow() -> None:
    """Times made from MACs with channels rounded up to blocks of 8: the fit finds 8."""
    model = build_model("cnn4", (1, 8, 8), 3, {"channels": (16, 16, 32, 32)})
    configs = [(v, bs) for bs in (4, 8, 16) for v in default_vectors(4, n_random=5, seed=2)]
    truth = blocked_train_macs(model, configs, 8)
    times = [1e-3 + 2e-10 * m for m in truth]
    block, macs, a, b, r2 = fit_block(model, configs, times)
    assert block == 8 and macs == truth
    assert a == pytest.approx(2e-10) and b == pytest.approx(1e-3) and r2 == pytest.approx(1.0)
    assert fit(blocked_train_macs(model, configs, 1), times)[2] < 0.999  # exact MACs miss
    # times that follow exact MACs keep block 1: a block must fit strictly better
    exact = blocked_train_macs(model, configs, 1)
    assert fit_block(model, configs, [1e-3 + 2e-10 * m for m in exact])[0] == 1


def test_fit_block_never_picks_a_fit_with_a_non_positive_slope() -> None:
    model = build_model("cnn4", (1, 8, 8), 3, {"channels": (16, 16, 32, 32)})
    configs = [(v, bs) for bs in (4, 8) for v in default_vectors(4, n_random=3, seed=2)]
    falling = [1.0 - 1e-9 * m for m in blocked_train_macs(model, configs, 1)]
    with pytest.raises(ValueError, match="grows with the MACs"):
        fit_block(model, configs, falling)


def test_version_1_files_still_load_as_exact_macs(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text('{"format": "fleetsim-calibration", "version": 1, "a_s_per_mac": 1e-9, '
                    '"b_s": 0.001, "r2": 0.9, "arch": "cnn4", "points": [{"vector": [0.5], '
                    '"batch_size": 8, "train_macs": 1000, "wall_s": 0.002, "cpu_s": 0.002}]}')
    cal = load_calibration(path)
    assert cal.channel_block == 1 and cal.r2_exact is None
    assert cal.points[0].fit_macs == 1000


def test_default_vectors_cover_uniform_rates_and_random_ones() -> None:
    vs = default_vectors(3, n_random=2, seed=1)
    assert vs[:4] == [(0.0,) * 3, (0.25,) * 3, (0.5,) * 3, (0.75,) * 3]
    assert len(vs) == 6 and all(len(v) == 3 and all(0 <= d <= 0.8 for d in v) for v in vs)
    assert vs == default_vectors(3, n_random=2, seed=1)


def test_train_macs_are_forward_macs_times_batch_times_three() -> None:
    model = build_model("cnn4", (1, 8, 8), 3, {"channels": (4, 4, 8, 8)})
    v = [0.5, 0.0, 0.25, 0.5]
    fwd = model.measure(kept_counts(model.groups, v)).macs
    assert train_macs(model, v, 8) == fwd * 8 * 3
    assert train_macs(model, v, 8, backward_factor=1.0) == fwd * 8 * 2


def test_file_round_trip(tmp_path: Path) -> None:
    cal = _calibration()
    path = tmp_path / "sub" / "host.json"
    write_calibration(cal, path)
    assert load_calibration(path) == cal
    assert [p.name for p in path.parent.iterdir()] == ["host.json"]  # no temp file left
    doc = json.loads(path.read_text())
    assert doc["format"] == "fleetsim-calibration" and doc["version"] == 2
    assert {"a_s_per_mac", "b_s", "r2", "arch", "host", "points"} <= set(doc)


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "host.json"
    write_calibration(_calibration(), path)
    before = path.read_text()
    broken = replace(_calibration(), host={"bad": object()})  # not JSON-serialisable
    with pytest.raises(TypeError):
        write_calibration(broken, path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["host.json"]


@pytest.mark.parametrize(("content", "problem"), [
    (None, "does not exist"),
    ("{not json", "is not valid JSON"),
    ('{"a": 1}', "is not a fleetsim calibration"),
    ('{"format": "fleetsim-calibration", "version": 99}', "format version 99"),
    ('{"format": "fleetsim-calibration", "version": 2, "a_s_per_mac": 1e-9, "b_s": 0, '
     '"r2": 1, "arch": "cnn4", "channel_block": 2.5}', "'channel_block'"),
    ('{"format": "fleetsim-calibration", "version": 1, "b_s": 0, "r2": 1, "arch": "x"}',
     "'a_s_per_mac'"),
    ('{"format": "fleetsim-calibration", "version": 1, "a_s_per_mac": -1, "b_s": 0, '
     '"r2": 1, "arch": "x"}', "non-positive"),
    ('{"format": "fleetsim-calibration", "version": 1, "a_s_per_mac": 1e-9, "b_s": 0, '
     '"r2": 1, "arch": ""}', "'arch'"),
    ('{"format": "fleetsim-calibration", "version": 1, "a_s_per_mac": 1e-9, "b_s": 0, '
     '"r2": 1, "arch": "cnn4", "points": [{"vector": [0]}]}', "malformed 'points'"),
    ('{"format": "fleetsim-calibration", "version": 1, "a_s_per_mac": 1e-9, "b_s": 0, '
     '"r2": 1, "arch": "cnn4", "channel_block": 0}', "'channel_block'"),
])
def test_bad_files_are_user_errors_naming_the_file(tmp_path: Path, content: str | None,
                                                   problem: str) -> None:
    path = tmp_path / "cal.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError) as err:
        load_calibration(path)
    msg = str(err.value)
    assert str(path) in msg and problem in msg and "fleetsim profile" in msg
    assert "\n" not in msg  # one paragraph


def test_unknown_clock_is_rejected() -> None:
    with pytest.raises(ValueError, match="clock"):
        profile_host("mlp", (1, 4, 4), 2, clock="sundial")


def test_quick_profile_of_cnn4_fits_well(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    """A real quick profile of cnn4 on this host: MACs explain the step time.

    The target (R^2 >= 0.95) is a figure `fleetsim profile` prints: the default grid gave
    0.977 to 0.986 on the 2-core dev host, with kept channels counted in blocks of 16 (AVX-512;
    0.885 to 0.896 on exact MACs: oneDNN pads a 12-filter layer to 16). The assertion leaves
    room for a busy shared host (timed by the thread's CPU clock; one re-measurement
    allowed), so that it fails on broken counting or timing, not on a loaded machine.
    """
    out = tmp_path / "cnn4.json"
    for _attempt in range(2):
        cal = run_profile("cnn4", str(out), quick=True, clock="cpu")
        if cal.r2 >= 0.8:
            break
    printed = capsys.readouterr().out
    assert "R^2" in printed and str(out) in printed
    assert cal.r2 >= 0.8, printed  # the 0.95 target is a figure `fleetsim profile` prints
    assert cal.a_s_per_mac > 0 and len(cal.points) == 21
    assert cal.r2_exact is not None and cal.r2 >= cal.r2_exact  # block 1 is a candidate
    assert load_calibration(out) == cal


def test_profile_command_rejects_a_bad_channel_block(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    from fleetsim.cli import main

    code = main(["profile", "--model", "cnn4", "--out", str(tmp_path / "c.json"),
                 "--channel-block", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--channel-block" in err and "Traceback" not in err
