"""Shared links, bandwidth traces and energy as a scenario configures them: the fleet's
answers by hand, and bad input through the command line (exit 2, one paragraph)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from fleetsim.config import FleetConfig
from fleetsim.fleet import Fleet
from fleetsim.links import FlowNetwork
from tests.conftest import TINY
from tests.test_scenario_errors import check_error, run_cli

TIMING = ["--set", "training.mode=timing", "--quiet"]
CLASSES = """  classes:
    - {name: fast, share: 0.5, peak_macs_per_s: 1.0e7}
    - {name: slow, share: 0.5, peak_macs_per_s: 2.5e6}
"""


def scenario(tmp_path: Path, fleet_extra: str = "", classes: str = CLASSES) -> Path:
    text = TINY.replace(CLASSES, classes).replace("  traces:\n", fleet_extra + "  traces:\n")
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def fleet(raw: dict, seed: int = 0) -> Fleet:
    base = {"devices": 6, "classes": [
        {"name": "a", "share": 0.5, "peak_macs_per_s": 1e9, "uplink_mbps": 4.0,
         "downlink_mbps": 16.0, "latency_s": 0.05},
        {"name": "b", "share": 0.5, "peak_macs_per_s": 1e9, "uplink_mbps": 2.0,
         "downlink_mbps": 8.0, "latency_s": 0.05}], "assignment": "blocks"}
    base.update(raw)
    return Fleet(FleetConfig(**base), seed)


# ----------------------------------------------------------------------------- defaults


def test_nothing_configured_changes_nothing() -> None:
    f = fleet({})
    assert not f.sharing and f.links == {}
    for d in range(f.n):
        assert f.bandwidth(d) is None and f.energy(d) is None and f.battery(d) is None
        p = f.path(d)
        assert f.transfer_s(d, 12.5, 1e6, "up") == p.upload_s(1e6)
        assert f.transfer_s(d, 12.5, 1e6, "down") == p.download_s(1e6)


# ----------------------------------------------------------------------------- links


def test_star_with_a_shared_server_link() -> None:
    f = fleet({"network": {"sharing": "max_min",
                           "server_link": {"up_mbps": 6.0, "down_mbps": 40.0}}})
    assert f.route(0) == ("server",)
    up, down = f.links["server"]
    assert (up.capacity_bytes_per_s, down.capacity_bytes_per_s) == (6e6 / 8, 40e6 / 8)
    assert f.own_rate(0, "up").rate_bytes_per_s(0.0) == 4e6 / 8  # class a's uplink
    # three uploads of 1.5 MB: a-devices 0, 1 and b-device 3 (own 2 Mbit/s = 0.25 MB/s);
    # the link's 0.75 MB/s: device 3 gets its own 0.25, devices 0, 1 share 0.5 -> 0.25
    # each: all three at 0.25 MB/s -> 6 s
    net = FlowNetwork({n: ls[0] for n, ls in f.links.items()}, f.link_model)
    for d in (0, 1, 3):
        net.start(0.0, d, f.route(d), 1.5e6, f.own_rate(d, "up"))
    ends = []
    while (ev := net.next_event()) is not None:
        ends += net.advance(ev.time_s)
    assert [e.end_s for e in ends] == pytest.approx([6.0, 6.0, 6.0], rel=1e-13)


def test_hierarchical_cells_and_backhaul_by_name() -> None:
    f = fleet({"topology": {"kind": "hierarchical", "options": {"edges": 2,
                                                                "edge_up_mbps": 100.0}},
               "network": {"sharing": "max_min", "cell": {"up_mbps": 20.0, "down_mbps": 50.0},
                           "capacities": {"edge1": {"up_mbps": 10.0, "down_mbps": 10.0}}}})
    assert f.route(0) == ("cell0", "edge0") and f.route(1) == ("cell1", "edge1")
    assert f.links["edge0"][0].capacity_bytes_per_s == 100e6 / 8
    assert f.links["edge1"][0].capacity_bytes_per_s == 10e6 / 8
    assert f.links["cell1"][1].capacity_bytes_per_s == 50e6 / 8


def test_file_topology_links_are_named_by_their_nodes(tmp_path: Path) -> None:
    g = tmp_path / "net.txt"
    g.write_text("server hub 50 50 0.01\nhub tower 20 20 0.01\n")
    f = fleet({"topology": {"kind": "file", "options": {"path": str(g),
                                                        "attach": {"tower": 1.0}}},
               "network": {"sharing": "max_min", "lv08": True}})
    assert f.route(0) == ("hub~tower", "hub~server")
    assert f.links["hub~tower"][0].capacity_bytes_per_s == 20e6 / 8
    assert f.link_model.latency and f.link_model.bandwidth_factor == 0.97


# ----------------------------------------------------------------------------- bandwidth


def test_a_class_bandwidth_trace_is_integrated_and_capped(tmp_path: Path) -> None:
    csv = tmp_path / "bw.csv"
    csv.write_text("device,t_s,up_mbps,down_mbps\n0,0,8,8\n0,10,2,2\n"
                   "1,0,1,1\n2,0,1,1\n")
    f = fleet({"classes": [
        {"name": "a", "share": 0.5, "peak_macs_per_s": 1e9, "latency_s": 0.05,
         "bandwidth": {"file": str(csv)}},
        {"name": "b", "share": 0.5, "peak_macs_per_s": 1e9, "uplink_mbps": 2.0,
         "latency_s": 0.05,
         "bandwidth": {"up": {"generator": "markov_levels",
                              "options": {"levels_mbps": [1.0, 3.0], "mean_dwell_s": 5}}}}],
        "topology": {"kind": "hierarchical", "options": {"edges": 1, "edge_up_mbps": 4.0,
                                                         "edge_latency_s": 0.0}}})
    # device 0 (the file's first): 8 Mbit/s capped at the edge's 4 until 10 s, then 2:
    # 5 MB = 40 Mbit, latency 0.05 s first: bytes from 5.05 s, 4 x 4.95 = 19.8 Mbit by
    # 10 s, the other 20.2 at 2 take 10.1 s: done at 20.1, 15.1 s after the start.
    # Down (edge 1000 Mbit/s, no cap): 8 x 4.95 = 39.6 by 10 s, 0.4 at 2: done at 10.2
    assert f.transfer_s(0, 5.0, 5e6, "up") == pytest.approx(15.1, rel=1e-14)
    assert f.transfer_s(0, 5.0, 5e6, "down") == pytest.approx(5.2, rel=1e-14)
    b = f.bandwidth(4)
    assert b is not None and {b.up.rate_mbps_at(t) for t in np.arange(0, 3600, 7.0)} == {1, 3}
    assert b.down.is_constant and b.down.rate_mbps_at(0.0) == 50.0  # the class's default
    assert f.own_rate(4, "up") is b.up


# ----------------------------------------------------------------------------- energy


def test_energy_profiles_and_initial_charge() -> None:
    f = fleet({"classes": [
        {"name": "a", "share": 0.5, "peak_macs_per_s": 1e9,
         "energy": {"profile": "phone", "idle_w": 0.2,
                    "battery": {"capacity_j": 1000.0, "initial_fraction": [0.5, 0.75]}}},
        {"name": "b", "share": 0.5, "peak_macs_per_s": 2e9,
         "energy": {"joules_per_mac": 1e-9}}]})
    pa, pb = f.energy(0), f.energy(3)
    assert pa is not None and pb is not None
    assert (pa.full_load_w, pa.tx_w, pa.idle_w) == (0.8, 2.6, 0.2)
    assert pb.compute_w(2e9) == 2.0 and pb.idle_w == 0.0
    bat = f.battery(0)
    assert bat is not None and (bat.floor_j, bat.resume_j) == (50.0, 200.0)
    assert f.battery(3) is None
    charges = [f.initial_charge_j(d) for d in range(3)]
    assert all(500.0 <= c <= 750.0 for c in charges) and len(set(charges)) == 3
    assert charges == [fleet(f_raw := {"classes": [  # the same draws for the same seed
        {"name": "a", "share": 0.5, "peak_macs_per_s": 1e9,
         "energy": {"battery": {"capacity_j": 1000.0, "initial_fraction": [0.5, 0.75]}}},
        {"name": "b", "share": 0.5, "peak_macs_per_s": 2e9}]}).initial_charge_j(d)
        for d in range(3)]
    assert f_raw


# ----------------------------------------------------------------------------- bad input


def test_zero_capacity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = scenario(tmp_path, "  network: {sharing: max_min, server_link: "
                 "{up_mbps: 0, down_mbps: 10}}\n")
    code, err = run_cli(capsys, "run", str(p), *TIMING)
    check_error(code, err, str(p), "fleet.network.server_link.up_mbps", "greater than 0")


def test_negative_capacity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = scenario(tmp_path, "  network: {sharing: max_min, server_link: "
                 "{up_mbps: 5, down_mbps: -10}}\n")
    code, err = run_cli(capsys, "run", str(p), *TIMING)
    check_error(code, err, str(p), "fleet.network.server_link.down_mbps", "greater than 0")


def test_unknown_link_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = scenario(tmp_path, "  network: {sharing: max_min, server_link: "
                 "{up_mbps: 5, down_mbps: 10}, capacities: {cell7: {up_mbps: 1, "
                 "down_mbps: 1}}}\n")
    code, err = run_cli(capsys, "run", str(p), *TIMING)
    check_error(code, err, str(p), "at 'fleet.network.capacities.cell7'",
                "no link named 'cell7'", "Allowed: one of this fleet's links: server")


def test_battery_of_zero_joules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    classes = CLASSES.replace("peak_macs_per_s: 1.0e7}", "peak_macs_per_s: 1.0e7, "
                              "energy: {battery: {capacity_j: 0}}}")
    p = scenario(tmp_path, classes=classes)
    code, err = run_cli(capsys, "run", str(p), *TIMING)
    check_error(code, err, str(p), "capacity_j", "greater than 0")
    assert re.search(r"fleet\.classes(\[0\]|\.0)\.energy\.battery\.capacity_j", " ".join(
        err.split()))


def test_bandwidth_generator_with_a_negative_rate(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    classes = CLASSES.replace("peak_macs_per_s: 1.0e7}", "peak_macs_per_s: 1.0e7, "
                              "bandwidth: {up: {generator: markov_levels, options: "
                              "{levels_mbps: [2, -1]}}}}")
    p = scenario(tmp_path, classes=classes)
    code, err = run_cli(capsys, "run", str(p), *TIMING)
    check_error(code, err, str(p), "fleet.classes[0].bandwidth.up.options",
                "levels_mbps must be >= 0")


def test_bandwidth_file_with_a_negative_rate(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "bw.csv"
    csv.write_text("device,t_s,up_mbps,down_mbps\n0,0,1,1\n0,5,-3,1\n")
    classes = CLASSES.replace("peak_macs_per_s: 1.0e7}", "peak_macs_per_s: 1.0e7, "
                              "bandwidth: {file: bw.csv}}")
    p = scenario(tmp_path, classes=classes)
    code, err = run_cli(capsys, "run", str(p), *TIMING)
    check_error(code, err, "at 'fleet.classes[0].bandwidth.file'", str(csv), "line 3",
                "up_mbps is -3.0", "Allowed: rates >= 0")


@pytest.mark.parametrize("extra, classes, feature", [
    ("  network: {sharing: max_min}\n", CLASSES, "sharing"),
    ("", CLASSES.replace("1.0e7}", "1.0e7, energy: {profile: phone}}"), "energy"),
    ("", CLASSES.replace("1.0e7}", "1.0e7, bandwidth: {up: {generator: constant, "
                         "options: {mbps: 3}}}}"), "bandwidth"),
])
def test_a_model_the_engine_does_not_simulate_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        extra: str, classes: str, feature: str) -> None:
    import fleetsim.engine

    # the guard for a model configured before the engine simulates it: the engine
    # simulates all three now, so it is shown with the feature taken out of its list
    monkeypatch.setattr(fleetsim.engine, "WORLD_FEATURES",
                        fleetsim.engine.WORLD_FEATURES - {feature})
    p = scenario(tmp_path, extra, classes)
    code, err = run_cli(capsys, "run", str(p), *TIMING)
    check_error(code, err, str(p), f"the engine does not simulate {feature} yet")


def test_capped_bandwidth_is_what_transfer_s_integrates(tmp_path: Path) -> None:
    csv = tmp_path / "bw.csv"
    csv.write_text("device,t_s,up_mbps,down_mbps\n0,0,8,8\n0,10,2,2\n1,0,1,1\n")
    f = fleet({"devices": 2, "classes": [
        {"name": "a", "share": 1.0, "peak_macs_per_s": 1e9, "bandwidth": {"file": str(csv)}}],
        "topology": {"kind": "hierarchical", "options": {"edges": 1, "edge_up_mbps": 4.0}}})
    up = f.capped_bandwidth(0, "up")
    assert up is not None and [up.rate_mbps_at(t) for t in (0.0, 12.0)] == [4.0, 2.0]
    assert fleet({}).capped_bandwidth(0, "up") is None


def test_sharing_off_written_bare_in_yaml_is_off(tmp_path: Path) -> None:
    from fleetsim.build import load_scenario

    p = scenario(tmp_path, "  network: {sharing: off}\n")
    assert load_scenario(p).fleet.network.sharing == "off"
    p = scenario(tmp_path, "  network: {sharing: on}\n")  # true is not a sharing model
    with pytest.raises(Exception, match="sharing"):
        load_scenario(p)
