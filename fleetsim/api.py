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
from fleetsim.build import run_outcome, trackers
from fleetsim.callbacks import Callback
from fleetsim.config import Scenario
from fleetsim.engine import RunLog
from fleetsim.facts import RunFacts
from fleetsim.guardrails import run_warnings
from fleetsim.per_class import PER_CLASS_COLUMNS, per_class_rows
from fleetsim.results import (
    CLASS_COLUMN,
    STATUS,
    TIMELINE_COLUMNS,
    round_columns,
    timeline_arrays,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Comparison", "Result", "compare", "load_scenario", "run", "with_changes"]


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


def _as_override(key: str, value: Any) -> str:
    """``key=value`` as ``--set`` takes it: JSON is YAML, so the value parses back to
    itself (a string stays a string, a list a list)."""
    import json

    if not isinstance(key, str) or not key:
        raise TypeError(f"a change's key must be a dotted key path such as "
                        f"'training.rounds', not {key!r}")
    try:
        text = json.dumps(value)
    except TypeError:
        raise TypeError(f"the value of {key!r} must be plain data (numbers, strings, "
                        f"booleans, None, lists, dicts), not {type(value).__name__}") from None
    return f"{key}={text}"


def with_changes(scenario: Scenario, changes: dict[str, Any]) -> Scenario:
    """A new scenario: ``scenario`` with the values at the dotted key paths changed.

    Validated exactly like ``fleetsim run FILE --set KEY=VALUE``: the change is applied to
    the document the scenario was loaded from (its file and earlier overrides), and the
    result goes through the same loader, so a bad value raises the same
    :class:`~fleetsim.errors.UserError`, and the policy's method defaults are applied
    again for the (possibly new) policy.

    Examples
    --------
    >>> sc = load_scenario("scenarios/tiny.yaml")
    >>> with_changes(sc, {"training.rounds": 2, "policy.name": "fedprox"}).training.rounds
    2
    """
    import yaml

    if not isinstance(changes, dict):
        raise TypeError("changes must be a dict of dotted key paths to values, e.g. "
                        "{'training.rounds': 5}")
    doc = scenario._doc
    if doc is None:  # built in Python: what was set is what the user wrote
        doc = scenario.model_dump(mode="json", exclude_unset=True)
    return _load(None, [_as_override(k, v) for k, v in changes.items()],
                 text=yaml.safe_dump(doc, sort_keys=False),
                 source=scenario._source or "<scenario>")


def _ready(scenario: Scenario) -> Scenario:
    """``scenario`` validated and with its method defaults, however it was built
    (``Scenario(...)``, ``model_copy``): anything :func:`load_scenario` did not return
    as it is -- a copy changed since carries the old digest -- goes through it again."""
    if scenario._loaded is not None and scenario._loaded == scenario.digest():
        return scenario
    if scenario._loaded is not None:
        # a loaded scenario changed by model_copy: validate its values as they are now,
        # not the document it was loaded from (which would undo the change)
        fresh = scenario.model_copy()
        fresh._doc = scenario.model_dump(mode="json", exclude_unset=True)
        return with_changes(fresh, {})
    return with_changes(scenario, {})


@dataclass(frozen=True)
class Result:
    """One run's outcome.

    Attributes
    ----------
    scenario : the scenario that ran
    rounds : one row per round (the columns of ``rounds.csv``)
    timeline : one row per selected device per round, with ``status`` and
        ``device_class`` as names
    log : the engine's raw log (what :meth:`save` writes)
    facts : the fleet's classes and samples per device
    model : the final global model (a ``torch.nn.Module`` holding the last aggregated
        state; None in timing-only mode)
    """

    scenario: Scenario
    rounds: pd.DataFrame
    timeline: pd.DataFrame
    log: RunLog
    facts: RunFacts | None = None
    model: Any = None

    @property
    def warnings(self) -> list[str]:
        """The run's guardrail warnings (no update aggregated, devices with fewer samples
        than one mini-batch); empty on a healthy run."""
        return run_warnings(self.log.rounds, self.facts)

    @property
    def per_class(self) -> pd.DataFrame:
        """One row per device class (:mod:`fleetsim.per_class`): selections, the shares
        completed / late / dropped / too slow, MACs contributed and wasted, bytes, and
        Jain's index of participation."""
        import pandas as pd

        if self.facts is None:
            raise ValueError("this result has no device classes (made without run facts)")
        cols = timeline_arrays(self.log, self.facts)
        rows = per_class_rows(cols, STATUS, self.facts.class_names,
                              self.facts.class_sizes())
        return pd.DataFrame(rows, columns=list(PER_CLASS_COLUMNS))

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
        return write_run(out_dir, self.scenario, self.log, {"command": "fleetsim.run"},
                         self.facts)


def run(scenario: Scenario | str | os.PathLike[str], *, overrides: Sequence[str] = (),
        progress: bool = False, callbacks: Sequence[Callback] = ()) -> Result:
    """Run one scenario (a :class:`Scenario` or a file path) and return its tables.

    A scenario built any other way than :func:`load_scenario` (``Scenario(...)``,
    ``model_copy``) is validated and given its method defaults first, so every route runs
    the same model.

    Parameters
    ----------
    scenario : from :func:`load_scenario` or :func:`with_changes`, or a path to load with
        ``overrides``
    progress : show a progress bar over rounds
    callbacks : :class:`fleetsim.callbacks.Callback` objects told of every round
    """
    import pandas as pd

    source = None
    if not isinstance(scenario, Scenario):
        source = str(scenario)
        scenario = _load(scenario, overrides)
    elif overrides:
        raise TypeError("overrides apply to a scenario path; pass them to load_scenario() "
                        "or use with_changes()")
    else:
        scenario = _ready(scenario)
    default_out = Path("runs") / scenario.name / f"seed-{scenario.seed}"  # as `fleetsim run`
    callbacks = [*callbacks, *trackers(scenario, default_out)]
    done = run_outcome(scenario, source, progress, callbacks, keep_model=True)
    log, facts = done.log, done.facts
    rcols = round_columns(log.rounds)
    rounds = pd.DataFrame([{c: r[c] for c in rcols} for r in log.rounds], columns=list(rcols))
    cols = timeline_arrays(log, facts)
    timeline = pd.DataFrame({c: cols[c] for c in (*TIMELINE_COLUMNS, "attacker")
                             if c in cols})
    timeline["status"] = pd.Categorical.from_codes(timeline["status"].astype(int),
                                                   categories=list(STATUS))
    timeline[CLASS_COLUMN] = pd.Categorical.from_codes(cols[CLASS_COLUMN].astype(int),
                                                       categories=list(facts.class_names))
    return Result(scenario, rounds, timeline, log, facts, done.model)


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` over scenario objects returns.

    Attributes
    ----------
    runs : one row per run: ``scenario, policy, seed, rounds, sim_time_s,
        final_accuracy, best_accuracy`` (and ``time_to_target_s`` with a target)
    rounds : every run's rounds table, stacked, with ``scenario, policy, seed`` first
    per_class : every run's per-class table (:attr:`Result.per_class`), stacked likewise
    results : the :class:`Result` of each run, in the order of ``runs``
    """

    runs: pd.DataFrame
    rounds: pd.DataFrame
    per_class: pd.DataFrame
    results: tuple[Result, ...]


def _compare_objects(scenarios: Sequence[Scenario], out: str | os.PathLike[str] | None,
                     policies: Sequence[str] | None, seeds: Sequence[int],
                     target_accuracy: float | None, progress: bool) -> Comparison:
    import pandas as pd

    from fleetsim.batch import PolicySpec
    from fleetsim.scenario import parse_overrides

    names = [sc.name for sc in scenarios]
    if len(set(names)) != len(names):
        raise ValueError(f"the scenarios' names must differ (they name the runs): {names}")
    if out is not None:
        from fleetsim.paths import check_output_dir

        check_output_dir(out, "out")
    results, keys = [], []
    for sc in scenarios:
        sc = _ready(sc)
        specs = [PolicySpec.parse(p) for p in policies] if policies else \
            [PolicySpec(sc.policy.name)]
        for spec in specs:
            policy_sc = with_changes(sc, parse_overrides(spec.overrides(sc.policy.name)))
            for seed in seeds:
                res = run(with_changes(policy_sc, {"seed": int(seed)}), progress=progress)
                results.append(res)
                keys.append((sc.name, spec.label, int(seed)))
                if out is not None:  # the layout of `fleetsim compare`: report reads it
                    res.save(Path(out) / sc.name / spec.label / "default" / f"seed-{seed}")
    rows, rounds, per_class = [], [], []
    for (name, label, seed), res in zip(keys, results):
        acc = res.rounds["accuracy"]
        row: dict[str, Any] = {
            "scenario": name, "policy": label, "seed": seed, "rounds": len(res.rounds),
            "sim_time_s": float(res.rounds["t_end_s"].iloc[-1]) if len(res.rounds) else
            math.nan, "final_accuracy": res.final_accuracy,
            "best_accuracy": float(acc.max()) if acc.notna().any() else math.nan}
        if target_accuracy is not None:
            hit = res.rounds.loc[acc >= target_accuracy, "t_end_s"]
            row["time_to_target_s"] = float(hit.iloc[0]) if len(hit) else math.nan
        rows.append(row)
        rounds.append(res.rounds.assign(scenario=name, policy=label, seed=seed))
        per_class.append(res.per_class.assign(scenario=name, policy=label, seed=seed))
    first = ["scenario", "policy", "seed"]

    def stack(frames: list[pd.DataFrame]) -> pd.DataFrame:
        df = pd.concat(frames, ignore_index=True)
        return df[first + [c for c in df.columns if c not in first]]

    return Comparison(pd.DataFrame(rows), stack(rounds), stack(per_class), tuple(results))


def compare(scenarios: str | Scenario | Sequence[str | Scenario],
            out: str | os.PathLike[str] | None = None, *,
            policies: Sequence[str] | None = None, seeds: str | Sequence[int] = "0",
            sets: Sequence[str] = (), jobs: int = 1, target_accuracy: float | None = None,
            progress: bool = False) -> pd.DataFrame | Comparison:
    """Run scenarios x policies x seeds and return their results.

    **Scenario objects** (from :func:`load_scenario` / :func:`with_changes`): every run
    happens here, in this process, and a :class:`Comparison` comes back with the per-run
    table, every round of every run and the per-class tables as DataFrames. ``out`` is
    optional: given, each run is also saved as ``fleetsim compare`` lays runs out, so
    ``fleetsim report OUT`` works on it. Vary a setting by passing several objects
    (``with_changes``) with different names. For policy comparisons, give every
    scenario the same ``training.time_budget_s`` so runs end at the same simulated time.

    **Scenario files**: a resumable batch into ``out`` (required), as ``fleetsim
    compare``; cells already complete in ``out`` are not run again. Returns one row per
    complete run: ``scenario, policy, overrides, seed, rounds, sim_time_s,
    final_accuracy, best_accuracy, time_to_target_s`` (NaN where the run never reached
    ``target_accuracy``; the column is absent without a target).

    Parameters
    ----------
    scenarios : scenario objects, or scenario file paths (not mixed)
    policies : policy specs as ``fleetsim compare --policies`` takes them (None: each
        scenario's own)
    seeds : ``"0-4"`` style text, or a list of seeds
    sets : ``key=v1,v2`` axes and constants, as ``--set`` (files only)
    jobs : runs at once (local processes; files only)
    """
    import pandas as pd

    from fleetsim.batch import expand_grid, parse_seeds, run_batch
    from fleetsim.paths import check_output_dir
    from fleetsim.report import best_accuracy, end_time, final_accuracy, load_runs, time_to_target

    items = [scenarios] if isinstance(scenarios, str | os.PathLike | Scenario) \
        else list(scenarios)
    seed_list = parse_seeds(seeds) if isinstance(seeds, str) else tuple(int(s) for s in seeds)
    objects = [x for x in items if isinstance(x, Scenario)]
    if objects:
        if len(objects) != len(items):
            raise TypeError("give scenario objects or scenario file paths, not both")
        if sets or jobs != 1:
            raise TypeError("sets and jobs are for scenario files; for objects, vary a "
                            "setting with with_changes() and pass each scenario")
        return _compare_objects(objects, out, policies, seed_list, target_accuracy, progress)
    if out is None:
        raise TypeError("compare over scenario files needs out (the batch folder)")
    paths = items
    seed_text = ",".join(str(s) for s in seed_list)
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
