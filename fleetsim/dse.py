"""Design-space exploration of per-group dropout vectors (DISTREAL's offline step).

NSGA-II (pymoo) searches dropout vectors on a grid of rates per group for two objectives,
both minimised:

1. **cost** of one training mini-batch: training MACs of the sub-network at the scenario's
   batch size (from :class:`fleetsim.costs.CostModel`; with a calibration file also
   reported in host seconds, which is an affine map of MACs and so gives the same front);
2. **convergence proxy** (:mod:`fleetsim.dse_proxy`): the candidate's *excess validation
   loss* over the full network (d = 0) after ``budget_steps`` mini-batches from a common
   warm start, both on the same mini-batches, averaged over ``repeats`` independent
   data/channel streams -- a new random choice of channels every mini-batch, as devices
   do at run time. The spread over repeats is stored with the mean.

A candidate whose training diverged is infeasible (a pymoo constraint): it is never on
the front, and the plot shows it apart. The ``distreal`` policy by default uses only
*useful* front vectors (option ``useful_only``, :func:`useful`): those no worse than the
full network by more than their spread over repeats.

Why this proxy: compared with the warm start's own loss, a vector's value mixed what it
costs in convergence with the luck of the budget's mini-batches (the full network itself
ended anywhere in a wide band); compared with d = 0 on the same batches, that luck is in
both terms and cancels, and repeats on other streams measure what is left.

Evaluations are independent and run in a pool of worker processes; each is cached by a
hash of model, data, training and search settings, so a repeated or extended search only
evaluates what is new.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm import tqdm

from fleetsim._version import __version__
from fleetsim.config import DseConfig
from fleetsim.costs import CostModel
from fleetsim.dse_proxy import Evaluator, ProxyResult, Reference
from fleetsim.errors import UserError
from fleetsim.nn import DroppableNet
from fleetsim.nn.user import model_source_digest
from fleetsim.training import TrainerSettings

Vector = tuple[float, ...]
#: Version of the front file's proxy: 2 is the excess loss over d = 0 with its spread;
#: files of version 1 (no attribute) held the validation loss itself.
FRONT_VERSION = 2


@dataclass(frozen=True)
class Front:
    """A Pareto front of dropout vectors, best proxy first.

    Attributes
    ----------
    groups : (name, channels) of the model's droppable groups
    vectors : (n, L) dropout rates
    macs : training MACs per mini-batch of each vector
    proxy : convergence proxy (lower is better): mean excess validation loss over the full
        network, whose own proxy is 0
    meta : settings and reference values of the search
    spread : standard deviation of the proxy over repeats (None: not measured, as in a
        hand-made front; taken as zeros)
    """

    groups: tuple[tuple[str, int], ...]
    vectors: np.ndarray
    macs: np.ndarray
    proxy: np.ndarray
    meta: dict[str, Any]
    spread: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        if self.spread is None:
            object.__setattr__(self, "spread", np.zeros_like(np.asarray(self.proxy, float)))

    def points(self) -> list[tuple[Vector, float, float]]:
        return [(tuple(float(x) for x in v), float(c), float(p))
                for v, c, p in zip(self.vectors, self.macs, self.proxy)]


def is_useful(proxy: np.ndarray, spread: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Which vectors are *useful*: no worse than the full network by more than their
    spread over repeats (``proxy <= spread``); the full network itself always is.

    With the old proxy "useful" meant "beat the warm start"; that compared a vector with
    the luck of one budget's mini-batches. Here a vector qualifies when what it costs in
    convergence is within the run-to-run variation of that cost.
    """
    proxy, spread = np.asarray(proxy, float), np.asarray(spread, float)
    full = ~np.asarray(vectors, float).any(axis=1)
    return full | (np.isfinite(proxy) & (proxy <= spread))


def useful(front: Front) -> np.ndarray:
    """:func:`is_useful` of the front's points."""
    assert front.spread is not None
    return is_useful(front.proxy, front.spread, front.vectors)


def non_dominated(cost: np.ndarray, proxy: np.ndarray) -> np.ndarray:
    """Indices of the points no other point dominates (both objectives minimised),
    sorted by cost; of exact duplicates one is kept. Points with a proxy that is not a
    number (diverged candidates) are never kept."""
    order = np.lexsort((proxy, cost))
    keep: list[int] = []
    best = math.inf
    for i in order:
        if proxy[i] < best:  # False for nan
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


#: Bumped whenever the proxy's definition changes, so cached values of an older proxy
#: are never reused (3: excess over d = 0 on common streams, repeats, divergence).
PROXY_VERSION = 3


def settings_digest(job: DSEJob) -> str:
    """Hash of everything that changes an evaluation's result."""
    t = job.trainer
    key = {
        "data": t.data.model_dump(mode="json"), "model": t.model.model_dump(mode="json"),
        "batch": t.batch_size, "eval_batch": t.eval_batch_size,
        "optimizer": t.optimizer.model_dump(),
        "dse": job.dse.model_dump(mode="json", exclude={"workers", "cache_dir", "population",
                                                         "generations"}),
        "backward_factor": job.backward_factor, "version": PROXY_VERSION,
    }
    source = model_source_digest(t.model.arch, t.model.options)
    if source is not None:  # a user network: its file's content changes results too
        key["model_source"] = source
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- evaluation


_EVAL: dict[str, Evaluator] = {}


def _init_worker(job: DSEJob, reference: Reference) -> None:
    torch.set_num_threads(1)
    _EVAL["e"] = Evaluator(job.dse, job.trainer, reference.streams, reference)


def _work(vector: Vector) -> ProxyResult:
    return _EVAL["e"].proxy(vector)


# ----------------------------------------------------------------------------- search


class Cache:
    """Evaluated (vector -> proxy result) pairs of one settings digest, in a JSON file."""

    def __init__(self, directory: str | os.PathLike[str], digest: str) -> None:
        self.path = Path(directory) / f"dse-{digest}.json"
        self.data: dict[str, ProxyResult] = {}
        if self.path.is_file():
            try:
                self.data = {k: ProxyResult.from_json(v)
                             for k, v in json.loads(self.path.read_text()).items()}
            except (OSError, ValueError, KeyError, TypeError, AssertionError):
                self.data = {}  # a damaged cache is only lost time, never wrong results

    @staticmethod
    def key(v: Sequence[float]) -> str:
        return ",".join(f"{x:.6g}" for x in v)

    def get(self, v: Sequence[float]) -> ProxyResult | None:
        return self.data.get(self.key(v))

    def put(self, v: Sequence[float], result: ProxyResult) -> None:
        self.data[self.key(v)] = result

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({k: r.to_json() for k, r in self.data.items()},
                                  sort_keys=True))
        os.replace(tmp, self.path)


class ProxyPool:
    """Evaluates candidates' proxies in ``workers`` processes (or in this one)."""

    def __init__(self, job: DSEJob, base: Evaluator, workers: int) -> None:
        self.base = base
        self.pool = None
        if workers > 1:
            import torch.multiprocessing as mp

            ctx = mp.get_context("forkserver")
            self.pool = ctx.Pool(workers, initializer=_init_worker,
                                 initargs=(job, base.reference))

    def map(self, vectors: list[Vector]) -> list[ProxyResult]:
        if self.pool is None:
            return [self.base.proxy(v) for v in vectors]
        return self.pool.map(_work, vectors, chunksize=1)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


def run_dse(job: DSEJob, make_costs: Callable[[DroppableNet], CostModel],
            progress: bool = True) -> tuple[Front, dict[str, np.ndarray]]:
    """Search the front; returns it and every evaluated point.

    ``make_costs`` builds the cost model of the DSE's network (the scenario's cost
    settings and calibration), which times each candidate. Diverged candidates are
    infeasible: NSGA-II ranks them behind every feasible one, and the front holds none.
    """
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import Problem
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.optimize import minimize

    cfg = job.dse
    t0 = time.perf_counter()
    base = Evaluator(cfg, job.trainer)
    groups = tuple((g.name, g.channels) for g in base.trainer.model.groups)
    if not groups:
        raise UserError("at 'model.options.groups': the DSE searches dropout vectors, and "
                        "the model has no droppable groups (groups: none). Allowed: "
                        "model.options.groups: auto (the default).")
    costs = make_costs(base.trainer.model)
    grid = np.asarray(cfg.grid, dtype=np.float64)
    n_var = len(groups)
    digest = settings_digest(job)
    cache = Cache(str(cache_dir(cfg)), digest)
    batch = min(job.trainer.batch_size, base.n_train)
    evaluated: dict[Vector, tuple[float, ProxyResult]] = {}

    pool = ProxyPool(job, base, cfg.workers)
    bar = tqdm(total=cfg.population * cfg.generations, desc="dse", unit="cand",
               disable=not progress, leave=False)

    def evaluate(vectors: list[Vector]) -> list[tuple[float, ProxyResult]]:
        todo = [v for v in dict.fromkeys(vectors) if v not in evaluated
                and cache.get(v) is None]
        if todo:
            for v, r in zip(todo, pool.map(todo)):
                cache.put(v, r)
            cache.save()
        out = []
        for v in vectors:
            if v not in evaluated:
                r = cache.get(v)
                assert r is not None
                evaluated[v] = (costs.step_macs(v, batch), r)
            out.append(evaluated[v])
        bar.update(len(vectors))
        return out

    class DropoutProblem(Problem):
        def __init__(self) -> None:
            super().__init__(n_var=n_var, n_obj=2, n_ieq_constr=1, xl=0, xu=len(grid) - 1,
                             vtype=int)

        def _evaluate(self, x: np.ndarray, out: dict[str, Any], *args: Any,
                      **kwargs: Any) -> None:
            idx = np.rint(x).astype(int)
            res = evaluate([tuple(float(v) for v in grid[row]) for row in idx])
            # pymoo needs finite objectives also for infeasible points; it ranks those by
            # the constraint alone (G > 0), so the stand-in proxy never competes
            out["F"] = np.array([[c, 0.0 if r.diverged else r.mean] for c, r in res])
            out["G"] = np.array([[1.0 if r.diverged else -1.0] for _, r in res])

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
        pool.close()
    vecs = list(evaluated)
    res = [evaluated[v][1] for v in vecs]
    cost = np.array([evaluated[v][0] for v in vecs])
    proxy = np.array([r.mean for r in res])  # nan where diverged
    spread = np.array([r.spread for r in res])
    feasible = np.array([not r.diverged for r in res])
    idx = non_dominated(cost, proxy)
    idx = idx[np.argsort(proxy[idx], kind="stable")]
    ref = base.reference
    meta = {"arch": job.trainer.model.arch, "digest": digest,
            "settings": cfg.model_dump(mode="json"), "batch_size": batch,
            "dataset": job.trainer.data.dataset, "wall_s": time.perf_counter() - t0,
            "proxy": f"excess validation loss over the full network after "
                     f"{cfg.budget_steps} mini-batches from a {cfg.warmup_steps}-step warm "
                     f"start, same mini-batches, mean of {cfg.repeats} repeats",
            "fleetsim_version": __version__,
            "full_macs": costs.step_macs(None, batch), "warm_loss": ref.warm_loss,
            "initial_loss": ref.initial_loss, "diverged_loss": ref.diverged_loss,
            "reference_losses": list(ref.losses),
            "streams": list(ref.streams), "evaluated": len(vecs),
            "diverged": int((~feasible).sum())}
    front = Front(groups, np.array([vecs[i] for i in idx]), cost[idx], proxy[idx], meta,
                  spread[idx])
    all_points = {"vectors": np.array(vecs), "macs": cost, "proxy": proxy, "spread": spread,
                  "feasible": feasible}
    return front, all_points


# ----------------------------------------------------------------------------- files

#: What ``evaluated`` holds per point, in a front file and from :func:`run_dse`.
EVALUATED_KEYS = ("vectors", "macs", "proxy", "spread", "feasible")


def write_front(path: str | os.PathLike[str], front: Front,
                evaluated: dict[str, np.ndarray]) -> None:
    """Write the front and every evaluated point (HDF5) atomically, plus a PNG beside it.

    ``evaluated`` holds :data:`EVALUATED_KEYS` (proxy and spread nan where infeasible).
    """
    missing = [k for k in EVALUATED_KEYS if k not in evaluated]
    if missing:
        raise ValueError(f"evaluated points lack {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        g = f.create_group("front")
        g.create_dataset("vectors", data=front.vectors)
        g.create_dataset("macs", data=front.macs)
        g.create_dataset("proxy", data=front.proxy)
        g.create_dataset("spread", data=front.spread)
        e = f.create_group("evaluated")
        for k in EVALUATED_KEYS:
            e.create_dataset(k, data=evaluated[k])
        f.attrs["format"] = "fleetsim-front"
        f.attrs["version"] = FRONT_VERSION
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
            version = int(f.attrs.get("version", 1))
            if version != FRONT_VERSION:
                raise UserError(
                    f"{where}front file {path} has proxy version {version}, this fleetsim "
                    f"reads version {FRONT_VERSION} (the excess validation loss over the "
                    "full network with its spread; version 1 held the validation loss "
                    "itself, which ranks differently). Allowed: a front written by this "
                    "fleetsim's `fleetsim dse`; run it again.")
            front = Front(tuple(tuple(g) for g in json.loads(f.attrs["groups"])),
                          f["front/vectors"][:], f["front/macs"][:], f["front/proxy"][:],
                          json.loads(f.attrs["meta"]), f["front/spread"][:])
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{where}{path} cannot be read as a front file ({exc}). Allowed: a "
                        "file written by `fleetsim dse`.") from None
    problem = _front_problem(front)
    if problem:
        raise UserError(f"{where}front file {path}: {problem}. Allowed: a file written by "
                        "`fleetsim dse` (one row of rates in [0, 1) per point, one rate per "
                        "group, a finite MAC count, proxy and spread >= 0 per point).")
    return front


def _front_problem(front: Front) -> str | None:
    """What makes a front unusable by a policy (None: nothing)."""
    v, macs, proxy, spread = front.vectors, front.macs, front.proxy, front.spread
    assert spread is not None
    n_groups = len(front.groups)
    if v.ndim != 2 or v.shape[1] != n_groups:
        return (f"front/vectors has shape {v.shape}, not (points, {n_groups}) for its "
                f"{n_groups} groups")
    if v.shape[0] == 0:
        return "the front has no vectors"
    for name, a in (("macs", macs), ("proxy", proxy), ("spread", spread)):
        if a.shape != (v.shape[0],):
            return f"front/{name} has shape {a.shape}, not ({v.shape[0]},) like the vectors"
    if not np.issubdtype(v.dtype, np.number) or not np.all((v >= 0) & (v < 1)):
        return "front/vectors holds rates outside [0, 1)"
    for name, a in (("macs", macs), ("proxy", proxy), ("spread", spread)):
        # a diverged candidate's proxy is nan: one on the front is a damaged file
        if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
            return f"front/{name} holds a value that is not a finite number"
    if np.any(spread < 0):
        return "front/spread holds a negative value"
    return None


def read_evaluated(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every point the search evaluated (:data:`EVALUATED_KEYS`) from a front file."""
    with h5py.File(path, "r") as f:
        return {k: f[f"evaluated/{k}"][:] for k in EVALUATED_KEYS}


def plot_front(path: Path, front: Front, evaluated: dict[str, np.ndarray]) -> None:
    """The evaluated points and the front, cost against proxy with its spread.

    The proxy axis is symmetric-logarithmic (linear near 0, where the full network and
    vectors within noise of it sit; logarithmic beyond, where costly vectors are orders of
    magnitude worse), so no point needs clipping. Diverged candidates have no proxy:
    they are drawn as ticks on a strip above the plot at their cost, never among the
    points.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.transforms import blended_transform_factory

    full = front.meta.get("full_macs") or float(np.max(evaluated["macs"]))
    ok = np.asarray(evaluated["feasible"], bool)
    x, y, err = evaluated["macs"] / full, evaluated["proxy"], evaluated["spread"]
    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=120)
    ax.errorbar(x[ok], y[ok], yerr=err[ok], fmt="o", ms=3, c="0.65", ecolor="0.8",
                elinewidth=0.8, label=f"evaluated ({int(ok.sum())}), mean +- spread")
    if (~ok).any():
        strip = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(x[~ok], np.full((~ok).sum(), 1.03), transform=strip, marker="|", s=60,
                   c="C0", clip_on=False,
                   label=f"diverged, infeasible ({int((~ok).sum())}; at their cost, above)")
    order = np.argsort(front.macs)
    assert front.spread is not None
    good = useful(front)[order]
    fx, fy, fe = front.macs[order] / full, front.proxy[order], front.spread[order]
    ax.plot(fx, fy, "-", c="C3", lw=1)
    ax.errorbar(fx[good], fy[good], yerr=fe[good], fmt="o", ms=4, c="C3", capsize=2,
                label=f"Pareto front, useful ({int(good.sum())})")
    if (~good).any():
        ax.errorbar(fx[~good], fy[~good], yerr=fe[~good], fmt="o", ms=4, mfc="white",
                    c="C3", capsize=2, label=f"Pareto front, not useful ({int((~good).sum())})")
    ax.axhline(0.0, ls="--", c="0.4", lw=1, label="full network (d = 0)")
    spreads = err[ok][np.isfinite(err[ok]) & (err[ok] > 0)]
    lin = float(np.median(spreads)) if len(spreads) else 1e-2
    ax.set_yscale("symlog", linthresh=lin)
    # down to the lowest error bar only: below 0 sit at most vectors within noise of d = 0
    low = y[ok] - err[ok]
    ax.set_ylim(bottom=min(float(np.nanmin(low)) if ok.any() else 0.0, 0.0) - 0.5 * lin)
    ax.set_xlabel("cost per mini-batch (share of the full network's MACs)")
    ax.set_ylabel("excess validation loss over d = 0 (nats)")
    ax.set_title(f"DSE: {front.meta.get('arch', '')} on {front.meta.get('dataset', '')}",
                 pad=14)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def cache_dir(cfg: DseConfig) -> Path:
    """The DSE's cache folder: ``dse.cache_dir``, else the user's cache folder
    (:func:`fleetsim.paths.user_cache_dir`)."""
    from fleetsim.paths import user_cache_dir

    return Path(cfg.cache_dir) if cfg.cache_dir else user_cache_dir()


def front_path(job: DSEJob) -> Path:
    """Where the front of ``job``'s settings is cached."""
    cfg = job.dse
    return cache_dir(cfg) / f"front-{settings_digest(job)}-p{cfg.population}" \
        f"g{cfg.generations}-c{job.costs_key}.h5"


def front_for(job: DSEJob, make_costs: Callable[[DroppableNet], CostModel],
              progress: bool = True) -> Path:
    """The front file of ``job``'s settings, computed once and cached by digest."""
    path = front_path(job)
    if not path.is_file():
        front, evaluated = run_dse(job, make_costs, progress)
        write_front(path, front, evaluated)
    return path
