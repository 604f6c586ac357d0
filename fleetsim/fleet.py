"""The fleet: device profiles, classes, traces and network paths, as arrays.

Per-device state lives in numpy arrays (class index, peak speed, sample count), so the
memory of a fleet grows by a few bytes per device; traces and network paths are looked up
per device on demand.

The models of a world that shares and spends are here too, each off unless configured
(and then nothing else changes: no random stream is drawn for them): bandwidth over time
(:meth:`Fleet.bandwidth`, :meth:`Fleet.transfer_s`), shared links (:attr:`Fleet.links`,
:meth:`Fleet.route`, :meth:`Fleet.own_rate`) and energy (:meth:`Fleet.energy`,
:meth:`Fleet.battery`, :meth:`Fleet.initial_charge_j`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fleetsim.config import EnergyConfig, FleetConfig, NetworkConfig, TraceConfig
from fleetsim.energy import (
    PHONE,
    BatterySpec,
    EnergyProfile,
)
from fleetsim.errors import UserError
from fleetsim.links import ConstantRate, LinkModel, LinkSpec, RateSource
from fleetsim.network import TOPOLOGIES, Path, Topology
from fleetsim.rng import int_seed, stream
from fleetsim.traces.bandwidth import (
    BYTES_PER_S_PER_MBPS,
    BandwidthGenerator,
    BandwidthTrace,
    DeviceBandwidth,
    make_generator,
    read_csv,
)
from fleetsim.traces.device import DeviceTrace
from fleetsim.traces.source import FileTraces, GeneratedTraces, TraceSource


@dataclass(frozen=True)
class DeviceClass:
    """A device class profile (see :class:`fleetsim.scenario.DeviceClassConfig`)."""

    name: str
    peak_macs_per_s: float
    memory_mb: float
    uplink_mbps: float
    downlink_mbps: float
    latency_s: float


def trace_source(cfg: TraceConfig, n_devices: int, seed: int, source: str | None = None,
                 key_path: str = "fleet.traces") -> TraceSource:
    """Open the trace file, or set up lazy generation, for ``n_devices`` devices."""
    if cfg.file is not None:
        if cfg.streams != "device":
            from fleetsim.errors import UserError

            raise UserError(f"{source}: at '{key_path}.streams': streams: {cfg.streams} "
                            "applies to generated traces, and this fleet reads "
                            f"{cfg.file}. Allowed: streams: device with a trace file, or a "
                            "generator instead of the file.")
        src = FileTraces(cfg.file, source=source, key_path=f"{key_path}.file")
        if src.n_devices < n_devices + cfg.device_offset:
            from fleetsim.errors import UserError

            raise UserError(f"{source}: at '{key_path}.file': {cfg.file} holds "
                            f"{src.n_devices} devices, the fleet needs "
                            f"{n_devices + cfg.device_offset} (devices + device_offset). "
                            "Allowed: a trace file with at least that many devices.")
        return src
    assert cfg.generator is not None
    try:
        return GeneratedTraces.from_name(cfg.generator, cfg.options,
                                         n_devices + cfg.device_offset, cfg.horizon_s,
                                         int_seed(seed, "traces"), cfg.streams)
    except ValueError as exc:  # only counter streams refuse a generator here
        from fleetsim.errors import UserError

        raise UserError(f"{source}: at '{key_path}.streams': counter streams are not "
                        f"available here: {exc}. Allowed: streams: device (the default), "
                        "or generator markov or constant with plain numbers.") from None


def class_counts(shares: Sequence[float], n: int) -> np.ndarray:
    """Devices per class: ``n`` split by ``shares``, summing to ``n`` exactly.

    Shares are normalised first: the scenario accepts shares that sum to 1 within 1e-6,
    and on a fleet of 10^9 devices that slack alone is a thousand devices. Then each class
    gets the floor of its quota and the largest remainders (ties: the earlier class) get
    the devices left over, of which there are fewer than the number of classes.
    """
    s = np.asarray(shares, dtype=np.float64)
    quota = s / s.sum() * n
    counts = np.floor(quota).astype(np.int64)
    rest = int(n - counts.sum())
    order = np.argsort(-(quota - counts), kind="stable")
    # float rounding can leave the floors one device above or below the exact split
    while rest < 0:
        k = int(np.argmax(counts))
        counts[k] -= 1
        rest += 1
    counts[order[:rest % len(s)]] += 1
    counts += rest // len(s)
    return counts


class Fleet:
    """All devices of a scenario.

    Attributes
    ----------
    classes : the device classes
    class_of : class index per device
    peak_macs_per_s : peak speed per device (class peak times the log-normal spread)
    topology : network paths
    """

    def __init__(self, cfg: FleetConfig, seed: int, source: str | None = None) -> None:
        n = cfg.devices
        self.n = n
        self.classes = tuple(DeviceClass(c.name, c.peak_macs_per_s, c.memory_mb, c.uplink_mbps,
                                         c.downlink_mbps, c.latency_s) for c in cfg.classes)
        counts = class_counts([c.share for c in cfg.classes], n)
        class_of = np.repeat(np.arange(len(counts)), counts).astype(np.int16)
        if cfg.assignment == "random":
            class_of = stream(seed, "fleet-classes").permutation(class_of)
        self.class_of = class_of
        spread = np.array([c.speed_spread for c in cfg.classes])[class_of]
        noise = stream(seed, "fleet-speed").standard_normal(n)
        self.peak_macs_per_s = np.array([c.peak_macs_per_s for c in cfg.classes])[class_of] \
            * np.exp(spread * noise - spread**2 / 2)  # mean-preserving log-normal factor
        self._fleet_traces = trace_source(cfg.traces, n, seed, source)
        self._offset = [cfg.traces.device_offset] * len(cfg.classes)
        self._class_traces: list[TraceSource] = []
        for k, c in enumerate(cfg.classes):
            if c.traces is None:
                self._class_traces.append(self._fleet_traces)
            else:
                self._class_traces.append(trace_source(
                    c.traces, n, int_seed(seed, "class-traces", k), source,
                    f"fleet.classes[{k}].traces"))
                self._offset[k] = c.traces.device_offset
        access = np.array([[c.uplink_mbps, c.downlink_mbps, c.latency_s] for c in cfg.classes])

        def access_of(i: int) -> tuple[float, float, float]:
            up, down, lat = access[self.class_of[i]]
            return float(up), float(down), float(lat)

        topo_fn = TOPOLOGIES.get(cfg.topology.kind, source=source, key_path="fleet.topology.kind")
        self.topology: Topology = topo_fn(cfg.topology.options, n, access_of,
                                          stream(seed, "topology"), class_of=self.class_of)
        self._paths: dict[int, Path] = {}
        #: whether any source makes traces faster together (see :meth:`prefetch`)
        self.batched = any(t.batched for t in self._class_traces)
        self._seed = seed
        self._world = _World(cfg, self, seed, source)

    def trace(self, device: int) -> DeviceTrace:
        k = int(self.class_of[device])
        return self._class_traces[k].device(device + self._offset[k])

    def prefetch(self, devices: Sequence[int], online_only: bool = False) -> None:
        """Make the traces of ``devices`` now, together where their source can (counter
        streams): the same traces :meth:`trace` would make one by one, sooner
        (``online_only``: only :meth:`online_at` will be asked of them)."""
        if not self.batched:
            return
        by_class: dict[int, list[int]] = {}
        for d in devices:
            k = int(self.class_of[d])
            by_class.setdefault(k, []).append(d + self._offset[k])
        for k, ids in by_class.items():
            self._class_traces[k].prefetch(ids, online_only)

    def online_at(self, device: int, t: float) -> bool:
        """Whether ``device`` is online at ``t`` (cheaper than ``trace(device).online_at``
        for devices asked about again and again: see :meth:`TraceSource.online_at`)."""
        k = int(self.class_of[device])
        return self._class_traces[k].online_at(device + self._offset[k], t)

    def path(self, device: int) -> Path:
        p = self._paths.get(device)
        if p is None:
            p = self.topology.path(device)
            if len(self._paths) < 1_000_000:
                self._paths[device] = p
        return p

    def class_name(self, device: int) -> str:
        return self.classes[int(self.class_of[device])].name

    # -- bandwidth over time ----------------------------------------------------------

    def bandwidth(self, device: int) -> DeviceBandwidth | None:
        """The device's own up and down bandwidth traces (None: its class has none, the
        constant ``uplink_mbps`` / ``downlink_mbps`` hold)."""
        return self._world.bandwidth(device)

    def transfer_s(self, device: int, t0: float, nbytes: float, direction: str) -> float:
        """Duration of a transfer of ``nbytes`` started at ``t0`` over the device's path
        (``direction`` 'up' or 'down'), links not shared: without a bandwidth trace exactly
        :meth:`Path.upload_s` / :meth:`Path.download_s`; with one, its rate capped by the
        infrastructure's bottleneck, integrated exactly from ``t0``, plus the latency."""
        path = self.path(device)
        bw = self._world.bandwidth(device)
        if bw is None:
            return path.upload_s(nbytes) if direction == "up" else path.download_s(nbytes)
        return self._world.capped(device, bw, direction).transfer_s(t0, nbytes,
                                                                     path.latency_s)

    def capped_bandwidth(self, device: int, direction: str) -> BandwidthTrace | None:
        """The device's bandwidth trace capped by the infrastructure's bottleneck (what
        :meth:`transfer_s` integrates; None: no trace, the constant path holds)."""
        bw = self._world.bandwidth(device)
        return None if bw is None else self._world.capped(device, bw, direction)

    # -- shared links -----------------------------------------------------------------

    @property
    def sharing(self) -> bool:
        """Whether transfers share links (``fleet.network.sharing: max_min``)."""
        return self._world.sharing

    @property
    def links(self) -> dict[str, tuple[LinkSpec, LinkSpec]]:
        """The shared links by name: (upload, download) :class:`~fleetsim.links.LinkSpec`
        in bytes per second (empty when sharing is off)."""
        return self._world.links

    @property
    def link_model(self) -> LinkModel:
        return self._world.link_model

    def route(self, device: int) -> tuple[str, ...]:
        """Names of the shared links a transfer of ``device`` crosses (each direction
        its own :class:`~fleetsim.links.FlowNetwork`)."""
        return self._world.route(device)

    def own_rate(self, device: int, direction: str) -> RateSource:
        """The device's own cap on a shared-link transfer, bytes per second: its access
        link, or its bandwidth trace."""
        return self._world.own_rate(device, direction)

    # -- energy -----------------------------------------------------------------------

    def energy(self, device: int) -> EnergyProfile | None:
        """What the device draws (None: its class has no energy model)."""
        return self._world.profiles[int(self.class_of[device])]

    def battery(self, device: int) -> BatterySpec | None:
        """The device's battery (None: none; energy is then counted, never limiting)."""
        return self._world.batteries[int(self.class_of[device])]

    def initial_charge_j(self, device: int) -> float:
        """The device's charge at time 0 (its class's initial_fraction of capacity)."""
        return self._world.initial_charge_j(device)


class _World:
    """The fleet's bandwidth, shared-link and energy models (all off by default)."""

    def __init__(self, cfg: FleetConfig, fleet: Fleet, seed: int, source: str | None
                 ) -> None:
        self.fleet = fleet
        self.seed = seed
        where = f"{source}: " if source else ""
        # bandwidth
        self.gens: list[tuple[BandwidthGenerator | None, BandwidthGenerator | None] | None] = []
        self.files: list[list[DeviceBandwidth] | None] = []
        self.horizon: list[float] = []
        for k, c in enumerate(cfg.classes):
            bw = c.bandwidth
            key = f"fleet.classes[{k}].bandwidth"
            self.horizon.append(bw.horizon_s if bw is not None else 0.0)
            if bw is None:
                self.gens.append(None)
                self.files.append(None)
            elif bw.file is not None:
                self.gens.append(None)
                devs = read_csv(bw.file, f"{key}.file", bw.period_s)
                need = int((fleet.class_of == k).sum())
                if len(devs) < need:
                    raise UserError(f"{where}at '{key}.file': {bw.file} holds {len(devs)} "
                                    f"devices, class '{c.name}' has {need}. Allowed: a file "
                                    "with at least one device per device of the class.")
                self.files.append(devs)
            else:
                self.files.append(None)
                self.gens.append(tuple(  # type: ignore[arg-type]
                    None if g is None else make_generator(g.generator, g.options,
                                                          f"{key}.{d}", source)
                    for d, g in (("up", bw.up), ("down", bw.down))))
        self.rank: np.ndarray | None = None
        if any(f is not None for f in self.files):  # j-th device of its class
            self.rank = np.empty(fleet.n, np.int64)
            for k in range(len(cfg.classes)):
                idx = np.flatnonzero(fleet.class_of == k)
                self.rank[idx] = np.arange(len(idx))
        self._bw: dict[int, DeviceBandwidth] = {}
        self._capped: dict[tuple[int, str], BandwidthTrace] = {}
        # shared links
        self.sharing = cfg.network.sharing == "max_min"
        self.links: dict[str, tuple[LinkSpec, LinkSpec]] = {}
        self.link_model = LinkModel()
        if self.sharing:
            self.links, self.link_model = _shared_links(cfg.network, fleet.topology, where)
        # energy
        self.profiles = [None if c.energy is None else _profile(c.energy)
                         for c in cfg.classes]
        self.batteries = [None if c.energy is None or c.energy.battery is None
                          else _battery(c.energy) for c in cfg.classes]
        self.initial = None
        if any(b is not None for b in self.batteries):
            self.initial = stream(seed, "battery-initial").random(fleet.n)
        self.cfg = cfg

    def bandwidth(self, device: int) -> DeviceBandwidth | None:
        k = int(self.fleet.class_of[device])
        files, gens = self.files[k], self.gens[k]
        if files is None and gens is None:
            return None
        hit = self._bw.get(device)
        if hit is not None:
            return hit
        if files is not None:
            assert self.rank is not None
            hit = files[int(self.rank[device])]
        else:
            assert gens is not None
            c = self.fleet.classes[k]
            pair = []
            for d, g, const in ((0, gens[0], c.uplink_mbps), (1, gens[1], c.downlink_mbps)):
                if g is None:
                    pair.append(BandwidthTrace.constant(const))
                else:
                    pair.append(g.make(self.horizon[k], stream(self.seed, "bandwidth",
                                                               d, device)))
            hit = DeviceBandwidth(pair[0], pair[1])
        if len(self._bw) < 100_000:
            self._bw[device] = hit
        return hit

    def capped(self, device: int, bw: DeviceBandwidth, direction: str) -> BandwidthTrace:
        """The trace capped by the infrastructure's bottleneck (the path without the
        access link)."""
        hit = self._capped.get((device, direction))
        if hit is None:
            up, down, _ = self.fleet.topology.infra_path(device)
            hit = bw.up.capped(up) if direction == "up" else bw.down.capped(down)
            if len(self._capped) < 100_000:
                self._capped[(device, direction)] = hit
        return hit

    def route(self, device: int) -> tuple[str, ...]:
        r = self.fleet.topology.route(device)
        return ("server", *r) if "server" in self.links else r

    def own_rate(self, device: int, direction: str) -> RateSource:
        bw = self.bandwidth(device)
        if bw is not None:
            return bw.up if direction == "up" else bw.down
        c = self.fleet.classes[int(self.fleet.class_of[device])]
        mbps = c.uplink_mbps if direction == "up" else c.downlink_mbps
        return ConstantRate(mbps * BYTES_PER_S_PER_MBPS)

    def initial_charge_j(self, device: int) -> float:
        k = int(self.fleet.class_of[device])
        b, c = self.batteries[k], self.cfg.classes[k].energy
        if b is None or c is None or c.battery is None or self.initial is None:
            raise ValueError(f"device {device} has no battery")
        low, high = c.battery.initial_fraction
        return b.capacity_j * (low + (high - low) * float(self.initial[device]))


def _profile(e: EnergyConfig) -> EnergyProfile:
    base = PHONE if e.profile == "phone" else EnergyProfile()
    fields = ("full_load_w", "joules_per_mac", "tx_w", "rx_w", "joules_per_byte_up",
              "joules_per_byte_down", "idle_w")
    vals = {f: getattr(base, f) for f in fields}
    if e.joules_per_mac is not None:  # the per-MAC form replaces the profile's power
        vals["full_load_w"] = None
    if e.joules_per_byte_up is not None:
        vals["tx_w"] = 0.0
    if e.joules_per_byte_down is not None:
        vals["rx_w"] = 0.0
    vals.update({f: getattr(e, f) for f in fields if getattr(e, f) is not None})
    return EnergyProfile(**vals)


def _battery(e: EnergyConfig) -> BatterySpec:
    b = e.battery
    assert b is not None
    return BatterySpec(capacity_j=b.capacity_j, floor_j=b.floor_fraction * b.capacity_j,
                       resume_j=b.resume_fraction * b.capacity_j, charge_w=b.charge_w,
                       charge_when=b.charge_when)


def _shared_links(net: NetworkConfig, topo: Topology, where: str
                  ) -> tuple[dict[str, tuple[LinkSpec, LinkSpec]], LinkModel]:
    """The shared links of a topology: its infrastructure links, its cells (when
    configured), the server's access link (when configured), capacities overridden by
    name; an unknown name is a :class:`UserError`."""
    raw: dict[str, tuple[float, float, float]] = dict(topo.links())
    if net.cell is not None:
        if not topo.cells:
            raise UserError(f"{where}at 'fleet.network.cell': this topology has no cells. "
                            "Allowed: cell with topology kind hierarchical, or none.")
        for name in topo.cells.values():
            raw[name] = (net.cell.up_mbps, net.cell.down_mbps, net.cell.latency_s)
    if net.server_link is not None:
        s = net.server_link
        raw["server"] = (s.up_mbps, s.down_mbps, s.latency_s)
    for name, cap in net.capacities.items():
        if name not in raw:
            names = ", ".join(sorted(raw)[:20]) or "none (configure server_link or cell)"
            raise UserError(f"{where}at 'fleet.network.capacities.{name}': there is no link "
                            f"named {name!r}. Allowed: one of this fleet's links: {names}.")
        raw[name] = (cap.up_mbps, cap.down_mbps, cap.latency_s)
    links = {n: (LinkSpec(u * BYTES_PER_S_PER_MBPS, lat), LinkSpec(d * BYTES_PER_S_PER_MBPS, lat))
             for n, (u, d, lat) in raw.items()}
    model = LinkModel.lv08() if net.lv08 else LinkModel(latency=net.latency)
    return links, model
