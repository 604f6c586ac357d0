"""Where a fleet's traces come from: a file, or a generator run lazily per device.

Both give :class:`~fleetsim.traces.device.DeviceTrace` objects on demand and keep only a
bounded cache of them, so a fleet far larger than a round touches never has to exist whole
in memory.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from fleetsim.rng import stream
from fleetsim.traces.device import DeviceTrace, OnlineSignal
from fleetsim.traces.format import (
    SIGNALS,
    Signal,
    TraceSet,
    TraceWriter,
    open_trace_file,
    read_header,
    validate_signal,
)
from fleetsim.traces.generators import GENERATORS, DeviceSignals, TraceGenerator

#: Default bounds of the trace cache: at most this many devices and this many bytes of
#: breakpoints. A one-week Markov trace with 10-minute dwells takes ~26 KB, so 4096 of them
#: stay near 110 MB; traces with far more breakpoints are bounded by the bytes instead.
CACHE_DEVICES = 4096
CACHE_BYTES = 256 * 2**20
#: Bytes of online signals kept (~1 KB per device with on/off periods of hours: ~100,000
#: devices), for selectors that ask many devices whether they are online every round.
ONLINE_CACHE_BYTES = 128 * 2**20
_ONLINE_OVERHEAD = 250  # bytes of Python objects around one cached online signal


class TraceSource:
    """Base: per-device traces with an LRU cache of parsed :class:`DeviceTrace` objects.

    Parameters
    ----------
    cache_size : at most this many traces are kept
    cache_bytes : and at most this many bytes of their breakpoints (the newest trace is
        always kept)
    """

    n_devices: int
    horizon_s: float
    period_s: float | None
    meta: dict[str, Any]

    def __init__(self, cache_size: int = CACHE_DEVICES, cache_bytes: int = CACHE_BYTES) -> None:
        self._cache: OrderedDict[int, DeviceTrace] = OrderedDict()
        self._cache_size = cache_size
        self._cache_bytes = cache_bytes
        self._cached_bytes = 0
        self._online: OrderedDict[int, OnlineSignal] = OrderedDict()
        self._online_bytes = 0

    #: whether :meth:`prefetch` makes traces faster than one by one
    batched = False

    def signals(self, i: int) -> DeviceSignals:
        raise NotImplementedError

    def signals_of(self, devices: Sequence[int]) -> list[DeviceSignals]:
        """The breakpoints of several devices (the same as :meth:`signals` of each)."""
        return [self.signals(i) for i in devices]

    def prefetch(self, devices: Sequence[int], online_only: bool = False) -> None:
        """Make the traces of ``devices`` now (default: nothing; they come on first use);
        ``online_only``: only their online signals will be asked for."""

    def _insert(self, i: int, tr: DeviceTrace) -> None:
        self._cache[i] = tr
        self._cached_bytes += tr.nbytes
        while len(self._cache) > 1 and (len(self._cache) > self._cache_size
                                        or self._cached_bytes > self._cache_bytes):
            self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes

    def device(self, i: int) -> DeviceTrace:
        tr = self._cache.get(i)
        if tr is not None:
            self._cache.move_to_end(i)
            return tr
        s = self.signals(i)
        tr = DeviceTrace(s.avail_t, s.avail_v, s.online_t, s.online_v, self.period_s)
        self._insert(i, tr)
        return tr

    def online_at(self, i: int, t: float) -> bool:
        """Whether device ``i`` is online at ``t`` (the same as ``device(i).online_at(t)``).

        Answered from a cache of online signals alone, which holds many more devices than
        the trace cache, so asking every explored device each round stays cheap.
        """
        sig = self._online.get(i)
        if sig is None:
            sig = self.device(i).online_signal()
            self._online[i] = sig
            self._online_bytes += sig.nbytes + _ONLINE_OVERHEAD
            while len(self._online) > 1 and self._online_bytes > ONLINE_CACHE_BYTES:
                self._online_bytes -= self._online.popitem(last=False)[1].nbytes \
                    + _ONLINE_OVERHEAD
        else:
            self._online.move_to_end(i)
        return sig.online_at(t)

    def materialise(self, devices: range | None = None) -> TraceSet:
        """All (or some) devices as an in-memory :class:`TraceSet`."""
        devices = devices if devices is not None else range(self.n_devices)
        sigs = self.signals_of(devices)
        return TraceSet(
            availability=Signal.from_lists([s.avail_t for s in sigs], [s.avail_v for s in sigs],
                                           np.float64),
            online=Signal.from_lists([s.online_t for s in sigs], [s.online_v for s in sigs],
                                     np.uint8),
            horizon_s=self.horizon_s, period_s=self.period_s, meta=self.meta)

    def write(self, path: str | os.PathLike[str], chunk_devices: int = 2000,
              progress: bool = False) -> None:
        """Write all devices to a trace file, chunk by chunk (bounded memory), atomically."""
        with TraceWriter(path, self.n_devices, self.horizon_s, self.period_s, self.meta) as w:
            starts = range(0, self.n_devices, chunk_devices)
            for lo in tqdm(starts, desc="traces", unit="chunk", disable=not progress):
                w.append(self.materialise(range(lo, min(lo + chunk_devices, self.n_devices))))


class GeneratedTraces(TraceSource):
    """Traces made per device on first use, from ``stream(seed, "trace", device)``.

    With ``streams="counter"`` they come from counter-based streams instead
    (:mod:`fleetsim.traces.batch`), many devices per numpy call: :meth:`prefetch` makes a
    whole list at once. A generator without that form is a :class:`ValueError` saying why.
    """

    def __init__(self, generator: TraceGenerator, name: str, n_devices: int, horizon_s: float,
                 seed: int, cache_size: int = CACHE_DEVICES,
                 cache_bytes: int = CACHE_BYTES, streams: str = "device") -> None:
        super().__init__(cache_size, cache_bytes)
        self.generator = generator
        self.n_devices = n_devices
        self.horizon_s = float(horizon_s)
        self.period_s = float(horizon_s)
        self.seed = seed
        self.streams = streams
        self.meta = {"generator": name, "params": generator.params(), "seed": seed,
                     "source": "fleetsim generator"}
        if streams == "counter":
            from fleetsim.traces import batch, counter

            why = batch.supports(generator, name)
            if why is not None:
                raise ValueError(why)
            self._key = counter.key(seed, "trace-counter")
            self.batched = True
            self.meta["streams"] = "counter"
        elif streams != "device":
            raise ValueError(f"streams must be 'device' or 'counter', not {streams!r}")
        # A plugin's traces are checked like a file's (values in range, times from 0,
        # increasing, below the period), once per device made. The built-in generators
        # are tested to keep the format and skip the check: it costs more (~90 us per
        # device) than making a constant trace.
        self._check = not type(generator).__module__.startswith("fleetsim.")

    @classmethod
    def from_name(cls, name: str, options: dict[str, Any], n_devices: int, horizon_s: float,
                  seed: int, streams: str = "device") -> GeneratedTraces:
        gen_cls = GENERATORS.get(name)
        return cls(gen_cls(gen_cls.Options(**options)), name, n_devices, horizon_s, seed,
                   streams=streams)

    def _batch(self, devices: Sequence[int]) -> Any:
        from fleetsim.traces import batch

        ids = np.asarray(devices, np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.n_devices):
            bad = ids[(ids < 0) | (ids >= self.n_devices)][0]
            raise IndexError(int(bad))
        return batch.make(self.generator, ids, self.horizon_s, self._key)

    def prefetch(self, devices: Sequence[int], online_only: bool = False) -> None:
        """Make the traces of ``devices`` not cached yet, together (counter streams).

        ``online_only``: the caller will only ask whether they are online, so devices
        whose online signal is cached are left out. At most as many as the cache holds
        are made (the first ones), so that a prefetch never evicts its own traces.
        """
        if not self.batched:
            return
        new = list(dict.fromkeys(i for i in devices if i not in self._cache
                                 and not (online_only and i in self._online)))
        new = new[:self._cache_size]
        if not new:
            return
        from fleetsim.traces.batch import device_traces

        for i, tr in zip(new, device_traces(self._batch(new), self.period_s)):
            self._insert(i, tr)

    def signals_of(self, devices: Sequence[int]) -> list[DeviceSignals]:
        if not self.batched:
            return super().signals_of(devices)
        b = self._batch(devices)
        return [b.row(r) for r in range(len(devices))]

    def signals(self, i: int) -> DeviceSignals:
        if not 0 <= i < self.n_devices:
            raise IndexError(i)
        if self.batched:
            return self._batch([i]).row(0)
        s = self.generator.device(i, self.horizon_s, stream(self.seed, "trace", i))
        if self._check:
            origin = f"trace generator '{self.meta['generator']}' (device {i})"
            for name, t, v in (("availability", s.avail_t, s.avail_v),
                               ("online", s.online_t, s.online_v)):
                validate_signal(origin, name, np.asarray(t), np.asarray(v),
                                np.array([0, len(t)]), self.period_s, first_device=i)
        return s


class FileTraces(TraceSource):
    """Traces read from an HDF5 trace file, one device's slice at a time.

    The whole file is validated when opened (in chunks, so memory stays bounded).
    """

    def __init__(self, path: str | os.PathLike[str], *, source: str | None = None,
                 key_path: str = "fleet.traces.file", cache_size: int = CACHE_DEVICES,
                 cache_bytes: int = CACHE_BYTES, validate_chunk: int = 1 << 22) -> None:
        super().__init__(cache_size, cache_bytes)
        self.path = Path(path)
        self._f: h5py.File = open_trace_file(self.path, source=source, key_path=key_path)
        n, self.horizon_s, self.period_s, self.meta = read_header(self._f)
        self.n_devices = n
        self._offsets = {}
        for name in SIGNALS:
            # lengths and offsets were checked on opening, for the whole file at once
            off = self._f[f"{name}/offsets"][:].astype(np.int64)
            self._offsets[name] = off
            self._validate(name, off, validate_chunk)

    def _validate(self, name: str, off: np.ndarray, chunk: int) -> None:
        t_ds, v_ds = self._f[f"{name}/t"], self._f[f"{name}/value"]
        d = 0
        while d < self.n_devices:
            # as many whole devices as fit in one chunk of breakpoints (at least one)
            e = int(np.searchsorted(off, off[d] + chunk, side="right")) - 1
            e = max(min(e, self.n_devices), d + 1)
            lo, hi = int(off[d]), int(off[e])
            try:
                validate_signal(self.path, name, t_ds[lo:hi], v_ds[lo:hi], off[d:e + 1] - lo,
                                self.period_s, first_device=d)
            except Exception:
                self._f.close()
                raise
            d = e

    def signals(self, i: int) -> DeviceSignals:
        if not 0 <= i < self.n_devices:
            raise IndexError(i)
        out = []
        for name in SIGNALS:
            off = self._offsets[name]
            lo, hi = int(off[i]), int(off[i + 1])
            out.append(self._f[f"{name}/t"][lo:hi])
            out.append(self._f[f"{name}/value"][lo:hi])
        return DeviceSignals(*out)

    def close(self) -> None:
        self._f.close()
