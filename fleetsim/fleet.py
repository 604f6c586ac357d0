"""The fleet: device profiles, classes, traces and network paths, as arrays.

Per-device state lives in numpy arrays (class index, peak speed, sample count), so the
memory of a fleet grows by a few bytes per device; traces and network paths are looked up
per device on demand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fleetsim.config import FleetConfig, TraceConfig
from fleetsim.network import TOPOLOGIES, Path, Topology
from fleetsim.rng import int_seed, stream
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
