"""Run output: ``run.h5`` (rounds, device timeline, provenance), ``rounds.csv`` and
``accuracy.png``; every column is described in ``docs/results.md``.

A run's folder is written as one unit: all its files go into a fresh temporary folder
beside it, which is renamed into place when complete (see :func:`publish`). So a crash or
a ``kill -9`` never leaves a file that looks finished, and never leaves the files of two
runs side by side; ``run.h5`` marks a complete run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fleetsim._version import __version__
from fleetsim.config import Scenario
from fleetsim.engine import (
    ROUND_COLUMNS,
    STATUS,
    WORLD_ROUND_COLUMNS,
    WORLD_TIMELINE_COLUMNS,
    RunLog,
)
from fleetsim.facts import RunFacts
from fleetsim.guardrails import run_warnings
from fleetsim.timeunits import UNIT_WORDS, pick_time_unit

TIMELINE_COLUMNS = ("device", "round", "t_start_s", "t_end_s", "status", "steps", "macs",
                    "mean_kept_share", "bytes_down", "bytes_up", "start_version")
#: written when the run's facts are known (every run of this version); the class names
#: are the timeline's attribute ``class_names``
CLASS_COLUMN = "device_class"

#: columns a run adds when its update pipeline asks for them (docs/pipeline.md):
#: the privacy accountant's epsilon and the noise's std, and the rounds a robust rule
#: kept the model for lack of updates; the timeline's ``attacker``
EXTRA_ROUND_COLUMNS = ("noise_std", "epsilon", "aggregation_skipped")


#: The files a run writes into its folder; a new run replaces exactly these (and their
#: temporary names), leaving anything else a user put there alone.
RUN_FILES = ("run.h5", "rounds.csv", "accuracy.png")
DONE_FILE = "run.h5"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def staging_dir(out: Path) -> Path:
    """A fresh, empty temporary folder beside ``out`` (same file system: renames work)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    # mkdtemp makes it private (0700); once renamed it is the run's folder, so give it the
    # permissions a plain mkdir would
    umask = os.umask(0)
    os.umask(umask)
    staged.chmod(0o777 & ~umask)
    return staged


def publish(staged: Path, out: Path) -> None:
    """Move the complete run in ``staged`` to ``out`` as one unit.

    If ``out`` does not exist (or is an empty folder), one rename does it: atomic. If it
    holds an earlier run, that run's files are removed first, ``run.h5`` first (so the
    folder stops looking finished), and the new files are moved in with ``run.h5`` last.
    An interruption in between leaves a folder without ``run.h5`` -- incomplete, which
    ``compare`` reruns -- but never one run's ``rounds.csv`` beside another's ``run.h5``.
    """
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        out.rmdir()  # (a link to an empty folder is filled through the link instead)
    if not out.exists():
        os.rename(staged, out)
        return
    out.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:  # DONE_FILE comes first
        for p in (out / name, out / (name + ".tmp")):
            p.unlink(missing_ok=True)
    names = sorted(p.name for p in staged.iterdir() if p.name != DONE_FILE)
    for name in [*names, DONE_FILE]:
        if (staged / name).exists():
            os.replace(staged / name, out / name)
    shutil.rmtree(staged, ignore_errors=True)


def write_files(out_dir: str | os.PathLike[str], files: Iterable[tuple[str, bytes]]) -> None:
    """Write a run's files (name, bytes) into ``out_dir`` as one unit."""
    out = Path(out_dir)
    staged = staging_dir(out)
    try:
        for name, data in files:
            (staged / name).write_bytes(data)
        publish(staged, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def provenance(sc: Scenario, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    import scipy
    import simpy
    import torch

    return {
        "fleetsim_version": __version__, "scenario_text": sc.text(),
        "scenario_digest": sc.digest(), "seed": sc.seed, "eval_split": sc.eval.split,
        "python": sys.version.split()[0],
        "platform": platform.platform(), "torch": torch.__version__,
        "numpy": np.__version__, "scipy": scipy.__version__, "simpy": simpy.__version__,
        "h5py": h5py.__version__,
        # which model settings were the method's defaults and which the scenario's own
        "method_defaults": list(sc._method_defaults),
        # the DSE front a DISTREAL-family policy read ("" for the others)
        "dse_front": _front_used(sc) or "", **(extra or {}),
    }


def _front_used(sc: Scenario) -> str | None:
    from fleetsim.build import front_used  # here: readers of results (report) need no build

    return front_used(sc)


def timeline_arrays(log: RunLog, facts: RunFacts | None = None) -> dict[str, np.ndarray]:
    """The timeline as columns; with ``facts``, also each row's device class (index into
    ``facts.class_names``)."""
    tl = log.timeline
    code = {s: i for i, s in enumerate(STATUS)}
    out = {
        "device": np.fromiter((o.device for o in tl), np.int64, len(tl)),
        "round": np.fromiter((o.round for o in tl), np.int64, len(tl)),
        "t_start_s": np.fromiter((o.t_start for o in tl), np.float64, len(tl)),
        "t_end_s": np.fromiter((o.t_end for o in tl), np.float64, len(tl)),
        "status": np.fromiter((code[o.status] for o in tl), np.int8, len(tl)),
        "steps": np.fromiter((o.steps for o in tl), np.int64, len(tl)),
        "macs": np.fromiter((o.macs for o in tl), np.float64, len(tl)),
        "mean_kept_share": np.fromiter((o.kept_share_sum / o.steps if o.steps else math.nan
                                        for o in tl), np.float64, len(tl)),
        "bytes_down": np.fromiter((o.bytes_down for o in tl), np.int64, len(tl)),
        "bytes_up": np.fromiter((o.bytes_up for o in tl), np.int64, len(tl)),
        "start_version": np.fromiter((o.start_version for o in tl), np.int64, len(tl)),
        **{c: np.fromiter((getattr(o, c) for o in tl), np.float64, len(tl))
           for w in sorted(log.world) for c in WORLD_TIMELINE_COLUMNS.get(w, ())},
    }
    if log.attackers is not None:
        out["attacker"] = np.fromiter((log.attackers[o.device] for o in tl), np.bool_, len(tl))
    if facts is not None:
        out[CLASS_COLUMN] = np.asarray(facts.class_of, np.int16)[out["device"]]
    return out


def round_columns(rows: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """:data:`ROUND_COLUMNS`, then the update pipeline's and the world models' columns
    that ``rows`` has."""
    extra = [c for c in EXTRA_ROUND_COLUMNS if rows and c in rows[0]]
    extra += [c for cols in WORLD_ROUND_COLUMNS.values() for c in cols
              if rows and c in rows[0]]
    return (*ROUND_COLUMNS, *extra)


def rounds_arrays(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {c: np.array([r[c] for r in rows]) for c in round_columns(rows)}


def write_run(out_dir: str | os.PathLike[str], sc: Scenario, log: RunLog,
              extra: dict[str, Any] | None = None, facts: RunFacts | None = None) -> Path:
    """Write all outputs of a run into ``out_dir`` as one unit; returns ``run.h5``'s path.

    ``facts`` (the fleet's classes, samples per device) add the timeline's device class,
    the class sizes and the samples-per-device figures, and the data guardrail."""
    out = Path(out_dir)
    staged = staging_dir(out)
    try:
        _write_into(staged, sc, log, extra, facts)
        publish(staged, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return out / DONE_FILE


def _write_into(out: Path, sc: Scenario, log: RunLog, extra: dict[str, Any] | None,
                facts: RunFacts | None = None) -> None:
    write_rounds_csv(out / "rounds.csv", log.rounds)
    if sc.output.plot:
        plot_accuracy(out / "accuracy.png", log.rounds, sc.name, sc.eval.split)
    h5 = out / DONE_FILE
    tmp = h5.with_name(h5.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        g = f.create_group("rounds")
        for k, v in rounds_arrays(log.rounds).items():
            g.create_dataset(k, data=v)
        if sc.output.timeline:
            t = f.create_group("timeline")
            for k, v in timeline_arrays(log, facts).items():
                t.create_dataset(k, data=v, compression="gzip" if len(v) > 4096 else None)
            t.attrs["status_codes"] = json.dumps(list(STATUS))
        more: dict[str, Any] = {"wall_s": log.wall_s, **(extra or {}),
                                "warnings": run_warnings(log.rounds, facts)}
        if facts is not None:
            lo, med, hi = facts.samples_stats()
            more.update(class_names=list(facts.class_names),
                        class_sizes=[int(x) for x in facts.class_sizes()],
                        samples_per_device=[lo, med, hi], batch_size=facts.batch_size)
        prov = provenance(sc, more)
        for k, v in prov.items():
            if isinstance(v, bool | int | float):
                f.attrs[k] = v
            else:  # str subclasses (torch's version string) would become numpy unicode
                f.attrs[k] = str(v) if isinstance(v, str) else json.dumps(v)
    os.replace(tmp, h5)


def write_rounds_csv(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    rows = list(rows)
    cols = round_columns(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_fmt(r[c]) for c in cols])
    atomic_write_bytes(path, buf.getvalue().encode())


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return str(v)


def read_rounds(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The rounds table of a ``run.h5`` (or a ``rounds.csv``) as columns."""
    p = Path(path)
    if p.suffix == ".csv":
        with p.open() as f:
            rows = list(csv.DictReader(f))
        return {c: np.array([float(r[c]) if r[c] != "" else math.nan for r in rows])
                for c in (rows[0].keys() if rows else ROUND_COLUMNS)}
    with h5py.File(p, "r") as f:
        return {k: f["rounds"][k][:] for k in f["rounds"]}


def read_attr_json(path: str | os.PathLike[str], name: str, default: Any = None) -> Any:
    """A JSON-valued attribute of a ``run.h5`` (``warnings``, ``class_names``, ...);
    ``default`` when the run was written before it existed."""
    with h5py.File(path, "r") as f:
        v = f.attrs.get(name)
    if v is None:
        return default
    return json.loads(v.decode() if isinstance(v, bytes) else str(v))


def read_timeline(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The device timeline of a ``run.h5`` as columns (empty when it was not written)."""
    with h5py.File(path, "r") as f:
        return {k: f["timeline"][k][:] for k in f["timeline"]} if "timeline" in f else {}


def read_eval_split(path: str | os.PathLike[str]) -> str:
    """What a ``run.h5``'s accuracy measured: "test" or "validation" (``eval.split``).

    Runs written before the attribute existed could only evaluate the test set."""
    with h5py.File(path, "r") as f:
        v = f.attrs.get("eval_split", "test")
    return v.decode() if isinstance(v, bytes) else str(v)


def plot_accuracy(path: Path, rows: list[dict[str, Any]], title: str,
                  split: str = "test") -> None:
    """Accuracy (on ``split``) versus simulated time, in a unit that fits the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit, scale = pick_time_unit(max((r["t_end_s"] for r in rows), default=0.0))
    pts = [(r["t_end_s"] / scale, r["accuracy"]) for r in rows
           if not math.isnan(r["accuracy"])]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    if pts:
        x, y = zip(*pts)
        ax.plot(x, y, marker="o", ms=3, lw=1.5)
    ax.set_xlabel(f"simulated time ({UNIT_WORDS[unit]})")
    ax.set_ylabel(f"{split} accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
