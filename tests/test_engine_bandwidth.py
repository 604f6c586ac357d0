"""The engine with per-device bandwidth traces: a constant trace gives exactly today's
times; a varying one gives the exact integral of the rate (hand numbers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetsim.build import build, load_scenario

ONE = """
name: bw
seed: 3
data: {dataset: digits, partition: {name: iid}}
model: {arch: mlp, options: {hidden: [16]}}
fleet:
  devices: 2
  classes:
    - {name: only, share: 1.0, peak_macs_per_s: 1.0e7, uplink_mbps: 1.0,
       downlink_mbps: 4.0, latency_s: 0.0%s}
  traces: {generator: constant}
training:
  mode: timing
  rounds: 2
  clients_per_round: 2
  deadline_s: null
  local_steps: 3
  batch_size: 16
"""


def run(tmp_path: Path, bandwidth: str = "", extra: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    (tmp_path / "s.yaml").write_text(ONE % bandwidth)
    return build(load_scenario(tmp_path / "s.yaml", list(extra))).engine.run()


CONST = (", bandwidth: {up: {generator: constant, options: {mbps: 1.0}}, "
         "down: {generator: constant, options: {mbps: 4.0}}}")


@pytest.mark.parametrize("extra", [(), ("server.mode=async", "server.concurrency=2",
                                        "server.buffer_size=2")])
def test_a_constant_trace_gives_exactly_todays_times(tmp_path: Path,
                                                     extra: tuple[str, ...]) -> None:
    plain = run(tmp_path, "", extra)
    const = run(tmp_path, CONST, extra)
    key = [(o.device, o.round, o.t_start, o.t_end, o.status, o.bytes_down, o.bytes_up)
           for o in plain.timeline]
    assert key == [(o.device, o.round, o.t_start, o.t_end, o.status, o.bytes_down,
                    o.bytes_up) for o in const.timeline]
    assert plain.world == frozenset() and const.world == frozenset({"bandwidth"})
    assert all(np.isnan(o.down_s) for o in plain.timeline)
    assert all(o.down_s > 0 and o.up_s > 0 for o in const.timeline)


def test_a_varying_upload_rate_is_integrated_exactly(tmp_path: Path) -> None:
    plain = run(tmp_path)
    o = plain.timeline[0]
    nbits = o.bytes_up * 8.0
    up0 = nbits / 1e6  # the upload at 1 Mbit/s, no latency
    t_up = o.t_end - up0  # when training ended and the upload began
    # from t1, half way through that upload, the rate doubles: half the bits at 1 Mbit/s,
    # the other half at 2 Mbit/s
    t1 = t_up + up0 / 2
    (tmp_path / "bw.csv").write_text(
        "device,t_s,up_mbps,down_mbps\n"
        f"0,0,1.0,4.0\n0,{t1!r},2.0,4.0\n1,0,1.0,4.0\n")
    log = run(tmp_path, ", bandwidth: {file: bw.csv}", ("training.rounds=1",))
    v = next(x for x in log.timeline if x.device == 0)
    assert v.t_end == pytest.approx(t1 + (nbits / 2) / 2e6, rel=1e-12)
    assert v.up_s == pytest.approx(up0 / 2 + up0 / 4, rel=1e-12)
    w = next(x for x in log.timeline if x.device == 1)
    assert w.t_end == pytest.approx(plain.timeline[1].t_end, rel=1e-12)


def test_bytes_cut_off_under_a_varying_rate(tmp_path: Path) -> None:
    # an upload cut by the deadline has moved the integral of its rate by then
    plain = run(tmp_path)
    o = plain.timeline[0]
    nbits = o.bytes_up * 8.0
    t_up = o.t_end - nbits / 1e6
    t1 = t_up + 0.25 * nbits / 1e6  # 1 Mbit/s until t1, then 3 Mbit/s
    deadline = t1 + 0.1 * nbits / 3e6  # cut 10% of the bits after t1
    (tmp_path / "bw.csv").write_text(
        "device,t_s,up_mbps,down_mbps\n"
        f"0,0,1.0,4.0\n0,{t1!r},3.0,4.0\n1,0,1.0,4.0\n1,{t1!r},3.0,4.0\n")
    log = run(tmp_path, ", bandwidth: {file: bw.csv}",
              ("training.rounds=1", f"training.deadline_s={deadline!r}"))
    v = next(x for x in log.timeline if x.device == 0)
    assert v.status == "late" and v.t_end == deadline
    want = (0.25 * nbits + 0.1 * nbits) / 8.0
    assert abs(v.bytes_up - want) <= 1.0
