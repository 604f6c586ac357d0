"""Warnings about a study's design that a run's numbers alone would hide.

A run in which no update was ever aggregated ends at the initial model's accuracy and
still exits 0; devices holding fewer samples than one mini-batch train on repeated
samples; intervals over fewer than three seeds are not confidence intervals. Each check
returns plain sentences: ``fleetsim run`` prints them, ``run.h5`` keeps them (attribute
``warnings``) and ``fleetsim report`` lists them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fleetsim.facts import RunFacts

#: below this many seeds an interval is the min-max range, not a 95% CI
MIN_SEEDS_FOR_CI = 3
#: compared runs whose simulated end times differ by more than this share are flagged
END_TIME_TOLERANCE = 0.10


def no_aggregation(rounds: Iterable[Mapping[str, Any]]) -> str | None:
    """A warning when no round aggregated any update; None otherwise."""
    rows = list(rounds)
    selected = sum(int(r["selected"]) for r in rows)
    completed = sum(int(r["completed"]) for r in rows)
    if rows and completed == 0:
        return (f"no update was aggregated: 0 of {selected} selected devices' updates "
                f"arrived in time (and finite) over {len(rows)} rounds, so the global model "
                "never changed and its accuracy is the initial model's")
    return None


def small_devices(facts: RunFacts) -> str | None:
    """A warning when devices hold fewer training samples than one mini-batch."""
    k = facts.below_one_batch()
    if k == 0 or not facts.trains:
        return None
    lo, med, hi = facts.samples_stats()
    n = len(facts.samples)
    return (f"{k} of {n} devices hold fewer training samples than one mini-batch "
            f"(batch_size {facts.batch_size}; samples per device min {lo}, median "
            f"{med:g}, max {hi}): their mini-batches repeat samples")


def run_warnings(rounds: Iterable[Mapping[str, Any]], facts: RunFacts | None) -> list[str]:
    """Every warning about one run, in a fixed order."""
    out = [no_aggregation(rounds)]
    if facts is not None:
        out.append(small_devices(facts))
    return [w for w in out if w]


def few_seeds(n_seeds: int, what: str) -> str | None:
    """A warning when ``what`` has intervals over fewer than :data:`MIN_SEEDS_FOR_CI`
    seeds (they are then min-max ranges)."""
    if 1 < n_seeds < MIN_SEEDS_FOR_CI:
        return (f"{what}: {n_seeds} seeds, so its intervals are the min-max range over "
                f"seeds, not 95% confidence intervals (those need >= {MIN_SEEDS_FOR_CI} "
                "seeds; run more seeds)")
    if n_seeds == 1:
        return f"{what}: 1 seed, so it has no interval at all (run >= {MIN_SEEDS_FOR_CI} seeds)"
    return None


def end_times_apart(end_s: Mapping[str, float], what: str) -> str | None:
    """A warning when the compared runs' simulated end times differ by more than
    :data:`END_TIME_TOLERANCE` (their final accuracies then compare different times)."""
    vals = {k: v for k, v in end_s.items() if v == v and v > 0}
    if len(vals) < 2:
        return None
    lo_k = min(vals, key=lambda k: vals[k])
    hi_k = max(vals, key=lambda k: vals[k])
    if vals[hi_k] > (1 + END_TIME_TOLERANCE) * vals[lo_k]:
        return (f"{what}: the compared runs end at simulated times more than "
                f"{END_TIME_TOLERANCE:.0%} apart ({lo_k} at {vals[lo_k]:.4g} s, {hi_k} at "
                f"{vals[hi_k]:.4g} s): their final accuracies are at different times. "
                "Compare at the common time (the report's 'accuracy at T') or give every "
                "run the same training.time_budget_s")
    return None
