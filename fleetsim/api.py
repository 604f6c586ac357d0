"""The Python API: what a notebook needs, in three functions.

>>> import fleetsim
>>> sc = fleetsim.load_scenario("scenarios/tiny.yaml", overrides=["training.rounds=2"])
>>> result = fleetsim.run(sc)
>>> result.rounds[["round", "t_end_s", "accuracy"]]      # a pandas DataFrame

``load_scenario`` validates like the CLI (one-paragraph :class:`~fleetsim.errors.UserError`
for a mistake), ``run`` runs one scenario in this process and returns its tables as
DataFrames (columns as in ``docs/results.md``), and ``compare`` runs a resumable batch
and returns one tidy row per run. Everything here calls the same code as the CLI, so a
notebook and ``fleetsim run`` give the same bits.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetsim.build import load_scenario as _load
from fleetsim.build import run_scenario, trackers
from fleetsim.callbacks import Callback
from fleetsim.config import Scenario
from fleetsim.engine import RunLog
from fleetsim.results import STATUS, TIMELINE_COLUMNS, round_columns, timeline_arrays

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Result", "compare", "load_scenario", "run"]


def load_scenario(path: str | os.PathLike[str] | None = None,
                  overrides: Sequence[str] = (), *, text: str | None = None) -> Scenario:
    """Read and validate a scenario file (or YAML ``text``), with ``key=value`` overrides.

    Examples
    --------
    >>> sc = load_scenario("scenarios/tiny.yaml", overrides=["seed=3"])
    >>> sc.seed
    3
    """
    return _load(path, overrides, text=text)


@dataclass(frozen=True)
class Result:
    """One run's outcome.

    Attributes
    ----------
    scenario : the scenario that ran
    rounds : one row per round (the columns of ``rounds.csv``)
    timeline : one row per selected device per round, with ``status`` as its name
    log : the engine's raw log (what :meth:`save` writes)
    """

    scenario: Scenario
    rounds: pd.DataFrame
    timeline: pd.DataFrame
    log: RunLog

    @property
    def final_accuracy(self) -> float:
        """The last evaluated test accuracy (NaN in timing-only mode)."""
        acc = self.rounds["accuracy"].dropna()
        return float(acc.iloc[-1]) if len(acc) else math.nan

    def save(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write ``run.h5``, ``rounds.csv`` and ``accuracy.png`` as ``fleetsim run`` does;
        returns the path of ``run.h5``."""
        from fleetsim.paths import check_output_dir
        from fleetsim.results import write_run

        check_output_dir(out_dir, "out_dir")
        return write_run(out_dir, self.scenario, self.log, {"command": "fleetsim.run"})


def run(scenario: Scenario | str | os.PathLike[str], *, overrides: Sequence[str] = (),
        progress: bool = False, callbacks: Sequence[Callback] = ()) -> Result:
    """Run one scenario (a :class:`Scenario` or a file path) and return its tables.

    Parameters
    ----------
    scenario : from :func:`load_scenario`, or a path to load with ``overrides``
    progress : show a progress bar over rounds
    callbacks : :class:`fleetsim.callbacks.Callback` objects told of every round
    """
    import pandas as pd

    source = None
    if not isinstance(scenario, Scenario):
        source = str(scenario)
        scenario = _load(scenario, overrides)
    elif overrides:
        raise TypeError("overrides apply to a scenario path; pass them to load_scenario()")
    default_out = Path("runs") / scenario.name / f"seed-{scenario.seed}"  # as `fleetsim run`
    callbacks = [*callbacks, *trackers(scenario, default_out)]
    log = run_scenario(scenario, source, progress, callbacks)
    rcols = round_columns(log.rounds)
    rounds = pd.DataFrame([{c: r[c] for c in rcols} for r in log.rounds], columns=list(rcols))
    cols = timeline_arrays(log)
    timeline = pd.DataFrame({c: cols[c] for c in (*TIMELINE_COLUMNS, "attacker")
                             if c in cols})
    timeline["status"] = pd.Categorical.from_codes(timeline["status"].astype(int),
                                                   categories=list(STATUS))
    return Result(scenario, rounds, timeline, log)


def compare(scenarios: str | Sequence[str], out: str | os.PathLike[str], *,
            policies: Sequence[str] | None = None, seeds: str | Sequence[int] = "0",
            sets: Sequence[str] = (), jobs: int = 1, target_accuracy: float | None = None,
            progress: bool = False) -> pd.DataFrame:
    """Run a batch (scenarios x policies x ``--set`` axes x seeds) into ``out``; resumable.

    Cells already complete in ``out`` are not run again. Returns one row per complete run:
    ``scenario, policy, overrides, seed, rounds, sim_time_s, final_accuracy,
    best_accuracy, time_to_target_s`` (NaN where the run never reached
    ``target_accuracy``; the column is absent without a target).

    Parameters
    ----------
    scenarios : scenario file paths
    policies : policy specs as ``fleetsim compare --policies`` takes them (None: each
        scenario's own)
    seeds : ``"0-4"`` style text, or a list of seeds
    sets : ``key=v1,v2`` axes and constants, as ``--set``
    jobs : runs at once (local processes)
    """
    import pandas as pd

    from fleetsim.batch import expand_grid, run_batch
    from fleetsim.paths import check_output_dir
    from fleetsim.report import best_accuracy, end_time, final_accuracy, load_runs, time_to_target

    paths = [scenarios] if isinstance(scenarios, str | os.PathLike) else list(scenarios)
    seed_text = seeds if isinstance(seeds, str) else ",".join(str(s) for s in seeds)
    check_output_dir(out, "out")
    grid = expand_grid([str(p) for p in paths], ",".join(policies) if policies else None,
                       seed_text, list(sets))
    run_batch(grid, out, jobs, progress=progress)
    rows: list[dict[str, Any]] = []
    for r in load_runs(Path(out)):
        row = {"scenario": r.scenario, "policy": r.policy, "overrides": r.overrides,
               "seed": r.seed, "rounds": len(r.rounds["round"]), "sim_time_s": end_time(r),
               "final_accuracy": final_accuracy(r), "best_accuracy": best_accuracy(r)}
        if target_accuracy is not None:
            row["time_to_target_s"] = time_to_target(r, target_accuracy)
        rows.append(row)
    return pd.DataFrame(rows)
