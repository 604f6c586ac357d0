"""Topologies: star, hierarchical and file; paths; the engine's timeline follows them."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from pydantic import ValidationError

from fleetsim.build import build, load_scenario
from fleetsim.cli import main
from fleetsim.costs import comm_seconds
from fleetsim.errors import UserError
from fleetsim.network import TOPOLOGIES, from_file, hierarchical, star

ROOT = Path(__file__).resolve().parents[1]


def access(i: int) -> tuple[float, float, float]:
    """Two classes told apart by their access link: even devices fast, odd slow."""
    return (20.0, 80.0, 0.02) if i % 2 == 0 else (4.0, 16.0, 0.05)


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_star_path_is_the_access_link() -> None:
    p = star({}, 4, access, rng()).path(1)
    assert (p.up_mbps, p.down_mbps, p.latency_s) == (4.0, 16.0, 0.05)
    assert p.upload_s(1e6) == pytest.approx(0.05 + 8e6 / 4e6)


def test_hierarchical_bottleneck_and_summed_latency() -> None:
    topo = hierarchical({"edges": 2, "edge_up_mbps": [100.0, 2.0], "edge_down_mbps": 50.0,
                         "edge_latency_s": [0.01, 0.1]}, 6, access, rng())
    # round robin: device i -> edge i mod 2; device 0 fast access on the fast edge
    p0, p1, p3 = topo.path(0), topo.path(1), topo.path(3)
    assert (p0.up_mbps, p0.down_mbps) == (20.0, 50.0)
    assert p0.latency_s == pytest.approx(0.03)
    assert (p1.up_mbps, p1.down_mbps) == (2.0, 16.0)  # edge uplink 2 < access 4
    assert p1.latency_s == pytest.approx(0.15)
    assert p1.download_s(1e6) == pytest.approx(0.15 + 8e6 / 16e6)
    assert p3 == p1
    g = topo.graph(6)
    assert g.number_of_nodes() == 1 + 2 + 6 and g.has_edge(("device", 3), "edge1")


@pytest.mark.parametrize("assign", ["round_robin", "blocks", "random", "by_class"])
def test_hierarchical_assignments(assign: str) -> None:
    n = 1000
    topo = hierarchical({"edges": 4, "assign": assign}, n, access, rng())
    edge = np.array([int(topo._attach(i).removeprefix("edge")) for i in range(n)])
    counts = np.bincount(edge, minlength=4)
    if assign == "random":
        assert counts.min() > 200  # uniform: 250 each
    else:
        assert counts.tolist() == [250] * 4
    if assign == "blocks":
        assert np.all(np.diff(edge) >= 0)
    if assign == "by_class":
        # two classes over four edges: class 0 (even) owns edges 0 and 2, class 1 edges 1, 3
        assert set(edge[::2]) == {0, 2} and set(edge[1::2]) == {1, 3}
    again = hierarchical({"edges": 4, "assign": assign}, n, access, rng())
    assert all(again._attach(i) == topo._attach(i) for i in range(0, n, 37))


def test_hierarchical_by_class_with_explicit_classes_and_few_edges() -> None:
    cls = np.array([0, 1, 2, 0, 1, 2])
    topo = hierarchical({"edges": 2, "assign": "by_class"}, 6, access, rng(), class_of=cls)
    assert [topo._attach(i) for i in range(6)] == ["edge0", "edge1", "edge0"] * 2


def test_hierarchical_options_are_checked() -> None:
    opts = TOPOLOGIES.get("hierarchical").Options
    with pytest.raises(ValidationError, match="one per edge aggregator"):
        opts(edges=3, edge_up_mbps=[1.0, 2.0])
    with pytest.raises(ValidationError, match="edge_down_mbps must be > 0"):
        opts(edge_down_mbps=0)
    with pytest.raises(ValidationError):
        opts(assign="nearest")


GRAPHML = """<?xml version="1.0" encoding="UTF-8"?>
<graphml xmlns="http://graphml.graphdrawing.org/xmlns">
  <key id="up" for="edge" attr.name="up_mbps" attr.type="double"/>
  <key id="down" for="edge" attr.name="down_mbps" attr.type="double"/>
  <key id="lat" for="edge" attr.name="latency_s" attr.type="double"/>
  <key id="dev" for="node" attr.name="devices" attr.type="string"/>
  <graph edgedefault="undirected">
    <node id="cloud"/>
    <node id="metro"/>
    <node id="campus"><data key="dev">0-2,5</data></node>
    <node id="home"><data key="dev">3-4</data></node>
    <edge source="campus" target="metro">
      <data key="up">100</data><data key="down">100</data><data key="lat">0.002</data>
    </edge>
    <edge source="metro" target="cloud">
      <data key="up">1000</data><data key="down">5</data><data key="lat">0.02</data>
    </edge>
    <edge source="home" target="cloud">
      <data key="up">1</data><data key="down">30</data><data key="lat">0.03</data>
    </edge>
  </graph>
</graphml>
"""


def test_file_topology_graphml_with_node_attribute(tmp_path: Path) -> None:
    (tmp_path / "net.graphml").write_text(GRAPHML)
    topo = from_file({"path": str(tmp_path / "net.graphml"), "server": "cloud"}, 6, access,
                     rng())
    assert [topo._attach(i) for i in range(6)] == ["campus"] * 3 + ["home"] * 2 + ["campus"]
    p0 = topo.path(0)  # campus -> metro -> cloud: up min(20, 100, 1000), down min(80, 100, 5)
    assert (p0.up_mbps, p0.down_mbps) == (20.0, 5.0)
    assert p0.latency_s == pytest.approx(0.02 + 0.002 + 0.02)
    p3 = topo.path(3)  # home: up min(4, 1), down min(16, 30)
    assert (p3.up_mbps, p3.down_mbps) == (1.0, 16.0)
    assert p3.latency_s == pytest.approx(0.05 + 0.03)


def test_file_topology_edge_list_with_shares(tmp_path: Path) -> None:
    (tmp_path / "net.txt").write_text("# u v up_mbps down_mbps latency_s\n"
                                      "a server 10 10 0.1\nb server 100 100 0.0\n")
    opts = {"path": str(tmp_path / "net.txt"), "attach": {"a": 1, "b": 3}}
    topo = from_file(opts, 8, access, rng())
    assert [topo._attach(i) for i in range(8)] == ["a"] * 2 + ["b"] * 6
    rand = from_file({**opts, "assign": "random"}, 4000, access, rng())
    share_b = np.mean([rand._attach(i) == "b" for i in range(4000)])
    assert share_b == pytest.approx(0.75, abs=0.03)


@pytest.mark.parametrize(("text", "opts", "needle"), [
    ("a server 10 10\n", {"attach": {"a": 1}}, "cannot be read"),
    ("a server 10 0 0.1\n", {"attach": {"a": 1}}, "down_mbps=0.0"),
    ("a b 10 10 0.1\n", {"attach": {"a": 1}}, "no server node 'server'"),
    ("a server 10 10 0.1\nc d 1 1 0\n", {"attach": {"c": 1}}, "no path to the server"),
    ("a server 10 10 0.1\n", {"attach": {"zz": 1}}, "node 'zz' is not in"),
    ("a server 10 10 0.1\n", {}, "no node of"),
    ("a server 10 10 0.1\n", {"attach": {"a": "0-2"}}, "device 3 is attached to no node"),
])
def test_file_topology_errors(tmp_path: Path, text: str, opts: dict, needle: str) -> None:
    (tmp_path / "g.txt").write_text(text)
    with pytest.raises(UserError, match=None) as exc:
        from_file({"path": str(tmp_path / "g.txt"), **opts}, 5, access, rng())
    assert needle in str(exc.value) and "Allowed" in str(exc.value)


# ----------------------------------------------------------------------------- in a scenario

HIER = """
name: hier
seed: 0
data: {dataset: digits, partition: {name: iid}}
model: {arch: mlp, options: {hidden: [16]}}
fleet:
  devices: 4
  assignment: blocks
  classes:
    - {name: fast, share: 0.5, peak_macs_per_s: 1.0e6, uplink_mbps: 8, downlink_mbps: 40,
       latency_s: 0.02}
    - {name: slow, share: 0.5, peak_macs_per_s: 2.5e5, uplink_mbps: 2, downlink_mbps: 10,
       latency_s: 0.05}
  traces: {generator: constant, options: {level: 1.0}}
  topology:
    kind: hierarchical
    options: {edges: 2, edge_up_mbps: [100, 0.5], edge_down_mbps: [4, 100],
              edge_latency_s: [0.01, 0.2]}
training:
  mode: timing
  rounds: 2
  clients_per_round: 4
  deadline_s: null
  local_steps: 3
  batch_size: 8
"""


def test_engine_timeline_follows_the_hierarchical_paths() -> None:
    sc = load_scenario(None, text=HIER)
    built = build(sc)
    eng = built.engine
    log = eng.run()
    nbytes = eng.costs.model_bytes()
    step_macs = eng.costs.step_macs(None, 8)
    # blocks: devices 0, 1 fast, 2, 3 slow; round robin: devices 0, 2 on edge0, 1, 3 on edge1
    links = {0: ((8, 40, 0.02), (100, 4, 0.01)), 1: ((8, 40, 0.02), (0.5, 100, 0.2)),
             2: ((2, 10, 0.05), (100, 4, 0.01)), 3: ((2, 10, 0.05), (0.5, 100, 0.2))}
    peak = {0: 1e6, 1: 1e6, 2: 2.5e5, 3: 2.5e5}
    first = [o for o in log.timeline if o.round == 0]
    assert len(first) == 4
    for o in first:
        (a_up, a_down, a_lat), (e_up, e_down, e_lat) = links[o.device]
        down = comm_seconds(nbytes, min(a_down, e_down), a_lat + e_lat)
        up = comm_seconds(nbytes, min(a_up, e_up), a_lat + e_lat)
        expect = down + 3 * step_macs / peak[o.device] + up
        assert eng.fleet.path(o.device).download_s(nbytes) == pytest.approx(down, rel=1e-12)
        assert o.status == "completed"
        assert o.t_end - o.t_start == pytest.approx(expect, rel=1e-9)
    # the round waits for the slowest: the slow device behind the slow edge uplink
    assert log.rounds[0]["t_end_s"] == pytest.approx(max(o.t_end for o in first))


def test_hierarchical_scenario_file_runs(tmp_path: Path) -> None:
    out = tmp_path / "h"
    assert main(["run", str(ROOT / "scenarios" / "hierarchical.yaml"), "--out", str(out),
                 "--quiet"]) == 0
    assert (out / "rounds.csv").read_text().count("\n") == 6  # header + 5 rounds


def test_graph_of_the_file_topology_in_a_scenario(tmp_path: Path) -> None:
    (tmp_path / "net.graphml").write_text(GRAPHML)
    text = HIER.replace("kind: hierarchical", "kind: file").replace(
        "options: {edges: 2, edge_up_mbps: [100, 0.5], edge_down_mbps: [4, 100],\n"
        "              edge_latency_s: [0.01, 0.2]}",
        "options: {path: net.graphml, server: cloud}")
    (tmp_path / "s.yaml").write_text(text)
    sc = load_scenario(tmp_path / "s.yaml")  # the path resolves next to the scenario
    log = build(sc, str(tmp_path / "s.yaml")).engine.run()
    assert all(r["completed"] == 4 for r in log.rounds)
    assert isinstance(build(sc).engine.fleet.topology.infra, nx.Graph)
