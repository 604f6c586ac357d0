"""Cut and join trace files: ``slice`` (devices and/or a time window) and ``merge``.

Both stream devices chunk by chunk from the inputs to the output, so files larger than
memory work, and both write atomically (temporary name, then rename). A ``client_id``
dataset (written by the importers) follows its devices.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fleetsim.errors import UserError
from fleetsim.traces.format import SIGNALS, Signal, TraceSet, TraceWriter, open_trace_file
from fleetsim.traces.format import read_header as _read_header
from fleetsim.traces.period import split_period


def window(t: np.ndarray, v: np.ndarray, start_s: float, end_s: float,
           period_s: float | None) -> tuple[np.ndarray, np.ndarray]:
    """One device's signal on ``[start_s, end_s)``, shifted to start at 0.

    A periodic signal is unrolled over as many periods as the window spans. Breakpoints
    that repeat the previous value are dropped, and so is one whose shifted time rounds
    to the window's length (the format allows no breakpoint at the period itself).
    """
    if period_s is not None:
        # the exact split: floor(start / period) is one too many just below a period
        # start that binary floating point cannot place (1000.1 * 5), which read the
        # window's first value from the wrong period
        k0 = split_period(start_s, period_s)[0]
        k1 = split_period(end_s, period_s)[0] + 1  # the period holding end_s, inclusive
        ks = np.arange(k0, max(k1, k0 + 1), dtype=np.float64)
        t = (t[None, :] + ks[:, None] * period_s).ravel()
        v = np.tile(v, len(ks))
    first = max(int(np.searchsorted(t, start_s, side="right")) - 1, 0)
    inner = (t > start_s) & (t < end_s)
    shifted = t[inner] - start_s
    inside = shifted < end_s - start_s
    nt = np.concatenate([[0.0], shifted[inside]])
    nv = np.concatenate([v[first:first + 1], v[inner][inside]])
    # shifting can round two close times (or one onto 0) to one value: the later one wins
    last = np.append(nt[1:] != nt[:-1], True)
    nt, nv = nt[last], nv[last]
    keep = np.concatenate([[True], nv[1:] != nv[:-1]])
    return nt[keep], nv[keep]


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, n, size):
        yield lo, min(lo + size, n)


def _read_chunk(f: h5py.File, lo: int, hi: int) -> dict[str, Signal]:
    out = {}
    for name in SIGNALS:
        off = f[f"{name}/offsets"][lo:hi + 1].astype(np.int64)
        a, b = int(off[0]), int(off[-1])
        out[name] = Signal(f[f"{name}/t"][a:b], f[f"{name}/value"][a:b], off - a)
    return out


def _ids(f: h5py.File, lo: int, hi: int) -> np.ndarray | None:
    return f["client_id"][lo:hi] if "client_id" in f else None


def _finish(tmp: Path, out: Path, ids: list[np.ndarray] | None) -> None:
    """Attach the client ids (when every input had them) and move into place."""
    try:
        if ids is not None:
            with h5py.File(tmp, "a") as f:
                f.create_dataset("client_id", data=np.concatenate(ids) if ids else
                                 np.zeros(0, "S1"))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def slice_file(src: str | os.PathLike[str], out: str | os.PathLike[str],
               devices: tuple[int, int] | None = None, start_s: float | None = None,
               end_s: float | None = None, chunk_devices: int = 4096) -> dict[str, Any]:
    """Write devices ``[lo, hi)`` of ``src``, on the time window ``[start_s, end_s)``.

    The window is shifted to start at 0 and becomes the new horizon. A periodic source
    gives a periodic slice (period: the window's length), so a run longer than the window
    replays it; a non-periodic one gives a non-periodic slice. Returns the new header.
    """
    src, out = Path(src), Path(out)
    with open_trace_file(src, key_path="") as f:
        n, horizon, period, meta = _read_header(f)
        lo, hi = devices if devices is not None else (0, n)
        if not 0 <= lo < hi <= n:
            raise UserError(f"command line: --devices {lo}:{hi} is not allowed for {src} "
                            f"({n} devices). Allowed: START:STOP with 0 <= START < STOP <= {n}.")
        a = 0.0 if start_s is None else float(start_s)
        b = (period or horizon) if end_s is None else float(end_s)
        if not (a >= 0 and b > a and math.isfinite(b)):
            raise UserError(f"command line: the window [{a:g}, {b:g}) s is not allowed. "
                            "Allowed: 0 <= --start-s < --end-s (finite seconds).")
        whole_time = a == 0 and b == (period or horizon)
        new_period = None if period is None else (period if whole_time else b - a)
        new_meta = dict(meta)
        new_meta["sliced_from"] = {"file": src.name, "devices": [lo, hi], "window_s": [a, b],
                                   "source": meta.get("source", ""),
                                   "generator": meta.get("generator", "")}
        tmp = out.with_name(out.name + ".slice")
        ids: list[np.ndarray] | None = [] if "client_id" in f else None
        with TraceWriter(tmp, hi - lo, b - a, new_period, new_meta) as w:
            for c0, c1 in _chunks(hi - lo, chunk_devices):
                raw = _read_chunk(f, lo + c0, lo + c1)
                if ids is not None:
                    ids.append(_ids(f, lo + c0, lo + c1))  # type: ignore[arg-type]
                sigs = {}
                for name, sig in raw.items():
                    if whole_time:
                        sigs[name] = sig
                        continue
                    parts = [window(*sig.device(i), a, b, period) for i in range(c1 - c0)]
                    sigs[name] = Signal.from_lists([p[0] for p in parts], [p[1] for p in parts],
                                                   sig.value.dtype)
                w.append(TraceSet(sigs["availability"], sigs["online"], b - a, new_period))
    _finish(tmp, out, ids)
    return {"n_devices": hi - lo, "horizon_s": b - a, "period_s": new_period}


def merge_files(srcs: list[str | os.PathLike[str]], out: str | os.PathLike[str],
                chunk_devices: int = 4096) -> dict[str, Any]:
    """Concatenate the devices of ``srcs`` (same period and horizon) into ``out``."""
    paths = [Path(s) for s in srcs]
    if len(paths) < 2:
        raise UserError("command line: merge needs at least two input files. Allowed: "
                        "fleetsim traces merge A.h5 B.h5 [...] -o OUT.h5.")
    files = [open_trace_file(p, key_path="") for p in paths]
    try:
        heads = [_read_header(f) for f in files]
        _, h0, p0, _ = heads[0]
        for p, (_, h, per, _) in zip(paths[1:], heads[1:]):
            if h != h0 or per != p0:
                raise UserError(f"{p}: horizon {h:g} s and period {per or 0:g} s differ from "
                                f"{paths[0]}'s ({h0:g} s, {p0 or 0:g} s). Allowed: files with the "
                                "same horizon and period (use 'fleetsim traces slice' first).")
        gens = {hd[3].get("generator", "") for hd in heads}
        meta = {"source": "fleetsim traces merge", "generator": gens.pop() if len(gens) == 1
                else "", "params": {"files": [p.name for p in paths],
                                    "devices": [hd[0] for hd in heads]},
                "seed": seeds.pop() if len(seeds := {hd[3].get("seed", -1) for hd in heads})
                == 1 else -1}
        total = sum(hd[0] for hd in heads)
        out = Path(out)
        tmp = out.with_name(out.name + ".merge")
        ids: list[np.ndarray] | None = [] if all("client_id" in f for f in files) else None
        with TraceWriter(tmp, total, h0, p0, meta) as w:
            for f, (n, *_) in zip(files, heads):
                for c0, c1 in _chunks(n, chunk_devices):
                    s = _read_chunk(f, c0, c1)
                    w.append(TraceSet(s["availability"], s["online"], h0, p0))
                    if ids is not None:
                        ids.append(_ids(f, c0, c1))  # type: ignore[arg-type]
        _finish(tmp, out, ids)
    finally:
        for f in files:
            f.close()
    return {"n_devices": total, "horizon_s": h0, "period_s": p0}
