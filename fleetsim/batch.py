"""Batch runs: scenarios x policies x seeds x ``--set`` values, resumable.

Every cell of the grid is one ordinary run, written to
``DIR/<scenario>/<policy>/<overrides>/seed-<k>/`` exactly as ``fleetsim run`` writes it.
The driver (this process) plans the grid, validates every cell's scenario, and is the
only writer of ``DIR``: workers -- local processes or Ray tasks -- return the files' bytes
and the driver writes them atomically, ``run.h5`` last. So a cell with a ``run.h5`` is
complete, an interrupted batch resumes where it stopped, and a Ray cluster needs no shared
filesystem for results.

Each cell runs in a worker process, trains in-process on one thread, and derives every
random choice from its scenario and seed, so the results do not depend on ``--jobs``, on
the backend or on which cells ran before in the same worker.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import os
import re
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from fleetsim.build import load_scenario, method_defaults
from fleetsim.config import Scenario
from fleetsim.errors import UserError
from fleetsim.results import atomic_write_bytes, write_files

#: the file whose presence marks a complete cell (written last, atomically)
DONE_FILE = "run.h5"
FAILURES_FILE = "failures.csv"
FAILURE_COLUMNS = ("scenario", "policy", "overrides", "seed", "dir", "error")

# Cells are the unit of parallelism: inside a cell, training runs in-process on one
# thread, so `--jobs N` uses N cores and never N x workers x threads. The user's --set
# comes after these and can still change them.
CELL_DEFAULTS = ("training.backend=inprocess", "training.threads=1")

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+@-]")
_MAX_NAME = 100


# ----------------------------------------------------------------------------- grid


def safe_name(text: str) -> str:
    """A readable, filesystem-safe folder name for ``text``.

    Characters outside ``A-Z a-z 0-9 . _ = + @ -`` become ``_``; when anything was changed
    or cut, a short hash of the original is appended, so distinct texts never share a
    folder.
    """
    name = _UNSAFE.sub("_", text)
    if name.startswith((".", "-")):
        name = "_" + name
    if name != text or len(name) > _MAX_NAME:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        name = f"{name[:_MAX_NAME]}-{digest}"
    return name


def policy_of_label(label: str) -> str:
    """The policy part of a folder label: ``fedavg+stragglers=wait@lr=0.1`` ->
    ``fedavg+stragglers=wait`` (what a baseline is named by, whatever its tuned setting)."""
    return label.partition("@")[0]


def split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside brackets, braces and quotes (``[16,16]`` stays whole)."""
    parts: list[str] = []
    depth, quote, cur = 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


@dataclass(frozen=True)
class PolicySpec:
    """A policy of the grid: ``name`` or ``name:key=value;key2=value``.

    A key without a dot is one of the policy's options (``fedavg:stragglers=wait``); a
    dotted key is a scenario key set for this policy's cells only
    (``fedprox:training.optimizer.lr=0.1``), so each method can run at its own tuned
    learning rate in one grid.

    Attributes
    ----------
    name : registered policy name
    options : (key, value text) pairs; values are parsed as YAML, like ``--set``
    """

    name: str
    options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> PolicySpec:
        name, _, rest = text.strip().partition(":")
        if not name:
            raise UserError(f"command line: --policies: {text!r} has no policy name. "
                            "Allowed: name or name:key=value;key2=value, e.g. fedavg or "
                            "fedavg:stragglers=wait.")
        opts: list[tuple[str, str]] = []
        for item in split_top(rest, ";") if rest.strip() else []:
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise UserError(f"command line: --policies: option {item!r} of {text!r} is "
                                "not key=value. Allowed: name:key=value;key2=value, e.g. "
                                "fedavg:stragglers=wait.")
            opts.append((key.strip(), value.strip()))
        return cls(name, tuple(opts))

    @property
    def label(self) -> str:
        """Folder name, e.g. ``fedavg``, ``fedavg+stragglers=wait`` or, for the scenario
        key ``training.optimizer.lr=0.1``, ``fedavg@lr=0.1`` (``@`` and the key's last part:
        the policy *at* a setting; :func:`policy_of_label` strips it again)."""
        plain = [f"+{k}={v}" for k, v in self.options if "." not in k]
        scenario = [f"@{k.rpartition('.')[2]}={v}" for k, v in self.options if "." in k]
        return safe_name("".join([self.name, *plain, *scenario]))

    @property
    def text(self) -> str:
        return self.name + (":" + ";".join(f"{k}={v}" for k, v in self.options)
                            if self.options else "")

    def overrides(self, base_policy: str) -> list[str]:
        """``--set`` strings selecting this policy in a scenario whose policy is
        ``base_policy``: the same policy keeps the scenario's options (given ones on
        top); another policy starts from its defaults."""
        reset = [] if self.name == base_policy else ["policy.options={}"]
        # a dotted key is a scenario key for this policy's cells only (e.g. the learning
        # rate a sweep chose for it); a plain key is one of the policy's own options
        return [f"policy.name={self.name}", *reset,
                *(f"{k}={v}" if "." in k else f"policy.options.{k}={v}"
                  for k, v in self.options)]


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0-4"`` -> (0, 1, 2, 3, 4); ``"0,3,7"`` and ``"0-2,9"`` work too."""
    seeds: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise UserError(f"command line: --seeds {text!r}: {part!r} is not a seed or an "
                            "increasing range. Allowed: non-negative integers and ranges, "
                            "e.g. 0-4 or 0,3,7 or 0-2,9.")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) != len(seeds):
        raise UserError(f"command line: --seeds {text!r} names a seed twice. Allowed: "
                        "each seed once.")
    return tuple(seeds)


@dataclass(frozen=True)
class SetAxis:
    """One ``--set key=v1,v2,...``: a grid axis (several values) or a constant."""

    key: str
    values: tuple[str, ...]


def parse_sets(items: Sequence[str]) -> tuple[SetAxis, ...]:
    axes: list[SetAxis] = []
    for item in items:
        key, eq, raw = item.partition("=")
        key = key.strip()
        values = tuple(split_top(raw, ","))
        if not eq or not key or any(v == "" for v in values):
            raise UserError(f"command line: --set {item!r} is not key.path=v1,v2,... with "
                            "non-empty values. Allowed: e.g. --set training.rounds=50 or "
                            "--set training.clients_per_round=5,10,20.")
        if any(a.key == key for a in axes):
            raise UserError(f"command line: --set {key} is given twice. Allowed: each key "
                            "once, with all its values separated by commas.")
        if len(set(values)) != len(values):
            raise UserError(f"command line: --set {item!r} lists a value twice. Allowed: "
                            "distinct values.")
        axes.append(SetAxis(key, values))
    return tuple(axes)


@dataclass(frozen=True)
class Cell:
    """One run of the grid.

    Attributes
    ----------
    scenario_path : the scenario file
    scenario_label : its folder name (the file's stem)
    policy : the policy and its options
    varying : (key, value) of the ``--set`` axes with several values (they name the folder)
    constant : ``--set`` strings with one value (applied to every cell)
    seed : the run seed
    """

    scenario_path: str
    scenario_label: str
    policy: PolicySpec
    varying: tuple[tuple[str, str], ...]
    constant: tuple[str, ...]
    seed: int

    @property
    def overrides_label(self) -> str:
        if not self.varying:
            return "default"
        return safe_name("+".join(f"{k}={v}" for k, v in self.varying))

    @property
    def rel_dir(self) -> str:
        return "/".join((self.scenario_label, self.policy.label, self.overrides_label,
                         f"seed-{self.seed}"))

    def set_args(self, base_policy: str) -> list[str]:
        """All ``--set`` strings of this cell, in the order they apply."""
        return [*CELL_DEFAULTS, *self.constant, *self.policy.overrides(base_policy),
                *(f"{k}={v}" for k, v in self.varying), f"seed={self.seed}"]


@dataclass(frozen=True)
class Grid:
    """The validated grid: cells in a fixed order (scenario, policy, overrides, seed)."""

    cells: tuple[Cell, ...]
    scenario_text: dict[str, str] = field(hash=False)  # path -> YAML text
    base_policy: dict[str, str] = field(hash=False)  # path -> the scenario's own policy


def expand_grid(scenarios: Sequence[str], policies: str | None, seeds: str,
                sets: Sequence[str]) -> Grid:
    """Parse and validate the command line's grid; nothing runs.

    Every scenario file is loaded with the constant ``--set`` values and with every
    policy, so unknown files, keys, policy names and policy options fail here, before any
    cell runs. Values of ``--set`` axes are checked per cell (see :func:`plan`).
    """
    seed_list = parse_seeds(seeds)
    axes = parse_sets(sets)
    constant = tuple(f"{a.key}={a.values[0]}" for a in axes if len(a.values) == 1)
    varying_axes = [a for a in axes if len(a.values) > 1]
    specs = [PolicySpec.parse(p) for p in split_top(policies, ",")] if policies else None
    if specs is not None:
        labels = [s.label for s in specs]
        if len(set(labels)) != len(labels):
            raise UserError(f"command line: --policies {policies!r} names a policy twice. "
                            "Allowed: each policy (with its options) once.")

    texts: dict[str, str] = {}
    base_policy: dict[str, str] = {}
    labels_seen: dict[str, str] = {}
    for path in scenarios:
        label = safe_name(Path(path).stem)
        if label in labels_seen:
            raise UserError(f"command line: scenario files {labels_seen[label]} and {path} "
                            f"would share the results folder {label!r}. Allowed: scenario "
                            "files with distinct names.")
        labels_seen[label] = path
        base = load_scenario(path, [*CELL_DEFAULTS, *constant])
        texts[path] = Path(path).read_text()
        base_policy[path] = base.policy.name

    cells: list[Cell] = []
    for path in scenarios:
        label = safe_name(Path(path).stem)
        for spec in specs or [PolicySpec(base_policy[path])]:
            try:
                load_scenario(path, [*CELL_DEFAULTS, *constant,
                                     *spec.overrides(base_policy[path])], text=texts[path])
            except UserError as exc:
                raise UserError(f"command line: --policies {spec.text!r}: {exc}") from None
            for values in itertools.product(*(a.values for a in varying_axes)):
                varying = tuple((a.key, v) for a, v in zip(varying_axes, values))
                for seed in seed_list:
                    cells.append(Cell(path, label, spec, varying, constant, seed))
    return Grid(tuple(cells), texts, base_policy)


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class CellTask:
    """What a worker needs to run one cell: the validated scenario, nothing else."""

    rel_dir: str
    scenario_json: str
    source: str  # the scenario file, for messages
    #: what became of the policy's model defaults (``fleetsim.build.method_defaults``):
    #: not part of the scenario's JSON, so it travels beside it into the run's provenance
    method_defaults: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class CellOutcome:
    """What a worker returns: the run's files (name, bytes), or an error."""

    rel_dir: str
    files: tuple[tuple[str, bytes], ...] = ()
    error: str | None = None
    wall_s: float = 0.0
    node: str = ""  # the Ray node that ran it ("" in a local process)


@dataclass(frozen=True)
class Plan:
    """Which cells run, which are complete already, which failed validation."""

    to_run: tuple[tuple[Cell, CellTask], ...]
    complete: tuple[Cell, ...]
    invalid: tuple[tuple[Cell, str], ...]


def _stored_digest(h5: Path) -> str | None:
    import h5py

    try:
        with h5py.File(h5, "r") as f:
            return str(f.attrs.get("scenario_digest", ""))
    except OSError:  # not a readable HDF5 file: treat the cell as not done
        return None


def plan(grid: Grid, out: Path) -> Plan:
    """Validate each cell's scenario and sort the cells into to-run, complete and invalid.

    A cell is complete when its ``run.h5`` exists and was made from the same effective
    scenario (same digest). A ``run.h5`` from a different scenario is an error, not
    silently reused or overwritten: the batch would mix results.
    """
    to_run: list[tuple[Cell, CellTask]] = []
    complete: list[Cell] = []
    invalid: list[tuple[Cell, str]] = []
    mismatched: list[tuple[str, str, str]] = []
    for cell in grid.cells:
        try:
            sc = load_scenario(cell.scenario_path, cell.set_args(grid.base_policy[
                cell.scenario_path]), text=grid.scenario_text[cell.scenario_path])
        except UserError as exc:
            invalid.append((cell, f"UserError: {exc}"))
            continue
        h5 = out / cell.rel_dir / DONE_FILE
        stored = _stored_digest(h5) if h5.is_file() else None
        if stored == sc.digest():
            complete.append(cell)
        elif stored:
            mismatched.append((str(h5), stored, sc.digest()))
        else:
            to_run.append((cell, CellTask(cell.rel_dir, sc.model_dump_json(),
                                          cell.scenario_path,
                                          tuple(method_defaults(sc)))))
    if mismatched:
        path, old, new = mismatched[0]
        raise UserError(f"{out}: {len(mismatched)} result(s) were made from a different "
                        f"scenario than this batch would run, e.g. {path} (scenario digest "
                        f"{old}, now {new}); a changed scenario file or a different "
                        "one-valued --set does that. Allowed: a new --out folder, or delete "
                        "those results to recompute them.")
    return Plan(tuple(to_run), tuple(complete), tuple(invalid))


# ----------------------------------------------------------------------------- one cell


def compute_cell(task: CellTask) -> CellOutcome:
    """Run one cell and return its files; every exception becomes the outcome's error.

    Runs in a worker (a fresh local process or a Ray task). It writes into a private
    temporary folder and returns the bytes, so the driver alone writes ``DIR``.
    """
    from fleetsim.build import run_outcome
    from fleetsim.plugins import load_plugins
    from fleetsim.results import write_run

    t0 = time.perf_counter()
    try:
        sc = Scenario.model_validate_json(task.scenario_json)
        sc._method_defaults = task.method_defaults
        load_plugins(sc.plugins, task.source)
        done = run_outcome(sc, task.source)
        with tempfile.TemporaryDirectory(prefix="fleetsim-cell-") as tmp:
            write_run(tmp, sc, done.log, {"command": "fleetsim compare", "cell": task.rel_dir},
                      done.facts)
            # run.h5 last: the driver writes in this order, and run.h5 marks completion
            names = sorted(p.name for p in Path(tmp).iterdir() if p.name != DONE_FILE)
            files = tuple((n, (Path(tmp) / n).read_bytes()) for n in [*names, DONE_FILE])
        return CellOutcome(task.rel_dir, files, None, time.perf_counter() - t0)
    except Exception as exc:  # recorded in failures.csv; the batch goes on
        return CellOutcome(task.rel_dir, (), describe_error(exc), time.perf_counter() - t0)


def describe_error(exc: BaseException) -> str:
    """One line: a UserError's message, or the exception and where it was raised."""
    if isinstance(exc, UserError):
        return f"UserError: {exc}"
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno} in {tb[-1].name})" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}".replace("\n", " ")


# ----------------------------------------------------------------------------- executors

OnDone = Callable[[CellOutcome], None]


def _worker(conn: Connection) -> None:
    """A worker process: run the cells it is sent until it is sent None."""
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the driver is gone
            return
        if task is None:
            return
        conn.send(compute_cell(task))


@dataclass
class _Worker:
    proc: BaseProcess
    conn: Connection
    task: CellTask | None = None


def run_local(tasks: Sequence[CellTask], jobs: int, on_done: OnDone) -> None:
    """Run the tasks in ``jobs`` worker processes; ``on_done`` gets each outcome.

    Workers are separate processes (forkserver: forked from a clean server that preloads
    fleetsim, never from this process) and are reused across cells, which saves the
    seconds of lazy imports a fresh process pays on its first run; a run does not depend
    on what ran before it in its process (every random stream and the initial model come
    from the scenario and seed). A worker that dies fails only the cell it was running
    and is replaced.
    """
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["fleetsim.batch", "fleetsim.build", "fleetsim.results"])

    def spawn() -> _Worker:
        here, there = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(there,), name="fleetsim-compare-worker")
        proc.start()
        there.close()  # the worker holds the only other end: its death means EOF here
        return _Worker(proc, here)

    pending = deque(tasks)
    workers: list[_Worker] = []
    try:
        while pending or any(w.task is not None for w in workers):
            while pending and len(workers) < min(jobs, len(tasks)):
                workers.append(spawn())
            for w in list(workers):
                if w.task is None and pending:
                    try:
                        w.conn.send(pending[0])
                    except OSError:  # died while idle (killed from outside): replace it
                        w.proc.join()
                        workers.remove(w)
                        continue
                    w.task = pending.popleft()
            busy = {w.conn: w for w in workers if w.task is not None}
            if not busy:
                continue
            for conn in wait(list(busy)):
                w = busy[conn]  # type: ignore[index]
                task, w.task = w.task, None
                assert task is not None
                try:
                    outcome = w.conn.recv()
                except EOFError:
                    w.proc.join()
                    outcome = CellOutcome(task.rel_dir, (), "the worker process died "
                                          f"(exit status {w.proc.exitcode})")
                    w.conn.close()
                    workers.remove(w)
                on_done(outcome)
        for w in workers:
            w.conn.send(None)
        for w in workers:
            w.proc.join()
    finally:
        for w in workers:  # interrupted or failed: stop what is still running
            if w.proc.is_alive():
                w.proc.terminate()
                w.proc.join()


def run_ray(tasks: Sequence[CellTask], jobs: int, address: str | None,
            on_done: OnDone) -> None:
    """Run each task as a Ray task: a local Ray with ``jobs`` CPUs, or a cluster.

    Tasks return the files' bytes (see :func:`compute_cell`), so no filesystem needs to
    be shared for results. Ray reuses its worker processes across tasks, as
    :func:`run_local` does.
    """
    try:
        import ray
    except ImportError:
        raise UserError("command line: --backend ray needs Ray, which is not installed. "
                        "Allowed: install it with `pip install .[ray]`, or use --backend "
                        "local.") from None
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=1, max_retries=0)(_ray_cell)
    refs = {remote.remote(t): t for t in tasks}
    try:
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                task = refs.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # the task or its worker died
                    outcome = CellOutcome(task.rel_dir, (), describe_error(exc))
                on_done(outcome)
    finally:
        for ref in refs:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


def _ray_cell(task: CellTask) -> CellOutcome:
    """:func:`compute_cell` in a Ray task, with the id of the node that ran it."""
    import ray

    out = compute_cell(task)
    return dataclasses.replace(out, node=str(ray.get_runtime_context().get_node_id()))


# ----------------------------------------------------------------------------- recording


class Failures:
    """``DIR/failures.csv``: one row per failed cell, rewritten atomically on change.

    Rows of cells outside this batch's grid are kept; a cell that succeeds is removed;
    the file is deleted when no failure is left.
    """

    def __init__(self, out: Path) -> None:
        self.path = out / FAILURES_FILE
        self.rows: dict[str, dict[str, str]] = {}
        if self.path.is_file():
            with self.path.open(newline="") as f:
                self.rows = {r["dir"]: r for r in csv.DictReader(f)}

    def record(self, cell: Cell, error: str | None) -> None:
        before = dict(self.rows)
        if error is None:
            self.rows.pop(cell.rel_dir, None)
        else:
            self.rows[cell.rel_dir] = {
                "scenario": cell.scenario_label, "policy": cell.policy.label,
                "overrides": cell.overrides_label, "seed": str(cell.seed),
                "dir": cell.rel_dir, "error": error}
        if self.rows != before:
            self._write()

    def _write(self) -> None:
        if not self.rows:
            self.path.unlink(missing_ok=True)
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, FAILURE_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows[k] for k in sorted(self.rows))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, buf.getvalue().encode())


def write_cell(out: Path, outcome: CellOutcome) -> None:
    """Write a cell's files as one unit (see :func:`fleetsim.results.publish`)."""
    write_files(out / outcome.rel_dir, outcome.files)


# ----------------------------------------------------------------------------- batch


@dataclass(frozen=True)
class BatchSummary:
    """What a batch did."""

    cells: int
    ran: int
    skipped: int
    failed: int
    out: Path
    #: (cell folder, Ray node id) of every cell run on Ray, in the order they finished
    ran_on: tuple[tuple[str, str], ...] = ()


def prepare_fronts(tasks: Sequence[CellTask], progress: bool = True) -> None:
    """Compute, once and before any cell runs, every DSE front the cells will need.

    Policies of the DISTREAL family find their front in the DSE cache; computing it here
    (with the DSE's own worker pool) keeps parallel cells from each searching the same
    front at the same time.
    """
    from fleetsim.build import dse_job, front_for
    from fleetsim.dse import settings_digest
    from fleetsim.policies import POLICIES

    seen: set[tuple[str, int, int]] = set()
    for t in tasks:
        sc = Scenario.model_validate_json(t.scenario_json)
        cls = POLICIES.get(sc.policy.name)
        if "front" not in cls.Options.model_fields or sc.policy.options.get("front"):
            continue
        key = (settings_digest(dse_job(sc)), sc.dse.population, sc.dse.generations)
        if key not in seen:
            seen.add(key)
            front_for(sc, progress=progress)


def run_batch(grid: Grid, out: str | os.PathLike[str], jobs: int = 1,
              backend: str = "local", address: str | None = None,
              progress: bool = True) -> BatchSummary:
    """Run every cell of ``grid`` that is not complete in ``out``.

    Parameters
    ----------
    grid : from :func:`expand_grid`
    out : the batch folder
    jobs : cells at once (local processes, or the CPUs of a local Ray)
    backend : ``local`` or ``ray``
    address : Ray cluster address (``ray`` backend; default: start a local Ray)
    progress : show a progress bar over the grid
    """
    from tqdm import tqdm

    if jobs < 1:
        raise UserError(f"command line: --jobs {jobs}: Allowed: an integer >= 1.")
    out_dir = Path(out)
    p = plan(grid, out_dir)
    failures = Failures(out_dir)
    for cell in p.complete:
        failures.record(cell, None)
    for cell, error in p.invalid:
        failures.record(cell, error)
    by_dir = {c.rel_dir: c for c, _ in p.to_run}
    counts = {"ran": 0, "failed": len(p.invalid)}
    ran_on: list[tuple[str, str]] = []
    bar = tqdm(total=len(grid.cells), initial=len(p.complete) + len(p.invalid),
               desc="compare", unit="run", disable=not progress, dynamic_ncols=True)
    bar.set_postfix(failed=counts["failed"])

    def on_done(outcome: CellOutcome) -> None:
        cell = by_dir[outcome.rel_dir]
        if outcome.node:
            ran_on.append((outcome.rel_dir, outcome.node))
        if outcome.error is None:
            write_cell(out_dir, outcome)
            counts["ran"] += 1
        else:
            counts["failed"] += 1
        failures.record(cell, outcome.error)
        bar.set_postfix(failed=counts["failed"])
        bar.update(1)

    tasks = [t for _, t in p.to_run]
    try:
        prepare_fronts(tasks, progress)
        if not tasks:
            pass
        elif backend == "local":
            run_local(tasks, jobs, on_done)
        elif backend == "ray":
            run_ray(tasks, jobs, address, on_done)
        else:
            raise UserError(f"command line: --backend {backend!r}: Allowed: local, ray.")
    finally:
        bar.close()
    return BatchSummary(len(grid.cells), counts["ran"], len(p.complete), counts["failed"],
                        out_dir, tuple(ran_on))
