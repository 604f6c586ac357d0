"""The trace file format (HDF5, columnar).

One group per signal (``availability``, ``online``), each holding the concatenated
breakpoint times ``t`` (float64, seconds), the values ``value`` and CSR ``offsets`` of
length ``n_devices + 1``: device ``i`` owns ``t[offsets[i]:offsets[i+1]]``. A signal is
piecewise constant: ``value[k]`` holds on ``[t[k], t[k+1])`` and the last value holds to
the end of the period (periodic traces) or forever. Every device's times start at 0 and
increase strictly; a periodic trace has all times below ``period_s``.

Columnar rather than one group per device, because opening 100,000 groups is slow.
File attributes: ``format``, ``version``, ``n_devices``, ``horizon_s``, ``period_s``
(0 for none), units, and provenance (``generator``, ``params`` as JSON, ``seed``,
``source``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fleetsim.errors import UserError

FORMAT_NAME = "fleetsim-trace"
FORMAT_VERSION = 1
SIGNALS = ("availability", "online")


@dataclass(frozen=True)
class Signal:
    """One piecewise-constant signal for many devices, in CSR layout."""

    t: np.ndarray
    value: np.ndarray
    offsets: np.ndarray

    @property
    def n_devices(self) -> int:
        return len(self.offsets) - 1

    def device(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.t[lo:hi], self.value[lo:hi]

    @staticmethod
    def from_lists(times: list[np.ndarray], values: list[np.ndarray], dtype: Any) -> Signal:
        lengths = np.fromiter((len(t) for t in times), dtype=np.int64, count=len(times))
        offsets = np.zeros(len(times) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        t = np.concatenate(times).astype(np.float64) if times else np.zeros(0)
        v = np.concatenate(values).astype(dtype) if values else np.zeros(0, dtype)
        return Signal(t=t, value=v, offsets=offsets)


@dataclass(frozen=True)
class TraceSet:
    """Availability and online traces of a fleet, in memory.

    Parameters
    ----------
    availability : share of peak compute that training may use, in [0, 1]
    online : 1 where the device can be reached, 0 where not
    horizon_s : length of the recorded or generated time span
    period_s : the traces repeat with this period, or None
    meta : provenance (generator, params, seed, source, ...)
    """

    availability: Signal
    online: Signal
    horizon_s: float
    period_s: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_devices(self) -> int:
        return self.availability.n_devices

    def __post_init__(self) -> None:
        if self.online.n_devices != self.availability.n_devices:
            raise ValueError("availability and online signals cover different device counts")


def write_traces(path: str | os.PathLike[str], ts: TraceSet) -> None:
    """Write ``ts`` to ``path`` atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        _write_header(f, ts.n_devices, ts.horizon_s, ts.period_s, ts.meta)
        for name in SIGNALS:
            sig: Signal = getattr(ts, name)
            g = f.create_group(name)
            g.create_dataset("t", data=sig.t, chunks=True if len(sig.t) else None)
            g.create_dataset("value", data=sig.value, chunks=True if len(sig.value) else None)
            g.create_dataset("offsets", data=sig.offsets)
    os.replace(tmp, path)


def _write_header(f: h5py.File, n: int, horizon_s: float, period_s: float | None,
                  meta: dict[str, Any]) -> None:
    f.attrs["format"] = FORMAT_NAME
    f.attrs["version"] = FORMAT_VERSION
    f.attrs["n_devices"] = n
    f.attrs["horizon_s"] = float(horizon_s)
    f.attrs["period_s"] = float(period_s or 0.0)
    f.attrs["units_time"] = "s"
    f.attrs["units_availability"] = "share of peak compute usable for training, 0..1"
    f.attrs["units_online"] = "1 reachable, 0 not"
    for key in ("generator", "source"):
        f.attrs[key] = str(meta.get(key, ""))
    f.attrs["seed"] = int(meta.get("seed", -1))
    f.attrs["params"] = json.dumps(meta.get("params", {}), sort_keys=True, default=str)
    extra = {k: v for k, v in meta.items() if k not in ("generator", "source", "seed", "params")}
    f.attrs["extra"] = json.dumps(extra, sort_keys=True, default=str)


class TraceWriter:
    """Append devices to a trace file chunk by chunk, so huge fleets never sit in memory.

    Use as a context manager; the file appears under its final name only when the
    writer is closed without error.
    """

    def __init__(self, path: str | os.PathLike[str], n_devices: int, horizon_s: float,
                 period_s: float | None, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.n_devices = n_devices
        self._f = h5py.File(self.tmp, "w")
        _write_header(self._f, n_devices, horizon_s, period_s, meta)
        self._count = {s: 0 for s in SIGNALS}
        self._offsets = {s: [np.zeros(1, np.int64)] for s in SIGNALS}
        self._devices = 0
        for name, dtype in (("availability", np.float64), ("online", np.uint8)):
            g = self._f.create_group(name)
            g.create_dataset("t", shape=(0,), maxshape=(None,), dtype=np.float64,
                             chunks=(1 << 14,))
            g.create_dataset("value", shape=(0,), maxshape=(None,), dtype=dtype,
                             chunks=(1 << 14,))

    def append(self, chunk: TraceSet) -> None:
        """Append the devices of ``chunk`` after those already written."""
        for name in SIGNALS:
            sig: Signal = getattr(chunk, name)
            g = self._f[name]
            n0, n1 = self._count[name], self._count[name] + len(sig.t)
            for ds, data in (("t", sig.t), ("value", sig.value)):
                g[ds].resize((n1,))
                g[ds][n0:n1] = data
            self._offsets[name].append(sig.offsets[1:] + n0)
            self._count[name] = n1
        self._devices += chunk.n_devices

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            if self._devices != self.n_devices:
                self._f.close()
                self.tmp.unlink(missing_ok=True)
                raise ValueError(f"wrote {self._devices} devices, announced {self.n_devices}")
            for name in SIGNALS:
                self._f[name].create_dataset("offsets", data=np.concatenate(self._offsets[name]))
            self._f.close()
            os.replace(self.tmp, self.path)
        else:
            self._f.close()
            self.tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- reading


def _bad(path: Path | str, key: str, problem: str, allowed: str) -> UserError:
    """The one-paragraph error; ``path`` is a file, or a text naming another origin."""
    origin = f"trace file {path}" if isinstance(path, Path) else path
    return UserError(f"{origin}: at '{key}': {problem}. Allowed: {allowed}.")


def open_trace_file(path: str | os.PathLike[str], *, source: str | None = None,
                    key_path: str = "fleetsim.traces.file") -> h5py.File:
    """Open a trace file and check what every reader relies on, turning any fault into a
    :class:`UserError`: the file, its ``format`` and ``version``, the header attributes
    (:func:`read_header`), the six datasets, equal lengths of ``t`` and ``value``, and the
    CSR ``offsets``. The breakpoints themselves are checked by :func:`validate_signal`.
    """
    path = Path(path)
    where = f"{source}: at '{key_path}': " if source else ""
    if not path.exists():
        raise UserError(f"{where}trace file {path} does not exist. Allowed: the path of an HDF5 "
                        "trace file written by 'fleetsim traces generate' or 'traces import'.")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"{where}trace file {path} cannot be read as HDF5 ({exc}). Allowed: an "
                        "HDF5 trace file written by 'fleetsim traces generate' or 'traces import'."
                        ) from None
    try:
        _check_file(path, f, where)
    except Exception:
        f.close()
        raise
    return f


def _check_file(path: Path, f: h5py.File, where: str) -> None:
    fmt = f.attrs.get("format")
    if fmt != FORMAT_NAME:
        raise UserError(f"{where}{path} is not a fleetsim trace file (attribute 'format' is "
                        f"{fmt!r}). Allowed: format '{FORMAT_NAME}'.")
    version = f.attrs.get("version")
    if version is None:
        raise _bad(path, "version", "attribute missing", f"version {FORMAT_VERSION}")
    if not (isinstance(version, int | np.integer) and 1 <= version <= FORMAT_VERSION):
        shown = int(version) if isinstance(version, np.integer) else version
        raise _bad(path, "version", f"version {shown!r} is not one this fleetsim reads "
                   "(a newer fleetsim may have written it)",
                   " to ".join(dict.fromkeys(f"version {v}" for v in (1, FORMAT_VERSION))))
    n = read_header(f)[0]
    for name in SIGNALS:
        for ds in ("t", "value", "offsets"):
            if f"{name}/{ds}" not in f:
                raise _bad(path, f"{name}/{ds}", "dataset missing",
                           "a file with t, value and offsets for availability and online")
        n_t, n_v = f[f"{name}/t"].shape[0], f[f"{name}/value"].shape[0]
        if n_t != n_v:
            raise _bad(path, name, f"t and value differ in length ({n_t} and {n_v})",
                       "equal lengths")
        check_offsets(path, name, f[f"{name}/offsets"][:].astype(np.int64), n, n_t)


def check_offsets(path: Path, name: str, off: np.ndarray, n_devices: int,
                  n_breakpoints: int) -> None:
    """The CSR offsets of a whole signal: ``n_devices + 1`` of them, from 0 to the number
    of breakpoints, every device with at least one breakpoint."""
    if len(off) != n_devices + 1:
        raise _bad(path, f"{name}/offsets", f"{len(off)} offsets for {n_devices} devices "
                   "(attribute n_devices)", "n_devices + 1 offsets")
    if off[0] != 0 or off[-1] != n_breakpoints or np.any(np.diff(off) < 1):
        raise _bad(path, f"{name}/offsets", f"offsets must start at 0, end at the number of "
                   f"breakpoints ({n_breakpoints}) and give every device at least one "
                   "breakpoint", "increasing CSR offsets of length n_devices+1")


def read_header(f: h5py.File) -> tuple[int, float, float | None, dict[str, Any]]:
    """``(n_devices, horizon_s, period_s or None, meta)``; a :class:`UserError` naming the
    attribute when one is missing or out of range."""
    path = Path(f.filename)
    for key in ("n_devices", "horizon_s"):
        if key not in f.attrs:
            raise _bad(path, key, "attribute missing", "the header written by fleetsim")
    try:
        n = int(f.attrs["n_devices"])
        horizon_s = float(f.attrs["horizon_s"])
        period = float(f.attrs.get("period_s", 0.0))
    except (TypeError, ValueError) as exc:
        raise _bad(path, "n_devices', 'horizon_s' or 'period_s", f"not a number ({exc})",
                   "numbers") from None
    if n < 1:
        raise _bad(path, "n_devices", f"{n} devices", "a count >= 1")
    if not (horizon_s > 0 and math.isfinite(horizon_s)):
        raise _bad(path, "horizon_s", f"{horizon_s!r} s", "a positive finite time span")
    if not (period >= 0 and math.isfinite(period)):
        raise _bad(path, "period_s", f"{period!r} s", "a positive finite period, or 0 for "
                   "none")
    meta: dict[str, Any] = {
        "generator": str(f.attrs.get("generator", "")),
        "source": str(f.attrs.get("source", "")),
        "seed": int(f.attrs.get("seed", -1)),
    }
    for key, default in (("params", "{}"), ("extra", "{}")):
        try:
            value = json.loads(f.attrs.get(key, default))
        except (TypeError, ValueError) as exc:
            raise _bad(path, key, f"not valid JSON ({exc})", "a JSON object") from None
        if not isinstance(value, dict):
            raise _bad(path, key, f"a JSON {type(value).__name__}", "a JSON object")
        if key == "params":
            meta["params"] = value
        else:
            meta.update(value)
    return n, horizon_s, (period if period > 0 else None), meta


def validate_signal(path: Path | str, name: str, t: np.ndarray, value: np.ndarray,
                    offsets: np.ndarray, period_s: float | None, *,
                    first_device: int = 0) -> None:
    """Check one signal, or a run of its devices; raise :class:`UserError` naming the fault.

    ``path`` is the file, or a text naming where the signal came from (a generator).
    ``offsets`` must start at 0 for the run given; ``first_device`` is the index in the file
    of its first device, so that messages name true device numbers.
    """
    n = len(offsets) - 1
    if n < 0 or offsets[0] != 0 or offsets[-1] != len(t) or np.any(np.diff(offsets) < 1):
        raise _bad(path, f"{name}/offsets", "offsets must start at 0, end at the number of "
                   "breakpoints and give every device at least one breakpoint",
                   "non-decreasing CSR offsets of length n_devices+1")
    if len(t) != len(value):
        raise _bad(path, name, "t and value differ in length", "equal lengths")
    if not np.all(np.isfinite(t)):
        raise _bad(path, f"{name}/t", "non-finite time", "finite seconds")
    firsts = t[offsets[:-1]]
    if np.any(firsts != 0.0):
        dev = int(np.flatnonzero(firsts != 0.0)[0]) + first_device
        raise _bad(path, f"{name}/t", f"device {dev} does not start at t=0",
                   "every device's first breakpoint at 0 s")
    inner = np.ones(max(len(t) - 1, 0), dtype=bool)
    inner[offsets[1:-1] - 1] = False  # the step from one device to the next may go down
    bad = np.flatnonzero(inner & ~(np.diff(t) > 0))
    if len(bad):
        k = int(bad[0]) + 1
        dev = int(np.searchsorted(offsets, k, side="right") - 1) + first_device
        raise _bad(path, f"{name}/t", f"times are not strictly increasing for device {dev} "
                   f"({float(t[k - 1])!r} s then {float(t[k])!r} s)",
                   "strictly increasing breakpoint times per device")
    if period_s is not None and len(t) and t.max() >= period_s:
        raise _bad(path, f"{name}/t", f"a breakpoint at {float(t.max())} s lies at or beyond the "
                   f"period {period_s} s", "times in [0, period_s)")
    v = np.asarray(value, dtype=np.float64)
    ok = (v >= 0.0) & (v <= 1.0) if name == "availability" else (v == 0.0) | (v == 1.0)
    if not np.all(ok):
        k = int(np.flatnonzero(~ok)[0])
        dev = int(np.searchsorted(offsets, k, side="right") - 1) + first_device
        raise _bad(path, f"{name}/value", f"value {float(v[k])!r} of device {dev} is out of range",
                   "values in [0, 1]" if name == "availability" else "0 (offline) or 1 (online)")


def read_traces(path: str | os.PathLike[str], *, source: str | None = None,
                key_path: str = "fleet.traces.file") -> TraceSet:
    """Read and validate a whole trace file into memory."""
    path = Path(path)
    with open_trace_file(path, source=source, key_path=key_path) as f:
        _, horizon_s, period_s, meta = read_header(f)
        sigs = {}
        for name in SIGNALS:
            t = f[f"{name}/t"][:]
            v = f[f"{name}/value"][:]
            off = f[f"{name}/offsets"][:].astype(np.int64)  # checked on opening
            validate_signal(path, name, t, v, off, period_s)
            sigs[name] = Signal(t=t, value=v, offsets=off)
    return TraceSet(availability=sigs["availability"], online=sigs["online"],
                    horizon_s=horizon_s, period_s=period_s, meta=meta)
