"""Does the DSE's convergence proxy rank dropout vectors by signal or by noise?

One fixed set of candidate vectors, drawn from the scenario's DSE grid so that their costs
span the whole range (evenly spaced quantiles of cost), is evaluated twice with the
scenario's DSE settings (warm-up, budget, repeats): once on the repeats' streams the DSE
uses, once on as many other streams (other mini-batches, other channel draws), from the
same warm start. If the proxy measures what a vector costs in convergence, both sets rank
the candidates alike. It prints:

- the Spearman rank correlation of the two sets' proxies over the candidates feasible in
  both (target >= 0.8), and within each third of the cost range (the front is made of
  vectors of similar cost that compete, where the ranking is hardest);
- how often the two sets agree on divergence (infeasible) and on usefulness;
- the wall time of each set and per candidate evaluation, and the DSE's evaluations
  (population x generations, an upper bound: repeated vectors are cached).

The last line is the correlation.

    python benchmarks/dse_stability.py [--scenario scenarios/paper/mnist.yaml]
        [--candidates 36] [--workers N] [--set dse.repeats=4 ...] [--list]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout


def pick_candidates(grid: np.ndarray, n_groups: int, n: int,
                    cost_share: Callable[[tuple[float, ...]], float], seed: int = 7
                    ) -> list[tuple[float, ...]]:
    """``n`` distinct vectors of the grid at evenly spaced quantiles of cost among 4,000
    random draws plus the uniform vectors, cheapest first. Never all zeros: its proxy is
    0 by construction in both sets, a free agreement."""
    rng = np.random.default_rng(seed)
    pool = {tuple(float(x) for x in grid[rng.integers(0, len(grid), n_groups)])
            for _ in range(4000)}
    pool |= {(float(d),) * n_groups for d in grid}
    pool.discard((0.0,) * n_groups)
    vecs = sorted(pool, key=cost_share)
    at = np.unique(np.round(np.linspace(0, len(vecs) - 1, min(n, len(vecs)))).astype(int))
    return [vecs[i] for i in at]


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default=str(ROOT / "scenarios/paper/mnist.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="override a scenario key, e.g. dse.repeats=4")
    ap.add_argument("--policy", default="distreal", help="the front's user, whose model "
                    "defaults (e.g. bn_stats) the DSE's model is built with, as in its runs "
                    "(default distreal; the scenario's own policy may be a baseline)")
    ap.add_argument("--candidates", type=int, default=36)
    ap.add_argument("--workers", type=int, help="processes (default dse.workers)")
    ap.add_argument("--list", action="store_true", help="print every candidate's proxies")
    args = ap.parse_args(argv)

    from scipy.stats import spearmanr

    from fleetsim.build import cost_model, dse_job, load_scenario
    from fleetsim.dse import ProxyPool, is_useful
    from fleetsim.dse_proxy import Evaluator

    sc = load_scenario(args.scenario, [f"policy.name={args.policy}", "policy.options={}",
                                       *args.overrides])
    print(f"model as {args.policy} builds it: {sc.model.arch} {sc.model.options}")
    job = dse_job(sc)
    cfg = job.dse
    workers = args.workers or cfg.workers
    r = cfg.repeats
    t0 = time.perf_counter()
    ev_a = Evaluator(cfg, job.trainer, streams=range(1, r + 1))
    ev_b = Evaluator(cfg, job.trainer, streams=range(r + 1, 2 * r + 1))
    t_ref = time.perf_counter() - t0
    model = ev_a.trainer.model
    costs = cost_model(sc, model)
    batch = min(job.trainer.batch_size, ev_a.n_train)
    full = costs.step_macs(None, batch)

    def share(v: tuple[float, ...]) -> float:
        return costs.step_macs(v, batch) / full

    cands = pick_candidates(np.asarray(cfg.grid), len(model.groups), args.candidates, share)
    print(f"scenario {args.scenario} {' '.join(args.overrides)}")
    print(f"model {sc.model.arch} {dict(sc.model.options)}, lr {sc.training.optimizer.lr}, "
          f"batch {batch}; dse: warmup {cfg.warmup_steps}, budget {cfg.budget_steps}, "
          f"repeats {r}, {len(cands)} candidates, cost share "
          f"{share(cands[0]):.3f}..{share(cands[-1]):.3f}, {workers} workers")
    print(f"warm start: val loss {ev_a.reference.warm_loss:.4f} (untrained "
          f"{ev_a.reference.initial_loss:.4f}); d = 0 after the budget: "
          f"set A {np.round(ev_a.reference.losses, 4).tolist()}, "
          f"set B {np.round(ev_b.reference.losses, 4).tolist()}")

    results = []
    times = []
    for ev in (ev_a, ev_b):
        pool = ProxyPool(job, ev, workers)
        t1 = time.perf_counter()
        try:
            results.append(pool.map(cands))
        finally:
            pool.close()
        times.append(time.perf_counter() - t1)
    ra, rb = results
    pa = np.array([x.mean for x in ra])
    pb = np.array([x.mean for x in rb])
    sa = np.array([x.spread for x in ra])
    sb = np.array([x.spread for x in rb])
    da = np.array([x.diverged for x in ra])
    db = np.array([x.diverged for x in rb])
    cost = np.array([share(v) for v in cands])
    both = ~da & ~db
    if args.list:
        print(f"  {'cost':>6}  {'proxy A':>9} {'spread':>7}  {'proxy B':>9} {'spread':>7}"
              "  vector")
        for v, c, a, s_a, b, s_b in zip(cands, cost, pa, sa, pb, sb):
            print(f"  {c:6.3f}  {a:9.4f} {s_a:7.4f}  {b:9.4f} {s_b:7.4f}  {v}")
    print(f"diverged: set A {int(da.sum())}, set B {int(db.sum())}, verdicts agree on "
          f"{int((da == db).sum())} of {len(cands)}")
    vecs = np.array(cands)
    ua = is_useful(pa, sa, vecs) & ~da
    ub = is_useful(pb, sb, vecs) & ~db
    print(f"useful (proxy <= spread): set A {int(ua.sum())}, set B {int(ub.sum())}, "
          f"verdicts agree on {int((ua == ub).sum())} of {len(cands)}")
    idx = np.flatnonzero(both)
    thirds = np.array_split(idx[np.argsort(cost[idx])], 3)
    parts = []
    for part in thirds:
        if len(part) >= 3:
            rho_p = spearmanr(pa[part], pb[part]).statistic
            parts.append(f"{cost[part].min():.2f}-{cost[part].max():.2f}: {rho_p:.2f}")
    print("Spearman within thirds of the cost range (cost share: rho): " + "; ".join(parts))
    per = sum(times) / (2 * len(cands)) * workers
    print(f"wall: references {t_ref:.1f} s, set A {times[0]:.1f} s, set B {times[1]:.1f} s "
          f"({per:.2f} s per candidate and worker); the DSE evaluates at most "
          f"{cfg.population} x {cfg.generations} = {cfg.population * cfg.generations} "
          f"candidates, about {per * cfg.population * cfg.generations / workers:.0f} s "
          f"with {workers} workers")
    rho = float(spearmanr(pa[both], pb[both]).statistic)
    print(f"Spearman rank correlation of the proxy, set A vs set B ({int(both.sum())} "
          f"candidates feasible in both): {rho:.3f} (target >= 0.8)")
    return rho


if __name__ == "__main__":
    main()
