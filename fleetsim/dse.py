"""Design-space exploration of per-group dropout vectors (DISTREAL's offline step).

NSGA-II (pymoo) searches dropout vectors on a grid of rates per group for two objectives,
both minimised:

1. **cost** of one training mini-batch: training MACs of the sub-network at the scenario's
   batch size (from :class:`fleetsim.costs.CostModel`; with a calibration file also
   reported in host seconds, which is an affine map of MACs and so gives the same front);
2. **convergence proxy**: the validation loss after ``budget_steps`` mini-batches of
   training with that vector -- a new random choice of channels every mini-batch, as
   devices do at run time -- starting from a common *warm-started* model
   (``warmup_steps`` full-network mini-batches from the initial weights). Every candidate
   sees the same batches and the same channel streams.

The front file also records the warm start's own validation loss (``baseline_proxy``): a
vector whose proxy is above it made the model *worse* within the budget (very high dropout
with few channels left can make training diverge). The ``distreal`` policy by default only
uses front vectors below that line (option ``useful_only``).

Why this proxy: from random initial weights the first few mini-batches reduce the loss of
almost any sub-network by about as much, so differences between vectors drown in noise;
from a warm start, the loss reached after a fixed budget measures how much a vector slows
learning in the regime federated rounds are in. The validation samples are held out from
the *training* split; the test set is never used for design decisions.

Evaluations are independent and run in a pool of worker processes; each is cached by a
hash of model, data, training and search settings, so a repeated or extended search only
evaluates what is new.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fleetsim._version import __version__
from fleetsim.config import DseConfig
from fleetsim.costs import CostModel
from fleetsim.data import Dataset, Partition
from fleetsim.errors import UserError
from fleetsim.nn import DroppableNet
from fleetsim.nn.user import model_source_digest
from fleetsim.training import Trainer, TrainerSettings, UpdateJob

Vector = tuple[float, ...]
PROXY_CAP = 1e3


@dataclass(frozen=True)
class Front:
    """A Pareto front of dropout vectors, best proxy first.

    Attributes
    ----------
    groups : (name, channels) of the model's droppable groups
    vectors : (n, L) dropout rates
    macs : training MACs per mini-batch of each vector
    proxy : convergence proxy (lower is better)
    """

    groups: tuple[tuple[str, int], ...]
    vectors: np.ndarray
    macs: np.ndarray
    proxy: np.ndarray
    meta: dict[str, Any]

    def points(self) -> list[tuple[Vector, float, float]]:
        return [(tuple(float(x) for x in v), float(c), float(p))
                for v, c, p in zip(self.vectors, self.macs, self.proxy)]


def non_dominated(cost: np.ndarray, proxy: np.ndarray) -> np.ndarray:
    """Indices of the points no other point dominates (both objectives minimised),
    sorted by cost; of exact duplicates one is kept."""
    order = np.lexsort((proxy, cost))
    keep: list[int] = []
    best = math.inf
    for i in order:
        if proxy[i] < best:
            keep.append(int(i))
            best = proxy[i]
    return np.asarray(keep, dtype=np.int64)


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class DSEJob:
    """What a design-space exploration needs: its own settings, how to train candidates,
    and the backward factor of the cost model (part of what a cached result depends on)."""

    dse: DseConfig
    trainer: TrainerSettings
    backward_factor: float = 2.0
    #: digest of the cost settings that time candidates (costs section, calibration
    #: file's content): part of the cached front's name, so a front timed with other
    #: costs is never reused
    costs_key: str = ""


def settings_digest(job: DSEJob) -> str:
    """Hash of everything that changes an evaluation's result."""
    t = job.trainer
    key = {
        "data": t.data.model_dump(mode="json"), "model": t.model.model_dump(mode="json"),
        "batch": t.batch_size, "optimizer": t.optimizer.model_dump(),
        "dse": job.dse.model_dump(mode="json", exclude={"workers", "cache_dir", "population",
                                                         "generations"}),
        "backward_factor": job.backward_factor, "version": 2,
    }
    source = model_source_digest(t.model.arch, t.model.options)
    if source is not None:  # a user network: its file's content changes results too
        key["model_source"] = source
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- evaluation


class Evaluator:
    """Trains candidates from the warm start and measures their validation loss."""

    def __init__(self, job: DSEJob, warm: dict[str, torch.Tensor] | None = None) -> None:
        # One "device" holding the DSE's training split: the trainer's machinery (sliced
        # sub-networks, per-step channel streams, masked SGD) is reused unchanged.
        self.cfg = cfg = job.dse
        # Candidates train from the DSE's own seed, not the run's: the front is cached by
        # the DSE's settings alone, so a front that depended on the run seed would depend
        # on which seed happened to search first.
        t = Trainer(dataclasses.replace(job.trainer, seed=cfg.seed))
        ds = t.data
        n = len(ds.y_train)
        rng = np.random.default_rng(cfg.seed)
        perm = rng.permutation(n)
        n_val = max(1, round(n * cfg.val_fraction))
        val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        t.partition = Partition(train.astype(np.int64), np.array([0, len(train)]))
        t.data = Dataset(ds.name, ds.x_train, ds.y_train, ds.x_train[val], ds.y_train[val],
                         ds.input_shape, ds.num_classes)
        self.trainer = t
        self.n_train = len(train)
        self.warm = warm if warm is not None else self._warm_start()
        self.baseline = self.val_loss(self.warm)

    def _warm_start(self) -> dict[str, torch.Tensor]:
        state = self.trainer.initial_state()
        steps = self.cfg.warmup_steps
        if steps == 0:
            return state
        zero = (0.0,) * len(self.trainer.model.groups)
        job = UpdateJob(0, 10_000, 1.0, (zero,), (0,) * steps)
        return dict(self.trainer.train(state, job).update.state)

    def val_loss(self, state: dict[str, torch.Tensor]) -> float:
        self.trainer.load(state)
        self.trainer.model.eval()
        with torch.no_grad():
            _, _, x, y = self.trainer.device_data()  # on the training device
            out = self.trainer.model(x)
            loss = float(F.cross_entropy(out, y))
        # a diverged run is simply very bad; capping keeps NSGA-II's crowding distances finite
        return loss if math.isfinite(loss) and loss < PROXY_CAP else PROXY_CAP

    def proxy(self, vector: Vector) -> float:
        """Validation loss after the budget, averaged over ``repeats`` streams."""
        losses = []
        for rep in range(self.cfg.repeats):
            job = UpdateJob(0, rep, 1.0, (tuple(vector),), (0,) * self.cfg.budget_steps)
            losses.append(self.val_loss(dict(self.trainer.train(self.warm, job).update.state)))
        return float(np.mean(losses))


_EVAL: dict[str, Evaluator] = {}


def _init_worker(job: DSEJob, warm: dict[str, torch.Tensor]) -> None:
    torch.set_num_threads(1)
    _EVAL["e"] = Evaluator(job, warm)


def _work(vector: Vector) -> float:
    return _EVAL["e"].proxy(vector)


# ----------------------------------------------------------------------------- search


class Cache:
    """Evaluated (vector -> proxy) pairs of one settings digest, in a JSON file."""

    def __init__(self, directory: str | os.PathLike[str], digest: str) -> None:
        self.path = Path(directory) / f"dse-{digest}.json"
        self.data: dict[str, float] = {}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.data = {}  # a damaged cache is only lost time, never wrong results

    @staticmethod
    def key(v: Sequence[float]) -> str:
        return ",".join(f"{x:.6g}" for x in v)

    def get(self, v: Sequence[float]) -> float | None:
        return self.data.get(self.key(v))

    def put(self, v: Sequence[float], proxy: float) -> None:
        self.data[self.key(v)] = proxy

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, sort_keys=True))
        os.replace(tmp, self.path)


def run_dse(job: DSEJob, make_costs: Callable[[DroppableNet], CostModel],
            progress: bool = True) -> tuple[Front, dict[str, np.ndarray]]:
    """Search the front; returns it and every evaluated point.

    ``make_costs`` builds the cost model of the DSE's network (the scenario's cost
    settings and calibration), which times each candidate.
    """
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import Problem
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.optimize import minimize

    cfg = job.dse
    t0 = time.perf_counter()
    base = Evaluator(job)
    groups = tuple((g.name, g.channels) for g in base.trainer.model.groups)
    if not groups:
        raise UserError("at 'model.options.groups': the DSE searches dropout vectors, and "
                        "the model has no droppable groups (groups: none). Allowed: "
                        "model.options.groups: auto (the default).")
    costs = make_costs(base.trainer.model)
    grid = np.asarray(cfg.grid, dtype=np.float64)
    n_var = len(groups)
    digest = settings_digest(job)
    cache = Cache(cfg.cache_dir, digest)
    batch = min(job.trainer.batch_size, base.n_train)
    evaluated: dict[Vector, tuple[float, float]] = {}

    pool = None
    if cfg.workers > 1:
        import torch.multiprocessing as mp

        ctx = mp.get_context("forkserver")
        pool = ctx.Pool(cfg.workers, initializer=_init_worker,
                        initargs=(job, base.warm))
    bar = tqdm(total=cfg.population * cfg.generations, desc="dse", unit="cand",
               disable=not progress, leave=False)

    def evaluate(vectors: list[Vector]) -> list[tuple[float, float]]:
        todo = [v for v in dict.fromkeys(vectors) if v not in evaluated
                and cache.get(v) is None]
        if todo:
            proxies = pool.map(_work, todo, chunksize=1) if pool else [base.proxy(v)
                                                                       for v in todo]
            for v, p in zip(todo, proxies):
                cache.put(v, p)
            cache.save()
        out = []
        for v in vectors:
            if v not in evaluated:
                evaluated[v] = (costs.step_macs(v, batch), float(cache.get(v)))  # type: ignore[arg-type]
            out.append(evaluated[v])
        bar.update(len(vectors))
        return out

    class DropoutProblem(Problem):
        def __init__(self) -> None:
            super().__init__(n_var=n_var, n_obj=2, xl=0, xu=len(grid) - 1, vtype=int)

        def _evaluate(self, x: np.ndarray, out: dict[str, Any], *args: Any,
                      **kwargs: Any) -> None:
            idx = np.rint(x).astype(int)
            vecs = [tuple(float(v) for v in grid[row]) for row in idx]
            out["F"] = np.asarray(evaluate(vecs))

    # Seed the search with the uniform vectors (one rate everywhere): they anchor both ends
    # of the front, and random picks fill the rest.
    rng = np.random.default_rng(cfg.seed)
    uniform = np.repeat(np.arange(len(grid))[:, None], n_var, axis=1)
    rand = rng.integers(0, len(grid), size=(max(cfg.population - len(uniform), 0), n_var))
    init = np.concatenate([uniform, rand])[:cfg.population]
    algo = NSGA2(pop_size=cfg.population, sampling=init,
                 crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
                 mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
                 eliminate_duplicates=True)
    try:
        minimize(DropoutProblem(), algo, ("n_gen", cfg.generations), seed=cfg.seed,
                 verbose=False)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    vecs = list(evaluated)
    cost = np.array([evaluated[v][0] for v in vecs])
    proxy = np.array([evaluated[v][1] for v in vecs])
    idx = non_dominated(cost, proxy)
    idx = idx[np.argsort(proxy[idx], kind="stable")]
    meta = {"arch": job.trainer.model.arch, "digest": digest,
            "settings": cfg.model_dump(mode="json"), "batch_size": batch,
            "dataset": job.trainer.data.dataset, "wall_s": time.perf_counter() - t0,
            "proxy": f"validation loss after {cfg.budget_steps} mini-batches from a "
                     f"{cfg.warmup_steps}-step warm start", "fleetsim_version": __version__,
            "full_macs": costs.step_macs(None, batch), "baseline_proxy": base.baseline,
            "evaluated": len(vecs)}
    front = Front(groups, np.array([vecs[i] for i in idx]), cost[idx], proxy[idx], meta)
    all_points = {"vectors": np.array(vecs), "macs": cost, "proxy": proxy}
    return front, all_points


# ----------------------------------------------------------------------------- files


def write_front(path: str | os.PathLike[str], front: Front,
                evaluated: dict[str, np.ndarray]) -> None:
    """Write the front and every evaluated point (HDF5) atomically, plus a PNG beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        g = f.create_group("front")
        g.create_dataset("vectors", data=front.vectors)
        g.create_dataset("macs", data=front.macs)
        g.create_dataset("proxy", data=front.proxy)
        e = f.create_group("evaluated")
        for k, v in evaluated.items():
            e.create_dataset(k, data=v)
        f.attrs["format"] = "fleetsim-front"
        f.attrs["groups"] = json.dumps(front.groups)
        f.attrs["meta"] = json.dumps(front.meta, default=str)
    os.replace(tmp, path)
    plot_front(path.with_suffix(".png"), front, evaluated)


def read_front(path: str | os.PathLike[str], source: str | None = None,
               key_path: str = "policy.options.front") -> Front:
    path = Path(path)
    where = f"{source}: at '{key_path}': " if source else ""
    if not path.is_file():
        raise UserError(f"{where}front file {path} does not exist. Allowed: a file written "
                        "by `fleetsim dse SCENARIO --out FILE`, or leave the option out to "
                        "compute (and cache) the front from the scenario's dse settings.")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != "fleetsim-front":
                raise OSError("not a fleetsim front file")
            front = Front(tuple(tuple(g) for g in json.loads(f.attrs["groups"])),
                          f["front/vectors"][:], f["front/macs"][:], f["front/proxy"][:],
                          json.loads(f.attrs["meta"]))
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{where}{path} cannot be read as a front file ({exc}). Allowed: a "
                        "file written by `fleetsim dse`.") from None
    problem = _front_problem(front)
    if problem:
        raise UserError(f"{where}front file {path}: {problem}. Allowed: a file written by "
                        "`fleetsim dse` (one row of rates in [0, 1) per point, one rate per "
                        "group, a finite MAC count and proxy per point).")
    return front


def _front_problem(front: Front) -> str | None:
    """What makes a front unusable by a policy (None: nothing)."""
    v, macs, proxy = front.vectors, front.macs, front.proxy
    n_groups = len(front.groups)
    if v.ndim != 2 or v.shape[1] != n_groups:
        return (f"front/vectors has shape {v.shape}, not (points, {n_groups}) for its "
                f"{n_groups} groups")
    if v.shape[0] == 0:
        return "the front has no vectors"
    for name, a in (("macs", macs), ("proxy", proxy)):
        if a.shape != (v.shape[0],):
            return f"front/{name} has shape {a.shape}, not ({v.shape[0]},) like the vectors"
    if not np.issubdtype(v.dtype, np.number) or not np.all((v >= 0) & (v < 1)):
        return "front/vectors holds rates outside [0, 1)"
    for name, a in (("macs", macs), ("proxy", proxy)):
        if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
            return f"front/{name} holds a value that is not a finite number"
    return None


def read_evaluated(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every point the search evaluated (vectors, macs, proxy) from a front file."""
    with h5py.File(path, "r") as f:
        return {k: f[f"evaluated/{k}"][:] for k in ("vectors", "macs", "proxy")}


def plot_front(path: Path, front: Front, evaluated: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = front.meta.get("full_macs") or float(np.max(evaluated["macs"]))
    base = float(front.meta.get("baseline_proxy", np.max(evaluated["proxy"])))
    top = base * 1.25
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    x, y = evaluated["macs"] / full, evaluated["proxy"]
    inside = y <= top
    ax.scatter(x[inside], y[inside], s=10, c="0.7", label="evaluated")
    if (~inside).any():
        ax.scatter(x[~inside], np.full((~inside).sum(), top), s=14, c="0.7", marker="^",
                   label="evaluated, diverged (clipped)")
    ax.axhline(base, ls="--", c="0.4", lw=1, label="warm start (no training)")
    order = np.argsort(front.macs)
    ax.plot(front.macs[order] / full, front.proxy[order], "o-", c="C3", ms=4,
            label=f"Pareto front ({len(front.macs)})")
    ax.set_xlabel("cost per mini-batch (share of the full network's MACs)")
    ax.set_ylabel("convergence proxy (validation loss)")
    ax.set_title(f"DSE: {front.meta.get('arch', '')} on {front.meta.get('dataset', '')}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def front_path(job: DSEJob) -> Path:
    """Where the front of ``job``'s settings is cached."""
    cfg = job.dse
    return Path(cfg.cache_dir) / f"front-{settings_digest(job)}-p{cfg.population}" \
        f"g{cfg.generations}-c{job.costs_key}.h5"


def front_for(job: DSEJob, make_costs: Callable[[DroppableNet], CostModel],
              progress: bool = True) -> Path:
    """The front file of ``job``'s settings, computed once and cached by digest."""
    path = front_path(job)
    if not path.is_file():
        front, evaluated = run_dse(job, make_costs, progress)
        write_front(path, front, evaluated)
    return path
