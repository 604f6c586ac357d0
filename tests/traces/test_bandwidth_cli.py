"""FedScale's per-client bandwidth through the command line, into a scenario."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from fleetsim.cli import main
from fleetsim.config import FleetConfig
from fleetsim.fleet import Fleet
from tests.test_scenario_errors import check_error, run_cli


def test_fedscale_bandwidth_to_csv_to_a_fleet(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cap = tmp_path / "client_device_capacity"
    with cap.open("wb") as f:
        pickle.dump({i: {"computation": 50.0, "communication": 1000.0 * (i + 1)}
                     for i in range(4)}, f)
    out = tmp_path / "bw.csv"
    assert main(["traces", "import", "fedscale-bandwidth", str(cap), "-o", str(out),
                 "--down-up-ratio", "4"]) == 0
    assert "4 clients' bandwidth" in capsys.readouterr().out
    fleet = Fleet(FleetConfig(devices=4, assignment="blocks", classes=[
        {"name": "a", "share": 1.0, "peak_macs_per_s": 1e9, "latency_s": 0.0,
         "bandwidth": {"file": str(out)}}]), 0)
    # client k sends at k+1 Mbit/s up, 4(k+1) down: 1 MB = 8 Mbit
    assert [fleet.transfer_s(d, 0.0, 1e6, "up") for d in range(4)] == \
        [8.0 / (d + 1) for d in range(4)]
    assert fleet.transfer_s(3, 0.0, 1e6, "down") == 8.0 / 16.0


def test_a_client_without_a_rate_is_refused(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    cap = tmp_path / "client_device_capacity"
    with cap.open("wb") as f:
        pickle.dump({7: {"computation": 50.0}}, f)
    code, err = run_cli(capsys, "traces", "import", "fedscale-bandwidth", str(cap), "-o",
                        str(tmp_path / "bw.csv"))
    check_error(code, err, str(cap), "client 7", "'communication'")
