"""The network: a networkx graph whose links carry bandwidth and latency.

Devices reach the server over their own access link (from their device class) followed
by the path from the node they attach to (the server itself in a star) up to the server.
A transfer's time is the path's latency sum plus bytes over its bottleneck bandwidth.

Registered topologies: ``star`` (every device straight to the server), ``hierarchical``
(devices -> edge aggregators -> server) and ``file`` (a user graph in GraphML or an edge
list). By default links do not divide their bandwidth among concurrent transfers: a
path's bandwidth is its bottleneck link's, as if each transfer had the links to itself.
With ``fleet.network.sharing: max_min`` the infrastructure links (each named: see
:meth:`Topology.links`), the server's access link and hierarchical cells are shared by
the transfers crossing them (:mod:`fleetsim.links`; :meth:`Topology.route` names the
links of a device's path).

The graph holds the infrastructure (server, edge aggregators) explicitly and devices by
attachment: with 100,000 devices an explicit star would cost ~100 MB of networkx dicts for
no information the access-link arrays do not already hold. :meth:`Topology.graph` builds the
explicit graph (devices included) for inspection and small fleets.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path as PathLib
from typing import Any, ClassVar, Literal

import networkx as nx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleetsim.costs import comm_seconds
from fleetsim.errors import UserError
from fleetsim.registry import Registry

SERVER = "server"


@dataclass(frozen=True)
class Path:
    """Bottleneck bandwidths (megabit/s) and total one-way latency of a device's path."""

    up_mbps: float
    down_mbps: float
    latency_s: float

    def upload_s(self, nbytes: float) -> float:
        return comm_seconds(nbytes, self.up_mbps, self.latency_s)

    def download_s(self, nbytes: float) -> float:
        return comm_seconds(nbytes, self.down_mbps, self.latency_s)


class TopologyOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Topology:
    """Infrastructure graph plus each device's attachment node and access link.

    Parameters
    ----------
    infra : graph of infrastructure nodes; edges carry ``up_mbps``, ``down_mbps``,
        ``latency_s``; must contain ``"server"``
    attach : node each device attaches to
    access : per device (up_mbps, down_mbps, latency_s) of its own access link
    """

    Options: ClassVar[type[TopologyOptions]] = TopologyOptions

    def __init__(self, infra: nx.Graph, attach: Callable[[int], Any],
                 access: Callable[[int], tuple[float, float, float]]) -> None:
        self.infra = infra
        self._attach = attach
        self._access = access
        self._node_paths: dict[Any, tuple[float, float, float]] = {}
        self._node_routes: dict[Any, tuple[str, ...]] = {}
        #: attach node -> name of its cell (a link shared by the devices attached there)
        self.cells: dict[Any, str] = {}

    def _node_path(self, node: Any) -> tuple[float, float, float]:
        hit = self._node_paths.get(node)
        if hit is None:
            route = nx.shortest_path(self.infra, node, SERVER, weight="latency_s")
            up, down, lat = math.inf, math.inf, 0.0
            for a, b in itertools.pairwise(route):
                e = self.infra.edges[a, b]
                up = min(up, e["up_mbps"])
                down = min(down, e["down_mbps"])
                lat += e["latency_s"]
            hit = (up, down, lat)
            self._node_paths[node] = hit
        return hit

    def path(self, device: int) -> Path:
        up, down, lat = self._node_path(self._attach(device))
        a_up, a_down, a_lat = self._access(device)
        return Path(min(up, a_up), min(down, a_down), lat + a_lat)

    def infra_path(self, device: int) -> tuple[float, float, float]:
        """(up_mbps, down_mbps, latency_s) of the device's route without its access link
        (``inf`` bandwidths in a star)."""
        return self._node_path(self._attach(device))

    def links(self) -> dict[str, tuple[float, float, float]]:
        """Every infrastructure link by name: (up_mbps, down_mbps, latency_s). A link's
        name is its ``name`` attribute (hierarchical: ``edge<k>``), else ``u~v`` with the
        two node names in sorted order."""
        return {link_name(a, b, d): (d["up_mbps"], d["down_mbps"], d["latency_s"])
                for a, b, d in self.infra.edges(data=True)}

    def route(self, device: int) -> tuple[str, ...]:
        """Names of the infrastructure links from ``device``'s attachment node to the
        server (the same route :meth:`path` takes), its cell's first when it has one."""
        node = self._attach(device)
        hit = self._node_routes.get(node)
        if hit is None:
            route = nx.shortest_path(self.infra, node, SERVER, weight="latency_s")
            hit = tuple(link_name(a, b, self.infra.edges[a, b])
                        for a, b in itertools.pairwise(route))
            if node in self.cells:
                hit = (self.cells[node], *hit)
            self._node_routes[node] = hit
        return hit

    def graph(self, n_devices: int) -> nx.Graph:
        """The explicit graph, devices included as nodes ``("device", i)``."""
        g = self.infra.copy()
        for i in range(n_devices):
            up, down, lat = self._access(i)
            g.add_edge(("device", i), self._attach(i), up_mbps=up, down_mbps=down, latency_s=lat)
        return g


def link_name(a: Any, b: Any, data: dict[str, Any]) -> str:
    """A link's name: its ``name`` attribute, else ``u~v`` (node names sorted)."""
    name = data.get("name")
    return str(name) if name is not None else "~".join(sorted((str(a), str(b))))


# A topology factory: (options, n_devices, access, rng, class_of=None) -> Topology, where
# access(i) is device i's access link (up_mbps, down_mbps, latency_s) and class_of, when
# the caller has it, each device's class index.
TOPOLOGIES: Registry[Callable[..., Topology]] = Registry("topology")


class StarOptions(TopologyOptions):
    pass


def star(options: dict[str, Any], n_devices: int,
         access: Callable[[int], tuple[float, float, float]],
         rng: np.random.Generator, class_of: np.ndarray | None = None) -> Topology:
    """Every device linked straight to the server by its access link."""
    StarOptions(**options)
    g = nx.Graph()
    g.add_node(SERVER)
    return Topology(g, lambda i: SERVER, access)


star.Options = StarOptions  # type: ignore[attr-defined]
TOPOLOGIES.add("star", star)


# ----------------------------------------------------------------------------- hierarchical

Assign = Literal["round_robin", "blocks", "random", "by_class"]


def _per_node(value: float | tuple[float, ...], n: int, name: str) -> tuple[float, ...]:
    if isinstance(value, tuple):
        if len(value) != n:
            raise ValueError(f"{name} needs one value, or one per edge aggregator ({n})")
        return value
    return (value,) * n


class HierarchicalOptions(TopologyOptions):
    edges: int = Field(4, ge=1, description="number of edge aggregators")
    edge_up_mbps: float | tuple[float, ...] = Field(
        1000.0, description="edge -> server bandwidth (one value, or one per edge)")
    edge_down_mbps: float | tuple[float, ...] = Field(
        1000.0, description="server -> edge bandwidth (one value, or one per edge)")
    edge_latency_s: float | tuple[float, ...] = Field(
        0.01, description="one-way edge <-> server latency (one value, or one per edge)")
    assign: Assign = Field("round_robin", description="devices to edges: round_robin "
                           "(device i to edge i mod edges) | blocks (contiguous ranges) | "
                           "random (uniform, from the seed) | by_class (each class to its own "
                           "edges)")

    @model_validator(mode="after")
    def _check(self) -> HierarchicalOptions:
        for name, positive in (("edge_up_mbps", True), ("edge_down_mbps", True),
                               ("edge_latency_s", False)):
            vals = _per_node(getattr(self, name), self.edges, name)
            if any(not math.isfinite(v) or v < 0 or (positive and v == 0) for v in vals):
                raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} and finite")
        return self


def _classes_from_access(n: int, access: Callable[[int], tuple[float, float, float]]
                         ) -> np.ndarray:
    """Class index per device, recovered from the access links (one per class)."""
    ids: dict[tuple[float, float, float], int] = {}
    return np.fromiter((ids.setdefault(access(i), len(ids)) for i in range(n)), np.int64, n)


def _assign(kind: str, n: int, m: int, rng: np.random.Generator,
            class_of: np.ndarray | None = None) -> Callable[[int], int] | np.ndarray:
    """Node index per device: a function for round-robin, else an array."""
    if kind == "round_robin":
        return lambda i: i % m
    if kind == "blocks":
        return (np.arange(n, dtype=np.int64) * m) // max(n, 1)
    if kind == "random":
        return rng.integers(0, m, n)
    assert class_of is not None
    cls = np.asarray(class_of, np.int64)
    c = int(cls.max()) + 1 if n else 1
    # rank of each device within its class, to deal a class's devices over its edges
    order = np.argsort(cls, kind="stable")
    counts = np.bincount(cls, minlength=c)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    if m >= c:  # class k owns edges k, k + c, k + 2c, ...
        owned = (m - 1 - cls) // c + 1
        return cls + c * (rank % owned)
    return cls % m  # fewer edges than classes: classes share edges


def hierarchical(options: dict[str, Any], n_devices: int,
                 access: Callable[[int], tuple[float, float, float]],
                 rng: np.random.Generator, class_of: np.ndarray | None = None) -> Topology:
    """Devices -> edge aggregators -> server.

    Each device reaches its edge aggregator ``edge<k>`` over its own access link; the edge
    reaches the server over a link of ``edge_up_mbps`` / ``edge_down_mbps`` and
    ``edge_latency_s``. A transfer sees the smaller of the two bandwidths and the sum of
    the latencies. ``by_class`` uses the fleet's classes when given, otherwise devices with
    the same access link count as one class.
    """
    o = HierarchicalOptions(**options)
    m = o.edges
    g = nx.Graph()
    g.add_node(SERVER)
    names = [f"edge{k}" for k in range(m)]
    for k, (up, down, lat) in enumerate(zip(_per_node(o.edge_up_mbps, m, "up"),
                                            _per_node(o.edge_down_mbps, m, "down"),
                                            _per_node(o.edge_latency_s, m, "latency"))):
        g.add_edge(names[k], SERVER, up_mbps=up, down_mbps=down, latency_s=lat,
                   name=names[k])
    if o.assign == "by_class" and class_of is None:
        class_of = _classes_from_access(n_devices, access)
    where = _assign(o.assign, n_devices, m, rng, class_of)
    if callable(where):
        topo = Topology(g, lambda i: names[where(i)], access)
    else:
        idx = where.astype(np.int32)
        topo = Topology(g, lambda i: names[idx[i]], access)
    topo.cells = {names[k]: f"cell{k}" for k in range(m)}
    return topo


hierarchical.Options = HierarchicalOptions  # type: ignore[attr-defined]
TOPOLOGIES.add("hierarchical", hierarchical)


# ----------------------------------------------------------------------------- from a file

LINK_ATTRS = ("up_mbps", "down_mbps", "latency_s")


class FileTopologyOptions(TopologyOptions):
    path: str = Field(description="GraphML file, or an edge list with lines "
                      "'u v up_mbps down_mbps latency_s' (relative to the scenario)")
    format: Literal["auto", "graphml", "edgelist"] = Field(
        "auto", description="auto: GraphML for .graphml/.xml, else edge list")
    server: str = Field(SERVER, description="name of the server node in the file")
    attach: dict[str, float | str] | None = Field(
        None, description="node -> share of devices, or node -> device ranges such as "
        "'0-49,100'; default: the node attribute named by attach_attr")
    attach_attr: str = Field("devices", description="node attribute holding a share or "
                             "device ranges (GraphML)")
    assign: Literal["blocks", "random"] = Field("blocks", description="with shares: "
                                                "contiguous device ranges, or a random node "
                                                "per device drawn with the shares")


def _topo_error(path: str, problem: str, allowed: str) -> UserError:
    return UserError(f"at 'fleet.topology.options.path': topology file {path}: {problem}. "
                     f"Allowed: {allowed}.")


def read_graph(path: str, fmt: str = "auto") -> nx.Graph:
    """Read an infrastructure graph; every edge must carry up_mbps, down_mbps, latency_s."""
    p = PathLib(path)
    if not p.is_file():
        raise _topo_error(path, "the file does not exist", "the path of a GraphML or "
                          "edge-list file (relative to the scenario)")
    if fmt == "auto":
        fmt = "graphml" if p.suffix.lower() in (".graphml", ".xml") else "edgelist"
    try:
        if fmt == "graphml":
            g = nx.read_graphml(p)
        else:
            g = nx.read_edgelist(p, comments="#", data=[(a, float) for a in LINK_ATTRS])
    except Exception as exc:  # networkx raises many kinds on malformed input
        raise _topo_error(path, f"cannot be read as {fmt} ({exc})",
                          "GraphML, or lines 'u v up_mbps down_mbps latency_s'") from None
    if g.is_multigraph():
        raise _topo_error(path, "parallel edges", "at most one link between two nodes")
    g = nx.Graph(g)  # directed files: a link serves both directions (up and down attributes)
    for a, b, data in g.edges(data=True):
        for attr in LINK_ATTRS:
            try:
                x = float(data[attr])
            except (KeyError, TypeError, ValueError):
                raise _topo_error(path, f"link {a}-{b} has no numeric '{attr}'",
                                  "every link with up_mbps, down_mbps (> 0) and latency_s "
                                  "(>= 0)") from None
            if not math.isfinite(x) or x < 0 or (x == 0 and attr != "latency_s"):
                raise _topo_error(path, f"link {a}-{b} has {attr}={x}",
                                  "up_mbps, down_mbps > 0 and latency_s >= 0, finite")
            data[attr] = x
    return g


def _parse_ranges(text: str) -> list[int]:
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        a = int(lo)
        b = int(hi) if sep else a
        if b < a or a < 0:
            raise ValueError(part)
        out.extend(range(a, b + 1))
    return out


def _file_attachment(g: nx.Graph, o: FileTopologyOptions, n: int,
                     rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """(attach nodes, node index per device) from the option or the node attribute."""
    spec: dict[str, Any] = dict(o.attach) if o.attach is not None else {
        str(v): d[o.attach_attr] for v, d in g.nodes(data=True) if o.attach_attr in d}
    where = "fleet.topology.options.attach" if o.attach is not None \
        else f"node attribute '{o.attach_attr}' in {o.path}"
    if not spec:
        raise UserError(f"at 'fleet.topology.options.attach': no node of {o.path} receives "
                        f"devices (no attach option and no node attribute '{o.attach_attr}'). "
                        "Allowed: attach: {node: share} or device ranges such as '0-49', or "
                        "that node attribute in the file.")
    names = list(spec)
    for v in names:
        if v not in g:
            raise UserError(f"at '{where}': node {v!r} is not in {o.path}. Allowed: one of "
                            f"{', '.join(sorted(map(str, g.nodes))[:20])}.")
        if not nx.has_path(g, v, SERVER):
            raise UserError(f"at '{where}': node {v!r} has no path to the server in {o.path}. "
                            "Allowed: nodes connected to the server.")
    numeric = [isinstance(x, int | float) and not isinstance(x, bool) for x in spec.values()]
    if all(numeric):
        shares = np.asarray([float(x) for x in spec.values()])
        if np.any(shares < 0) or shares.sum() <= 0:
            raise UserError(f"at '{where}': shares {shares.tolist()} are not allowed. "
                            "Allowed: non-negative shares with a positive sum.")
        cum = np.cumsum(shares / shares.sum())
        cum[-1] = 1.0
        u = rng.random(n) if o.assign == "random" else (np.arange(n) + 0.5) / max(n, 1)
        return names, np.searchsorted(cum, u, side="right").astype(np.int32)
    if any(numeric):
        raise UserError(f"at '{where}': shares and device ranges are mixed. Allowed: all "
                        "shares (numbers) or all device ranges (strings such as '0-49,60').")
    idx = np.full(n, -1, np.int32)
    for k, text in enumerate(spec.values()):
        try:
            devs = np.asarray(_parse_ranges(str(text)), np.int64)
        except ValueError:
            raise UserError(f"at '{where}': {text!r} is not a list of device ranges. Allowed: "
                            "comma-separated ids or ranges such as '0-49,60'.") from None
        devs = devs[devs < n]
        if np.any(idx[devs] >= 0):
            d = int(devs[idx[devs] >= 0][0])
            raise UserError(f"at '{where}': device {d} is attached to two nodes. Allowed: "
                            "each device in one range.")
        idx[devs] = k
    if np.any(idx < 0):
        d = int(np.flatnonzero(idx < 0)[0])
        raise UserError(f"at '{where}': device {d} is attached to no node (the fleet has {n} "
                        "devices). Allowed: ranges that cover devices 0 to n-1.")
    return names, idx


def from_file(options: dict[str, Any], n_devices: int,
              access: Callable[[int], tuple[float, float, float]],
              rng: np.random.Generator, class_of: np.ndarray | None = None) -> Topology:
    """A user graph (GraphML or edge list) with devices attached to some of its nodes.

    Links carry ``up_mbps`` (towards the server), ``down_mbps`` and ``latency_s``; the
    route from a node to the server is the lowest-latency path, its bandwidth the
    bottleneck link's. Devices attach by share (blocks or random) or by explicit device
    ranges, from the ``attach`` option or a node attribute.
    """
    o = FileTopologyOptions(**options)
    g = read_graph(o.path, o.format)
    if o.server not in g:
        raise _topo_error(o.path, f"there is no server node {o.server!r}",
                          "a graph with that node, or options.server naming its node")
    if o.server != SERVER:
        if SERVER in g:
            raise _topo_error(o.path, f"a node is named {SERVER!r} but {o.server!r} is the "
                              "server", f"no other node named {SERVER!r}")
        g = nx.relabel_nodes(g, {o.server: SERVER})
    names, idx = _file_attachment(g, o, n_devices, rng)
    return Topology(g, lambda i: names[idx[i]], access)


from_file.Options = FileTopologyOptions  # type: ignore[attr-defined]
TOPOLOGIES.add("file", from_file)
