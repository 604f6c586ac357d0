"""Importers: other projects' device data into fleetsim's formats.

- FedScale ``client_device_capacity`` (pickled dict: client id -> ``{'computation': ms
  per sample, 'communication': kbit/s}``) -> device classes (a ``fleet.classes`` YAML
  snippet), speed classes binned by quantile.
- FedScale ``client_behave_trace`` (pickled dict: client id -> ``{'duration',
  'finish_time', 'active': [start s ...], 'inactive': [end s ...], 'model'}``) -> a trace
  file, online while active, each client repeating its own ``finish_time`` cycle within
  the file's one period (see :func:`import_fedscale_behave`).
- FedScale ``client_device_capacity``'s ``communication`` (kbit/s) -> per-client
  bandwidth, one constant rate per client (:func:`capacity_bandwidth`), written as a
  bandwidth CSV (:func:`fleetsim.traces.bandwidth.write_csv`).
- A plain CSV ``device,t_s,availability[,online]`` -> a trace file.

Unpickling runs code stored in the file: import only pickles you trust.
"""

from __future__ import annotations

import csv
import math
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fleetsim.errors import UserError
from fleetsim.traces.bandwidth import BandwidthTrace, DeviceBandwidth
from fleetsim.traces.format import Signal, TraceSet, write_traces
from fleetsim.traces.generators import intervals_signal
from fleetsim.traces.period import split_period

# FedScale's per-sample times do not depend on the model. fleetsim turns them into a peak
# speed through the forward MACs of one sample of a reference model: MobileNetV2 at
# 224x224 (about 300 M MACs), the kind of mobile vision model such device benchmarks time.
# With backward_factor 2 (the default) a training sample costs 3x forward, FedScale's
# 'augmentation_factor' of 3, so a model of exactly ref_macs_per_sample trains at
# FedScale's speed.
REF_MACS_PER_SAMPLE = 3.0e8


def _load_pickle(path: str | os.PathLike[str], what: str) -> dict[Any, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: the file does not exist. Allowed: the path of FedScale's "
                        f"{what} pickle.")
    try:
        with p.open("rb") as f:
            data = pickle.load(f)  # runs code: the docs say to import only trusted files
    except Exception as exc:  # unpickling fails in many ways on foreign files
        raise UserError(f"{p}: cannot be unpickled ({type(exc).__name__}: {exc}). Allowed: "
                        f"FedScale's {what} file (a pickled dict).") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{p}: holds a {type(data).__name__}"
                        f"{' (empty)' if isinstance(data, dict) else ''}. Allowed: a non-empty "
                        "pickled dict of client id -> record.")
    return data


def _sorted_ids(ids: list[Any]) -> list[Any]:
    """Client ids in numeric order when they are all integers, else as text."""
    try:
        return sorted(ids, key=int)
    except (TypeError, ValueError):
        return sorted(ids, key=str)


# ----------------------------------------------------------------------------- capacity


@dataclass(frozen=True)
class CapacityClasses:
    """Device classes derived from FedScale's capacity file."""

    classes: list[dict[str, Any]]
    n_clients: int
    skipped: int
    source: str
    ref_macs_per_sample: float

    def yaml(self) -> str:
        """A ``fleet.classes`` YAML snippet, with a comment saying how it was made."""
        head = [f"# fleet.classes from FedScale client_device_capacity {self.source}",
                f"# {self.n_clients} clients ({self.skipped} skipped: missing or non-positive "
                f"values), {len(self.classes)} speed classes binned by quantile;",
                f"# peak_macs_per_s = {self.ref_macs_per_sample:g} MACs per sample / "
                "(computation ms / 1000), uplink = communication kbit/s / 1000;",
                "# speed_spread is the sd of log speed within a class.",
                "classes:"]
        rows = []
        for c in self.classes:
            items = ", ".join(f"{k}: {_yaml_num(v)}" if not isinstance(v, str) else f"{k}: {v}"
                              for k, v in c.items())
            rows.append(f"  - {{{items}}}")
        return "\n".join(head + rows) + "\n"


def _yaml_num(x: float) -> str:
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def capacity_classes(path: str | os.PathLike[str], n_classes: int = 4,
                     ref_macs_per_sample: float = REF_MACS_PER_SAMPLE,
                     down_up_ratio: float = 1.0, latency_s: float = 0.05) -> CapacityClasses:
    """Bin FedScale's clients into ``n_classes`` speed classes of (nearly) equal share.

    Parameters
    ----------
    path : FedScale's ``client_device_capacity`` pickle
    n_classes : number of speed quantile bins
    ref_macs_per_sample : forward MACs of one sample of the model FedScale's times stand for
    down_up_ratio : downlink / uplink (FedScale has one bandwidth for both directions)
    latency_s : one-way access latency given to every class (FedScale has none)

    Per class: ``peak_macs_per_s`` is the geometric mean speed of its clients,
    ``speed_spread`` the sd of their log speeds (the log-normal spread fleetsim applies),
    ``uplink_mbps`` the median bandwidth, ``share`` the class's share of clients.
    """
    finite = all(math.isfinite(x) for x in (ref_macs_per_sample, down_up_ratio, latency_s))
    if not (finite and n_classes >= 1 and ref_macs_per_sample > 0 and down_up_ratio > 0
            and latency_s >= 0):
        raise UserError("command line: --classes must be >= 1, --ref-macs-per-sample and "
                        "--down-up-ratio finite and > 0, --latency-s finite and >= 0. Allowed: "
                        "e.g. --classes 4.")
    data = _load_pickle(path, "client_device_capacity")
    comp, comm = [], []
    skipped = 0
    for cid in _sorted_ids(list(data)):
        rec = data[cid]
        try:
            c, b = float(rec["computation"]), float(rec["communication"])
        except (KeyError, TypeError, ValueError):
            skipped += 1
            continue
        if not (c > 0 and b > 0 and math.isfinite(c) and math.isfinite(b)):
            skipped += 1
            continue
        comp.append(c)
        comm.append(b)
    if len(comp) < n_classes:
        raise UserError(f"{path}: only {len(comp)} clients have positive 'computation' and "
                        f"'communication' values, fewer than --classes {n_classes}. Allowed: a "
                        "capacity file with records {'computation': ms, 'communication': kbps}.")
    speed = ref_macs_per_sample / (np.asarray(comp) / 1000.0)  # MAC/s at full availability
    kbps = np.asarray(comm)
    # equal-count bins by rank (quantiles), fastest first; ties cannot empty a bin
    order = np.argsort(-speed, kind="stable")
    bins = np.array_split(order, n_classes)
    shares = np.array([len(b) for b in bins], float) / len(speed)
    shares = np.round(shares, 6)
    shares[-1] = round(1.0 - shares[:-1].sum(), 6)
    classes = []
    for k, b in enumerate(bins):
        logs = np.log(speed[b])
        up = float(np.median(kbps[b])) / 1000.0
        classes.append({
            "name": f"fedscale-q{k + 1}", "share": float(shares[k]),
            "peak_macs_per_s": float(np.exp(logs.mean())),
            "uplink_mbps": up, "downlink_mbps": up * down_up_ratio, "latency_s": latency_s,
            "speed_spread": float(logs.std()),
        })
    return CapacityClasses(classes, len(comp), skipped, str(path), ref_macs_per_sample)


def capacity_bandwidth(path: str | os.PathLike[str], down_up_ratio: float = 1.0
                       ) -> tuple[list[DeviceBandwidth], list[Any]]:
    """Each FedScale client's own bandwidth, and the client ids in device order.

    FedScale gives one ``communication`` rate per client in kbit/s (from MobiPerf) and
    uses it for both directions; here ``up_mbps = kbit/s / 1000`` and ``down_mbps = up *
    down_up_ratio``. Clients with a missing or non-positive rate are refused, naming the
    client (a run should not silently get fewer devices than the file has).
    """
    if not (down_up_ratio > 0 and math.isfinite(down_up_ratio)):
        raise UserError(f"command line: --down-up-ratio {down_up_ratio!r} is not allowed. "
                        "Allowed: a finite ratio > 0.")
    data = _load_pickle(path, "client_device_capacity")
    out: list[DeviceBandwidth] = []
    ids = _sorted_ids(list(data))
    for cid in ids:
        try:
            kbps = float(data[cid]["communication"])
        except (KeyError, TypeError, ValueError):
            kbps = math.nan
        if not (kbps > 0 and math.isfinite(kbps)):
            raise UserError(f"{path}: client {cid!r}: 'communication' is not a positive "
                            "number. Allowed: records {'computation': ms, 'communication': "
                            "kbit/s > 0}.")
        up = kbps / 1000.0
        out.append(DeviceBandwidth(BandwidthTrace.constant(up),
                                   BandwidthTrace.constant(up * down_up_ratio)))
    return out, ids


# ----------------------------------------------------------------------------- behaviour


#: What the FedScale behaviour importer reports rather than rejects: each a count, printed
#: by the CLI and stored in the output file's provenance (``extra.import_report``).
BEHAVE_REPORT = {
    "clipped_at_finish_time": "intervals running past their client's finish_time, cut there "
                              "(FedScale's cur_time % finish_time never gets beyond it)",
    "start_at_or_after_finish_time": "intervals starting at or after their client's "
                                     "finish_time, dropped (FedScale never reaches them)",
    "end_before_start": "intervals whose inactive time is before their active time, dropped "
                        "(FedScale's active <= t <= inactive never holds)",
    "open_last_interval": "clients with one inactive time fewer than active times: the last "
                          "interval runs to the client's finish_time",
    "inexact_wrap_clients": "clients whose finish_time does not divide the period: their "
                            "cycle restarts at the period's end, where FedScale's would not",
    "never_online_clients": "clients that are never online",
    "skipped_clients": "clients dropped by --skip-never-online",
}

_BEHAVE_ALLOWED = ("a dict record with 'finish_time' (the client's period, seconds > 0) and "
                   "'active' and 'inactive' lists of seconds >= 0 (one inactive per active, or "
                   "one fewer when the last interval runs to finish_time)")

# The most interval copies one client may unroll into the period: a period far longer
# than a client's cycle would otherwise build a huge trace without saying so.
MAX_UNROLLED_INTERVALS = 10_000_000


def _behave_error(path: Path, cid: Any, key: str | None, problem: str) -> UserError:
    where = f"client {cid!r}" + (f", key {key}" if key else "")
    return UserError(f"{path}: at {where}: {problem}. Allowed: {_BEHAVE_ALLOWED}.")


def _finish_time(path: Path, cid: Any, rec: Any) -> float:
    """The client's own period, FedScale's ``finish_time``."""
    if not isinstance(rec, Mapping):
        raise _behave_error(path, cid, None, f"the record is a {type(rec).__name__}, not a "
                            "dict")
    if "finish_time" not in rec:
        raise _behave_error(path, cid, "'finish_time'", "missing")
    try:
        f = float(rec["finish_time"])
    except (TypeError, ValueError):
        raise _behave_error(path, cid, "'finish_time'", f"{rec['finish_time']!r} is not a "
                            "number") from None
    if not (f > 0 and math.isfinite(f)):
        raise _behave_error(path, cid, "'finish_time'", f"{f!r} s is not a positive finite "
                            "time")
    return f


def _intervals(path: Path, cid: Any, rec: Mapping[str, Any], finish_s: float,
               report: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """One client's online intervals ``[start, end)`` within ``[0, finish_s]``, as FedScale's
    ``is_active`` sees them; what it cannot see is dropped or cut, and counted."""
    times = {}
    for key in ("active", "inactive"):
        if key not in rec:
            raise _behave_error(path, cid, f"'{key}'", "missing")
        try:
            x = np.asarray(rec[key] if rec[key] is not None else [], dtype=np.float64)
        except (TypeError, ValueError):
            raise _behave_error(path, cid, f"'{key}'", "not a list of numbers") from None
        if x.ndim != 1:
            raise _behave_error(path, cid, f"'{key}'", "not a flat list of numbers")
        bad = np.flatnonzero(~np.isfinite(x))
        if len(bad):
            raise _behave_error(path, cid, f"'{key}'[{bad[0]}]",
                                f"{float(x[bad[0]])!r} is not a finite time")
        neg = np.flatnonzero(x < 0)
        if len(neg):
            raise _behave_error(path, cid, f"'{key}'[{neg[0]}]",
                                f"time {float(x[neg[0]])!r} s is negative (times count from "
                                "the trace's start)")
        times[key] = x
    act, ina = times["active"], times["inactive"]
    if len(ina) == len(act) - 1:
        ina = np.append(ina, finish_s)  # online until the end of the client's cycle
        report["open_last_interval"] += 1
    if len(ina) != len(act):
        raise _behave_error(path, cid, None, f"{len(act)} active times but {len(ina)} "
                            "inactive times")
    late = act >= finish_s
    backwards = ~late & (ina < act)
    keep = ~late & ~backwards
    clipped = keep & (ina > finish_s)
    report["start_at_or_after_finish_time"] += int(late.sum())
    report["end_before_start"] += int(backwards.sum())
    report["clipped_at_finish_time"] += int(clipped.sum())
    return act[keep], np.minimum(ina[keep], finish_s)


def _unroll(path: Path, cid: Any, starts: np.ndarray, ends: np.ndarray, finish_s: float,
            period_s: float, report: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Repeat a client's cycle of ``finish_s`` over the file's period (starts, lengths).

    Exact wherever the cycle fits; when ``finish_s`` does not divide the period, the last
    cycle is cut at the period's end and the file restarts the client at phase 0, where
    FedScale would be at phase ``period_s % finish_s``: the one inexact place, counted.
    """
    q, r = split_period(period_s, finish_s)
    tol = 1e-9 * period_s  # decimal periods (1000.1 * 3 vs 3000.3) divide to within rounding
    if r <= tol:
        copies = int(q)
    elif finish_s - r <= tol:
        copies = int(q) + 1
    else:
        copies = int(q) + 1
        report["inexact_wrap_clients"] += 1
    if copies * len(starts) > MAX_UNROLLED_INTERVALS:
        raise _behave_error(path, cid, "'finish_time'", f"repeating its {finish_s:g} s cycle "
                            f"over the period of {period_s:g} s makes {copies * len(starts)} "
                            "intervals, too many; choose a shorter --period-s")
    shift = np.arange(copies, dtype=np.float64)[:, None] * finish_s
    a = (starts[None, :] + shift).ravel()
    b = np.minimum((ends[None, :] + shift).ravel(), period_s)
    keep = a < period_s
    return a[keep], b[keep] - a[keep]


def import_fedscale_behave(path: str | os.PathLike[str], availability: float = 1.0,
                           period_s: float | None = None, skip_never_online: bool = False
                           ) -> tuple[TraceSet, list[Any]]:
    """FedScale's ``client_behave_trace`` as a trace set, and the client ids in device order.

    Parameters
    ----------
    path : the pickle
    availability : availability of every device (FedScale's trace has only on/off)
    period_s : the file's period (default: the largest ``finish_time``); it may not be
        shorter than any client's ``finish_time``
    skip_never_online : drop clients with no active interval (default: keep them, offline)

    FedScale asks ``active[i] <= cur_time % finish_time <= inactive[i]`` with each
    client's *own* ``finish_time``; a fleetsim file has one period for all devices. So
    each client's cycle is repeated within the file's period: exact up to the period's
    end, and for ever where ``finish_time`` divides the period; elsewhere the client
    restarts at phase 0 when the file wraps, while FedScale would be at phase
    ``period % finish_time``. Those clients are counted (``inexact_wrap_clients``); a
    ``period_s`` that is a common multiple of the finish times, or longer than the runs,
    makes the import exact. (The least common multiple itself can be unboundedly long.)

    Rejected with a :class:`UserError` naming the file, the client and the key: missing
    keys, non-numeric or negative times, a ``finish_time`` that is not positive, a
    ``period_s`` shorter than a ``finish_time``, and client ids that are equal as text (the
    file stores ids as text). Reported and counted in ``meta['import_report']`` (keys of
    :data:`BEHAVE_REPORT`): what FedScale's rule cannot see, which is cut or dropped the
    way FedScale would (intervals past ``finish_time``, intervals ending before they
    start), and the inexact wrap-arounds.
    """
    p = Path(path)
    if not 0.0 <= availability <= 1.0:
        raise UserError(f"command line: --availability {availability} is not allowed. "
                        "Allowed: a share of peak compute in [0, 1].")
    if period_s is not None and not (period_s > 0 and math.isfinite(period_s)):
        raise UserError(f"command line: --period-s {period_s} is not allowed. Allowed: "
                        "positive finite seconds, at least every client's finish_time.")
    data = _load_pickle(p, "client_behave_trace")
    ids = _sorted_ids(list(data))
    _check_text_ids(p, ids)
    finish = {cid: _finish_time(p, cid, data[cid]) for cid in ids}
    longest = max(ids, key=lambda c: finish[c])
    if period_s is None:
        period_s = finish[longest]
    elif period_s < finish[longest]:
        raise UserError(f"{p}: --period-s {period_s:g} is shorter than the data: client "
                        f"{longest!r} has key 'finish_time' {finish[longest]:g} s, so its cycle "
                        "would be cut. Allowed: --period-s at least the largest finish_time, or "
                        "no --period-s (the largest finish_time).")
    report = dict.fromkeys(BEHAVE_REPORT, 0)
    on_t, on_v, kept = [], [], []
    for cid in ids:
        starts, ends = _intervals(p, cid, data[cid], finish[cid], report)
        a, length = _unroll(p, cid, starts, ends, finish[cid], period_s, report)
        t, v = intervals_signal(a, length, period_s)
        if not v.any():
            report["never_online_clients"] += 1
            if skip_never_online:
                report["skipped_clients"] += 1
                continue
        on_t.append(t)
        on_v.append(v)
        kept.append(cid)
    if not kept:
        raise UserError(f"{p}: no client has an active interval. Allowed: a file with at least "
                        "one active interval, or no --skip-never-online.")
    n = len(kept)
    av = Signal(np.zeros(n), np.full(n, float(availability)), np.arange(n + 1, dtype=np.int64))
    meta = {"source": f"FedScale client_behave_trace {p.name}", "generator": "",
            "params": {"availability": availability, "period_s": period_s,
                       "skip_never_online": skip_never_online},
            "clients_in_file": len(ids), "devices": n, "import_report": report}
    ts = TraceSet(av, Signal.from_lists(on_t, on_v, np.uint8), period_s, period_s, meta)
    return ts, kept


def _check_text_ids(path: Path, ids: list[Any]) -> None:
    """Client ids are stored as text: two ids with one text (1 and "1") are an error."""
    seen: dict[str, Any] = {}
    for cid in ids:
        other = seen.setdefault(str(cid), cid)
        if other is not cid:
            raise UserError(f"{path}: client ids {other!r} and {cid!r} are the same as text "
                            f"({str(cid)!r}), and the trace file stores ids as text (dataset "
                            "client_id). Allowed: client ids that differ as text.")


def write_with_ids(path: str | os.PathLike[str], ts: TraceSet, ids: list[Any]) -> None:
    """Write ``ts`` and, as dataset ``client_id``, the source id of every device.

    The ids go in a dataset, not an attribute: HDF5 attributes are limited to 64 KB and a
    FedScale file has ~100,000 clients. Written under a temporary name, then renamed.
    """
    out = Path(path)
    tmp = out.with_name(out.name + ".import")
    write_traces(tmp, ts)
    try:
        with h5py.File(tmp, "a") as f:
            f.create_dataset("client_id", data=np.asarray([str(i) for i in ids], dtype="S"))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- CSV

CSV_HEADERS = (["device", "t_s", "availability"], ["device", "t_s", "availability", "online"])


def import_csv(path: str | os.PathLike[str], period_s: float | None = None,
               horizon_s: float | None = None) -> tuple[TraceSet, list[int]]:
    """A CSV ``device,t_s,availability[,online]`` as a trace set, and the device ids.

    Rows are sorted by device (integer ids, non-decreasing), then by time (strictly
    increasing within a device, the first at 0); availability in [0, 1], online 0 or 1
    (default 1). Device k of the trace is the k-th distinct id. Without ``period_s`` the
    last values hold for ever; ``horizon_s`` defaults to the period or the last time.
    Any violation is a :class:`UserError` naming the file and the line.
    """
    p = Path(path)
    for flag, x in (("--period-s", period_s), ("--horizon-s", horizon_s)):
        if x is not None and not (x > 0 and math.isfinite(x)):
            raise UserError(f"command line: {flag} {x:g} is not allowed. Allowed: positive "
                            "finite seconds.")
    if period_s is not None and horizon_s is not None and horizon_s != period_s:
        raise UserError(f"command line: --horizon-s {horizon_s:g} differs from --period-s "
                        f"{period_s:g}; a periodic trace's horizon is its period. Allowed: "
                        "--period-s alone, or --horizon-s alone (no repetition).")
    if not p.is_file():
        raise UserError(f"{p}: the file does not exist. Allowed: a CSV file with the header "
                        "device,t_s,availability[,online].")

    def bad(line: int, problem: str, allowed: str) -> UserError:
        return UserError(f"{p}: line {line}: {problem}. Allowed: {allowed}.")

    dev, ts_, av, on = [], [], [], []
    with p.open(newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header not in CSV_HEADERS:
            raise bad(1, f"header {','.join(header)!r}", "the header device,t_s,availability "
                      "or device,t_s,availability,online")
        width = len(header)
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != width:
                raise bad(line, f"{len(row)} fields", f"{width} fields ({','.join(header)})")
            try:
                d = int(row[0])
                t = float(row[1])
                a = float(row[2])
                o = float(row[3]) if width == 4 else 1.0
            except ValueError:
                raise bad(line, f"{','.join(row)!r} is not numeric", "an integer device id "
                          "and numbers") from None
            dev.append((d, line))
            ts_.append(t)
            av.append(a)
            on.append(o)
    if not dev:
        raise bad(2, "no data rows", "at least one row after the header")
    d = np.asarray([x for x, _ in dev], np.int64)
    lines = np.asarray([x for _, x in dev], np.int64)
    t = np.asarray(ts_, np.float64)
    a = np.asarray(av, np.float64)
    o = np.asarray(on, np.float64)
    _check_rows(bad, d, lines, t, a, o, period_s)
    starts = np.flatnonzero(np.concatenate([[True], d[1:] != d[:-1]]))
    offsets = np.append(starts, len(d)).astype(np.int64)
    ids = d[starts].tolist()
    end = float(period_s) if period_s is not None else float(horizon_s or t.max() or 1.0)
    meta = {"source": f"CSV {p.name}", "generator": "",
            "params": {"period_s": period_s, "horizon_s": end}, "devices": len(ids)}
    avail = _dedupe(t, a, offsets, np.float64)
    online = _dedupe(t, o.astype(np.uint8), offsets, np.uint8)
    return TraceSet(avail, online, end, period_s, meta), ids


def _check_rows(bad: Any, d: np.ndarray, lines: np.ndarray, t: np.ndarray, a: np.ndarray,
                o: np.ndarray, period_s: float | None) -> None:
    """Raise for the first row (in file order) that breaks a rule."""
    problems: list[tuple[int, str, str]] = []

    def first(mask: np.ndarray, problem: Any, allowed: str) -> None:
        k = np.flatnonzero(mask)
        if len(k):
            problems.append((int(k[0]), problem(int(k[0])), allowed))

    new_dev = np.concatenate([[True], d[1:] != d[:-1]])
    first(d < 0, lambda k: f"device id {d[k]}", "device ids >= 0")
    first(np.concatenate([[False], d[1:] < d[:-1]]),
          lambda k: f"device {d[k]} after device {d[k - 1]} (rows not sorted by device)",
          "rows sorted by device, then by time")
    first(~np.isfinite(t), lambda k: f"time {t[k]}", "finite times in seconds")
    first(new_dev & (t != 0), lambda k: f"the first row of device {d[k]} is at t_s={t[k]:g}",
          "each device's first row at t_s=0")
    first(~new_dev & ~(np.diff(t, prepend=-np.inf) > 0),
          lambda k: f"t_s={t[k]:g} after t_s={t[k - 1]:g} for device {d[k]} (not increasing)",
          "rows sorted by device, then by strictly increasing time")
    if period_s is not None:
        first(t >= period_s, lambda k: f"t_s={t[k]:g} at or past the period {period_s:g} s",
              "times below --period-s")
    first(~((a >= 0) & (a <= 1)), lambda k: f"availability {a[k]:g} out of range",
          "availability in [0, 1]")
    first(~((o == 0) | (o == 1)), lambda k: f"online {o[k]:g}", "online 0 or 1")
    if problems:
        k, problem, allowed = min(problems, key=lambda x: x[0])
        raise bad(int(lines[k]), problem, allowed)


def _dedupe(t: np.ndarray, v: np.ndarray, offsets: np.ndarray, dtype: Any) -> Signal:
    """CSR signal keeping only rows whose value differs from the row before (same device)."""
    keep = np.ones(len(t), bool)
    keep[1:] = v[1:] != v[:-1]
    keep[offsets[:-1]] = True  # every device keeps its first row
    counts = np.add.reduceat(keep.astype(np.int64), offsets[:-1]) if len(t) else np.zeros(0)
    off = np.zeros(len(offsets), np.int64)
    np.cumsum(counts, out=off[1:])
    return Signal(t[keep], v[keep].astype(dtype), off)
