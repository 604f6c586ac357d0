"""Tables and figures of a ``fleetsim compare`` folder.

Reads every complete run (``DIR/<scenario>/<policy>/<overrides>/seed-<k>/run.h5``) and
writes, per scenario, overrides and policy: simulated time to a target accuracy (mean and
95% bootstrap confidence interval over seeds), speedup over a baseline policy, final and
best accuracy, rounds run and the share of selected devices whose work arrived in time --
as ``summary.csv``, ``report.md`` and ``table.tex`` (booktabs) -- and three figures.

A *setting* is a (scenario, overrides) pair: policies are compared within a setting, and
the default target accuracy is chosen per setting.

Runs of a setting are also compared at one simulated time T: the runs' common
``training.time_budget_s`` when they share one, else the earliest end among them (the
report says which). Policies whose rounds differ in length end at different times after a
fixed number of rounds; their final accuracies then compare different amounts of
simulated time, and the report warns when the ends are more than 10% apart.
"""

from __future__ import annotations

import csv
import io
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fleetsim.batch import DONE_FILE, FAILURES_FILE, PolicySpec, policy_of_label
from fleetsim.errors import UserError
from fleetsim.guardrails import MIN_SEEDS_FOR_CI, end_times_apart, few_seeds
from fleetsim.per_class import PER_CLASS_COLUMNS, SHARES, per_class_rows
from fleetsim.report_figures import (
    FIGURE_FORMATS,
    STYLES,
    figure_accuracy_vs_rounds,
    figure_accuracy_vs_time,
    figure_distributions,
    figure_per_class,
    figure_speedup,
    figure_style,
    mean_band,  # noqa: F401  (re-exported: it lived here before the figures moved out)
    save_all,
)
from fleetsim.results import (
    STATUS,
    atomic_write_bytes,
    read_attr_json,
    read_eval_split,
    read_rounds,
    read_timeline,
)
from fleetsim.timeunits import pick_time_unit

CONFIDENCE = 0.95
N_RESAMPLES = 9999
BOOTSTRAP_SEED = 0  # fixed, so a report is reproducible to the last digit
#: default target: this share of the best policy's mean final accuracy (per setting)
DEFAULT_TARGET_SHARE = 0.9
DEFAULT_BASELINE = "fedavg"

SUMMARY_COLUMNS = (
    "scenario", "overrides", "policy", "seeds", "target_accuracy", "reached",
    "never_reached_seeds", "time_to_target_s", "time_to_target_s_lo", "time_to_target_s_hi",
    "speedup", "speedup_bound", "final_accuracy", "final_accuracy_lo", "final_accuracy_hi",
    "best_accuracy", "best_accuracy_lo", "best_accuracy_hi", "rounds", "in_time_share",
    "final_accuracy_min", "final_accuracy_max", "eval_split",
    # equal-time comparison, normalisation and costs (fleetsim >= 0.x; appended so that
    # readers of the earlier columns keep working)
    "end_time_s", "common_time_s", "common_time_rule", "accuracy_at_common_time",
    "accuracy_at_common_time_lo", "accuracy_at_common_time_hi", "interval",
    "bn_stats", "bn_stats_source", "bytes_per_run", "macs_per_run",
    "macs_wasted_per_run", "wasted_share", "warnings")


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class RunData:
    """One complete run of the batch: where it sits in the grid, and its rounds table."""

    scenario: str
    policy: str
    overrides: str
    seed: int
    rounds: dict[str, np.ndarray]
    #: what ``accuracy`` measured: "test" or "validation" (``eval.split``)
    eval_split: str = "test"
    #: the scenario's ``training.time_budget_s`` (None: none)
    time_budget_s: float | None = None
    #: batch-norm statistics the model ran with ("running", "batch", "static"; "" when
    #: the model has no batch norm or the run does not say)
    bn_stats: str = ""
    #: where ``bn_stats`` came from: "method default", "method default: X" (the run
    #: departed from the method's X), "model default", "scenario"
    bn_source: str = ""
    #: the run's guardrail warnings (run.h5 attribute ``warnings``)
    warnings: tuple[str, ...] = ()
    #: the ``run.h5`` it was read from (None: built in memory)
    path: Path | None = None

    @property
    def setting(self) -> tuple[str, str]:
        return (self.scenario, self.overrides)

    def column(self, name: str) -> np.ndarray:
        """A rounds column; zeros where the run's table lacks it (older runs)."""
        v = self.rounds.get(name)
        return np.zeros(len(self.rounds["t_end_s"])) if v is None else np.asarray(v, float)

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(round end times in s, accuracy) of the evaluated rounds."""
        t, acc = self.rounds["t_end_s"], self.rounds["accuracy"]
        ok = ~np.isnan(acc)
        return t[ok].astype(float), acc[ok].astype(float)


def load_runs(out: Path) -> list[RunData]:
    """Every complete run under a compare folder (those with a ``run.h5``), sorted."""
    runs = []
    for h5 in sorted(out.glob(f"*/*/*/seed-*/{DONE_FILE}")):
        m = re.fullmatch(r"seed-(\d+)", h5.parent.name)
        if m is None:
            continue
        overrides, policy, scenario = h5.parent.parent, h5.parent.parent.parent, \
            h5.parent.parent.parent.parent
        budget, bn, bn_source = _scenario_facts(h5)
        runs.append(RunData(scenario.name, policy.name, overrides.name, int(m.group(1)),
                            read_rounds(h5), read_eval_split(h5), budget, bn, bn_source,
                            tuple(read_attr_json(h5, "warnings", [])), h5))
    if not runs:
        raise UserError(f"{out}: no complete runs found. Allowed: the --out folder of "
                        "`fleetsim compare`, holding <scenario>/<policy>/<overrides>/"
                        "seed-<k>/run.h5.")
    return runs


def _scenario_facts(h5: Path) -> tuple[float | None, str, str]:
    """(time budget, batch-norm mode, its source) of a run, from its provenance."""
    import yaml

    try:
        import h5py

        with h5py.File(h5, "r") as f:
            text = f.attrs.get("scenario_text", "")
        doc = yaml.safe_load(text.decode() if isinstance(text, bytes) else str(text)) or {}
    except Exception:  # a run without readable provenance: nothing to say
        return None, "", ""
    budget = (doc.get("training") or {}).get("time_budget_s")
    model = doc.get("model") or {}
    opts = model.get("options") or {}
    records = {r.get("option"): r for r in read_attr_json(h5, "method_defaults", [])}
    bn = opts.get("bn_stats")
    rec = records.get("bn_stats")
    if rec is not None and rec.get("outcome") in ("applied", "set by scenario"):
        source = "method default"
    elif rec is not None and rec.get("outcome") == "departure":
        source = f"method default: {rec.get('method_value')}"
    elif bn is not None:
        source = "scenario"
    else:
        bn, source = _model_bn_default(model.get("arch"), opts)
    return (float(budget) if budget is not None else None), str(bn or ""), source


def _model_bn_default(arch: str | None, opts: dict[str, object]) -> tuple[str, str]:
    """The model's own batch-norm mode when neither the method nor the scenario set one
    ("" for a model without batch norm)."""
    try:
        from fleetsim.nn import MODELS
        from fleetsim.policies.defaults import has_batch_norm

        ocls = getattr(MODELS.get(str(arch)), "Options", None)
        if ocls is None or not has_batch_norm(ocls(**opts)):
            return "", ""
        return str(ocls.model_fields["bn_stats"].default), "model default"
    except Exception:  # a user model not registered in this process
        return "", ""


# ----------------------------------------------------------------------------- statistics


def natural_key(text: str) -> tuple[tuple[int, float, str], ...]:
    """Sort key that orders the numbers inside labels by value: ``clients_per_round=2``
    before ``=10``, ``rate=0.125`` before ``=0.25``, ``lr=1e-3`` before ``=1e-2``."""
    out = []
    for m in re.finditer(_NUMBER_OR_TEXT, text):
        num, txt = m.group("num"), m.group("txt")
        out.append((0, float(num), "") if num is not None else (1, 0.0, txt))
    return tuple(out)


# a number (a sign only right after '=' or ',', so 'a-1' stays text) or a run of other text
_NUMBER_OR_TEXT = re.compile(r"(?P<num>(?:(?<=[=,])-)?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
                             r"|(?P<txt>(?:(?<![=,])-|[^\d-])+|-)")


def time_to_target(run: RunData, target: float) -> float:
    """End time (s) of the first evaluated round whose accuracy is >= ``target``; nan if
    the run never reaches it."""
    t, acc = run.curve()
    hit = np.flatnonzero(acc >= target)
    return float(t[hit[0]]) if hit.size else math.nan


def end_time(run: RunData) -> float:
    """End time (s) of a run's last round; nan for a run without rounds."""
    t = run.rounds["t_end_s"]
    return float(t[-1]) if len(t) else math.nan


def accuracy_at(run: RunData, t_s: float) -> float:
    """The last evaluated accuracy at or before simulated time ``t_s`` (what the run
    delivered by then); nan if it had no evaluation by then."""
    t, acc = run.curve()
    ok = np.flatnonzero(t <= t_s * (1 + 1e-12))
    return float(acc[ok[-1]]) if ok.size else math.nan


def common_time(runs: Sequence[RunData]) -> tuple[float, str]:
    """The simulated time at which a setting's runs are compared, and the rule used:
    their common ``training.time_budget_s`` when every run has the same one, else the
    earliest end among them (every run has data up to it)."""
    budgets = {r.time_budget_s for r in runs}
    if len(budgets) == 1 and None not in budgets:
        return float(next(iter(budgets))), "time budget"  # type: ignore[arg-type]
    ends = [end_time(r) for r in runs if math.isfinite(end_time(r))]
    return (min(ends) if ends else math.nan), "earliest end"


def final_accuracy(run: RunData) -> float:
    acc = run.curve()[1]
    return float(acc[-1]) if acc.size else math.nan


def best_accuracy(run: RunData) -> float:
    acc = run.curve()[1]
    return float(acc.max()) if acc.size else math.nan


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its confidence interval; ``n`` values (nan ones left out)."""

    mean: float
    lo: float
    hi: float
    n: int
    method: str  # "bca", "percentile", "range" (< 3 values: min-max) or "none"


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean and bootstrap CI (BCa, :func:`scipy.stats.bootstrap`) of the finite values.

    With 2 values (fewer than :data:`~fleetsim.guardrails.MIN_SEEDS_FOR_CI`), the
    "interval" is their min-max range (method ``range``), which the tables mark: a
    bootstrap of two values is no 95% interval. With 1 value or identical values, BCa is
    undefined: the interval is then the percentile interval, which collapses to the mean.
    If BCa fails on real spread (tiny samples can make its acceleration term undefined),
    the percentile bootstrap is used.
    """
    x = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if x.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "none")
    mean = float(x.mean())
    if 2 <= x.size < MIN_SEEDS_FOR_CI:
        # a bootstrap of two values is no 95% interval: say what it is, the range
        return Estimate(mean, float(x.min()), float(x.max()), int(x.size), "range")
    if x.size >= 2 and np.ptp(x) > 0:
        for method in ("BCa", "percentile"):
            lo, hi = _bootstrap(x, method, confidence)
            if math.isfinite(lo) and math.isfinite(hi):
                return Estimate(mean, lo, hi, int(x.size), method.lower())
    a = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(x, [a, 100 - a])
    return Estimate(mean, float(lo), float(hi), int(x.size), "percentile")


def _bootstrap(x: np.ndarray, method: str, confidence: float) -> tuple[float, float]:
    from scipy.stats import bootstrap

    kw = dict(confidence_level=confidence, n_resamples=N_RESAMPLES, method=method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate-sample warnings: handled by the caller
        try:
            res = bootstrap((x,), np.mean, rng=np.random.default_rng(BOOTSTRAP_SEED), **kw)
        except TypeError:  # scipy < 1.15 names it random_state
            res = bootstrap((x,), np.mean, random_state=np.random.default_rng(BOOTSTRAP_SEED),
                            **kw)
    ci = res.confidence_interval
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class Summary:
    """One row of the tables: a policy in a setting, over its seeds."""

    scenario: str
    overrides: str
    policy: str
    seeds: tuple[int, ...]
    target: float
    never_reached: tuple[int, ...]
    time_s: Estimate
    speedup: float
    final: Estimate
    best: Estimate
    rounds: float
    in_time_share: float
    #: "" when ``speedup`` is exact; ">=" / "<=" when it is a lower / upper bound
    #: because the baseline / the policy missed the target in some seeds
    speedup_bound: str = ""
    #: (min, max) of the final accuracy over seeds: the spread a CI of few seeds hides
    final_range: tuple[float, float] = (math.nan, math.nan)
    #: the split(s) the accuracies were measured on ("test", "validation")
    eval_split: str = "test"
    #: mean simulated end time of the runs (s)
    end_s: float = math.nan
    #: the setting's common comparison time T (s) and its rule
    common_s: float = math.nan
    common_rule: str = ""
    #: accuracy at T, over seeds
    at_common: Estimate = Estimate(math.nan, math.nan, math.nan, 0, "none")
    #: batch-norm mode(s) of the runs and where each came from
    bn_stats: str = ""
    bn_source: str = ""
    #: per run, means over seeds: bytes moved (down + up), MACs of aggregated updates,
    #: MACs spent by every other selected device
    bytes_per_run: float = math.nan
    macs_per_run: float = math.nan
    macs_wasted_per_run: float = math.nan
    #: warnings of this row's runs and of its intervals
    warnings: tuple[str, ...] = ()

    @property
    def wasted_share(self) -> float:
        total = self.macs_per_run + self.macs_wasted_per_run
        return self.macs_wasted_per_run / total if total > 0 else math.nan

    @property
    def reached(self) -> int:
        return len(self.seeds) - len(self.never_reached)


def default_target(runs: Sequence[RunData]) -> float:
    """90% of the best mean final accuracy among the policies, rounded down to 0.01."""
    finals: dict[str, list[float]] = {}
    for r in runs:
        finals.setdefault(r.policy, []).append(final_accuracy(r))
    best = max((float(np.nanmean(v)) for v in finals.values() if not np.isnan(v).all()),
               default=math.nan)
    if not math.isfinite(best):
        return math.nan
    return math.floor(DEFAULT_TARGET_SHARE * best * 100 + 1e-9) / 100


def resolve_baseline(baseline: str | None, policies: Sequence[str]) -> str | None:
    """The baseline's folder name: as given, as a policy spec (``fedavg:stragglers=
    wait``), or the one policy of that name at a tuned setting (``fedavg@lr=0.05``); None
    when not given and ``fedavg`` is absent."""
    names = sorted(set(policies))
    wanted = [DEFAULT_BASELINE] if baseline is None else [baseline,
                                                          PolicySpec.parse(baseline).label]
    for cand in wanted:
        if cand in names:
            return cand
    for cand in wanted:  # the policy at its tuned setting, e.g. fedavg@lr=0.05
        tuned = [p for p in names if policy_of_label(p) == cand]
        if len(tuned) == 1:
            return tuned[0]
    if baseline is None:
        return None
    raise UserError(f"command line: --baseline {baseline!r} is not a policy of this batch. "
                    f"Allowed: {', '.join(sorted(set(policies)))}.")


def summarise(runs: Sequence[RunData], target: float | None = None,
              baseline: str | None = None) -> list[Summary]:
    """One :class:`Summary` per (scenario, overrides, policy), baseline first per setting.

    Parameters
    ----------
    runs : from :func:`load_runs`
    target : accuracy to reach (None: :func:`default_target` per setting)
    baseline : policy folder name for speedups (None: fedavg when present)
    """
    if target is not None and not 0 < target <= 1:
        raise UserError(f"command line: --target-accuracy {target}: Allowed: a number in "
                        "(0, 1].")
    base = resolve_baseline(baseline, [r.policy for r in runs])
    out: list[Summary] = []
    for setting in sorted({r.setting for r in runs},
                          key=lambda st: (natural_key(st[0]), natural_key(st[1]))):
        in_setting = [r for r in runs if r.setting == setting]
        tgt = target if target is not None else default_target(in_setting)
        t_common, rule = common_time(in_setting)
        policies = sorted({r.policy for r in in_setting},
                          key=lambda p: (p != base, natural_key(p)))
        rows = [_summary_of([r for r in in_setting if r.policy == p], tgt, t_common, rule)
                for p in policies]
        base_runs = [r for r in in_setting if r.policy == base]
        out += [_with_speedup(s, base_runs, [r for r in in_setting if r.policy == s.policy],
                              tgt, s.policy == base) for s in rows]
    return out


def _summary_of(runs: Sequence[RunData], target: float, t_common: float = math.nan,
                rule: str = "") -> Summary:
    runs = sorted(runs, key=lambda r: r.seed)
    times = [time_to_target(r, target) for r in runs]
    finals = [final_accuracy(r) for r in runs]
    selected = sum(float(r.rounds["selected"].sum()) for r in runs)
    completed = sum(float(r.rounds["completed"].sum()) for r in runs)
    bn = sorted({r.bn_stats for r in runs})
    src = sorted({r.bn_source for r in runs})
    warns = [f"seed {r.seed}: {w}" for r in runs for w in r.warnings]
    few = few_seeds(len(runs), "this row")
    return Summary(
        scenario=runs[0].scenario, overrides=runs[0].overrides, policy=runs[0].policy,
        seeds=tuple(r.seed for r in runs), target=target,
        never_reached=tuple(r.seed for r, t in zip(runs, times) if math.isnan(t)),
        time_s=mean_ci(times), speedup=math.nan,
        final=mean_ci(finals), best=mean_ci([best_accuracy(r) for r in runs]),
        rounds=float(np.mean([len(r.rounds["round"]) for r in runs])),
        in_time_share=completed / selected if selected else math.nan,
        final_range=value_range(finals),
        eval_split="/".join(sorted({r.eval_split for r in runs})),
        end_s=float(np.mean([end_time(r) for r in runs])), common_s=t_common,
        common_rule=rule, at_common=mean_ci([accuracy_at(r, t_common) for r in runs]),
        bn_stats="/".join(bn), bn_source="/".join(src),
        bytes_per_run=float(np.mean([(r.column("bytes_down") + r.column("bytes_up")).sum()
                                     for r in runs])),
        macs_per_run=float(np.mean([r.column("macs").sum() for r in runs])),
        macs_wasted_per_run=float(np.mean([r.column("macs_wasted").sum() for r in runs])),
        warnings=tuple(warns + ([few] if few else [])))


def value_range(values: Sequence[float]) -> tuple[float, float]:
    """(min, max) of the finite values; (nan, nan) when there are none."""
    x = [v for v in values if math.isfinite(v)]
    return (min(x), max(x)) if x else (math.nan, math.nan)


def _censored_times(runs: Sequence[RunData], target: float
                    ) -> dict[int, tuple[float, bool]]:
    """Per seed: (time to target, True) if reached, else (the run's end time, False) --
    the run ended without reaching it, so it needs more than that."""
    out = {}
    for r in runs:
        t = time_to_target(r, target)
        out[r.seed] = (t, True) if math.isfinite(t) else (end_time(r), False)
    return out


def speedup(base: dict[int, tuple[float, bool]], pol: dict[int, tuple[float, bool]]
            ) -> tuple[float, str]:
    """Ratio of mean times to target over the seeds both have (paired): (value, bound).

    A seed that never reaches the target counts with its run's end time, a lower bound
    on its time: a censored baseline makes the ratio a lower bound (">="), a censored
    policy an upper bound ("<="), both together leave it unknown (nan). Leaving such
    seeds out instead (a mean over the lucky seeds only) would credit a policy that
    reaches the target once in five seeds with that one seed's speed.
    """
    common = sorted(set(base) & set(pol))
    if not common:
        return math.nan, ""
    bt = [base[k][0] for k in common]
    pt = [pol[k][0] for k in common]
    b_cens = not all(base[k][1] for k in common)
    p_cens = not all(pol[k][1] for k in common)
    if (b_cens and p_cens) or not all(math.isfinite(x) for x in bt + pt):
        return math.nan, ""
    if all(not base[k][1] for k in common) or all(not pol[k][1] for k in common):
        return math.nan, ""  # one side never reached it: nothing to compare but run lengths
    bm, pm = float(np.mean(bt)), float(np.mean(pt))
    if not pm > 0:
        return math.nan, ""
    return bm / pm, ">=" if b_cens else "<=" if p_cens else ""


def _with_speedup(s: Summary, base_runs: Sequence[RunData], runs: Sequence[RunData],
                  target: float, is_base: bool) -> Summary:
    from dataclasses import replace

    # > 1 means the policy reaches the target sooner than the baseline
    if not base_runs:
        return s
    if is_base:
        return replace(s, speedup=1.0 if s.time_s.n else math.nan)
    value, bound = speedup(_censored_times(base_runs, target), _censored_times(runs, target))
    return replace(s, speedup=value, speedup_bound=bound)


def equal_time_notes(runs: Sequence[RunData]) -> list[str]:
    """Per setting whose policies' mean end times are more than 10% apart: the warning of
    :func:`fleetsim.guardrails.end_times_apart`, which leads to ``time_budget_s``."""
    notes = []
    for setting in sorted({r.setting for r in runs}):
        ends: dict[str, list[float]] = {}
        for r in runs:
            if r.setting == setting:
                ends.setdefault(r.policy, []).append(end_time(r))
        w = end_times_apart({p: float(np.mean(v)) for p, v in ends.items()},
                            f"{setting[0]} — {setting[1]}")
        if w:
            notes.append(w)
    return notes


# ----------------------------------------------------------------------------- per class

#: the columns of ``per_class.csv``
PER_CLASS_CSV_COLUMNS = ("scenario", "overrides", "policy", "seeds", *PER_CLASS_COLUMNS)


def run_per_class(run: RunData) -> list[dict[str, object]] | None:
    """One run's per-class rows (:func:`fleetsim.per_class.per_class_rows`); None for a
    run without device classes (written before they were recorded, or in memory)."""
    if run.path is None:
        return None
    names = read_attr_json(run.path, "class_names")
    sizes = read_attr_json(run.path, "class_sizes")
    tl = read_timeline(run.path)
    if names is None or sizes is None or "device_class" not in tl:
        return None
    return per_class_rows(tl, STATUS, names, sizes)  # type: ignore[return-value]


def per_class_summary(runs: Sequence[RunData]) -> list[dict[str, object]]:
    """Per (setting, policy, class), over seeds: selections per run, the status shares
    pooled over seeds (sum of counts / sum of selections), MACs and bytes per run, and
    Jain's index averaged over seeds."""
    groups: dict[tuple[str, str, str], list[tuple[int, list[dict[str, object]]]]] = {}
    for r in runs:
        rows = run_per_class(r)
        if rows is not None:
            groups.setdefault((r.scenario, r.overrides, r.policy), []).append((r.seed, rows))
    out: list[dict[str, object]] = []
    order = sorted(groups, key=lambda k: (natural_key(k[0]), natural_key(k[1]),
                                          natural_key(k[2])))
    for key in order:
        seeds = sorted(groups[key])
        names = [row["device_class"] for row in seeds[0][1]]
        for i, name in enumerate(names):
            per = [rows[i] for _, rows in seeds]
            sel = sum(float(p["selected"]) for p in per)  # type: ignore[arg-type]
            row: dict[str, object] = {
                "scenario": key[0], "overrides": key[1], "policy": key[2],
                "seeds": " ".join(str(k) for k, _ in seeds), "device_class": name,
                "devices": per[0]["devices"], "selected": sel / len(per)}
            for st in SHARES:
                n = sum(float(p[f"{st}_share"]) * float(p["selected"])  # type: ignore[arg-type]
                        for p in per if float(p["selected"]))  # type: ignore[arg-type]
                row[f"{st}_share"] = n / sel if sel else math.nan
            for col in ("macs_contributed", "macs_wasted", "bytes"):
                row[col] = float(np.mean([float(p[col]) for p in per]))  # type: ignore[arg-type]
            js = [float(p["jain_participation"]) for p in per]  # type: ignore[arg-type]
            ok = [j for j in js if math.isfinite(j)]
            row["jain_participation"] = float(np.mean(ok)) if ok else math.nan
            out.append(row)
    return out


def per_class_csv(rows: Sequence[dict[str, object]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PER_CLASS_CSV_COLUMNS)
    for r in rows:
        w.writerow([_num(v) if isinstance(v, float) else v
                    for v in (r[c] for c in PER_CLASS_CSV_COLUMNS)])
    return buf.getvalue()


def per_class_md(rows: Sequence[dict[str, object]]) -> list[str]:
    """The report's per-class section: one table per setting."""
    lines = ["## Per device class", "",
             "Per policy and device class, over seeds: selections per run; the shares of "
             "those selections whose update was aggregated (completed), arrived late, "
             "dropped out or was too slow for one mini-batch; MACs of aggregated updates "
             "(contributed) and of the others (wasted) per run; bytes moved per run; and "
             "Jain's fairness index of participation, (sum x)^2 / (n sum x^2) over the "
             "class's n devices with x = aggregated updates per device (1: equal; 1/n: one "
             "device did all), averaged over seeds. Also in `per_class.csv`.", ""]
    head = ["Policy", "Class", "Devices", "Selected / run", "Completed", "Late", "Dropped",
            "Too slow", "MACs contributed / run", "MACs wasted / run", "MB / run",
            "Jain (participation)"]
    for setting in dict.fromkeys((str(r["scenario"]), str(r["overrides"])) for r in rows):
        lines += [f"### {setting[0]} — {setting[1]}", "",
                  "| " + " | ".join(head) + " |",
                  "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
        for r in rows:
            if (r["scenario"], r["overrides"]) != setting:
                continue
            f = {k: float(v) for k, v in r.items()  # type: ignore[arg-type]
                 if k not in ("scenario", "overrides", "policy", "seeds", "device_class")}
            lines.append("| " + " | ".join([
                str(r["policy"]), str(r["device_class"]), f"{f['devices']:g}",
                _g(f["selected"]), *(_share(f[f"{st}_share"]) for st in SHARES),
                _g(f["macs_contributed"]), _g(f["macs_wasted"]), _mb(f["bytes"]),
                "–" if not math.isfinite(f["jain_participation"]) else
                f"{f['jain_participation']:.3f}"]) + " |")
        lines.append("")
    return lines


# ----------------------------------------------------------------------------- tables


def _num(x: float) -> str:
    return "" if math.isnan(x) else repr(float(x))


def summary_csv(rows: Sequence[Summary]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_COLUMNS)
    for s in rows:
        w.writerow([
            s.scenario, s.overrides, s.policy, " ".join(map(str, s.seeds)), _num(s.target),
            s.reached, " ".join(map(str, s.never_reached)), _num(s.time_s.mean),
            _num(s.time_s.lo), _num(s.time_s.hi), _num(s.speedup), s.speedup_bound,
            _num(s.final.mean),
            _num(s.final.lo), _num(s.final.hi), _num(s.best.mean), _num(s.best.lo),
            _num(s.best.hi), _num(s.rounds), _num(s.in_time_share), _num(s.final_range[0]),
            _num(s.final_range[1]), s.eval_split,
            _num(s.end_s), _num(s.common_s), s.common_rule, _num(s.at_common.mean),
            _num(s.at_common.lo), _num(s.at_common.hi), _interval_name(s.final),
            s.bn_stats, s.bn_source, _num(s.bytes_per_run), _num(s.macs_per_run),
            _num(s.macs_wasted_per_run), _num(s.wasted_share), " | ".join(s.warnings)])
    return buf.getvalue()


def _interval_name(e: Estimate) -> str:
    """What the row's intervals are: "95% CI", "min-max" (fewer than 3 seeds) or ""."""
    return {"range": "min-max", "none": ""}.get(e.method, "95% CI" if e.n > 1 else "")


def time_unit(rows: Sequence[Summary]) -> tuple[str, float]:
    """A readable unit for the tables' times: (name, seconds per unit)."""
    return pick_time_unit(max((s.time_s.hi for s in rows if math.isfinite(s.time_s.hi)),
                              default=0.0))


def _g(x: float, digits: int = 3) -> str:
    return "–" if not math.isfinite(x) else f"{x:.{digits}g}"


def _acc(e: Estimate) -> str:
    if e.n == 0:
        return "–"
    if e.n == 1:  # one value has no interval: [x, x] would read as a certain result
        return f"{e.mean:.3f} (1 seed)"
    if e.method == "range":  # two seeds: the range, not a confidence interval
        return f"{e.mean:.3f} [{e.lo:.3f}, {e.hi:.3f}] (min–max, {e.n} seeds)"
    return f"{e.mean:.3f} [{e.lo:.3f}, {e.hi:.3f}]"


def _time(s: Summary, scale: float) -> str:
    e = s.time_s
    if e.n == 0:
        return "never"
    if e.n == 1:
        return f"{_g(e.mean / scale)} (1 seed)"
    more = f" (min–max, {e.n} seeds)" if e.method == "range" else ""
    return f"{_g(e.mean / scale)} [{_g(e.lo / scale)}, {_g(e.hi / scale)}]{more}"


_BOUND_MD = {"": "", ">=": "≥", "<=": "≤"}
_BOUND_TEX = {"": "", ">=": "$\\geq$", "<=": "$\\leq$"}


def _speedup(s: Summary, fmt: Callable[[float], str], marks: dict[str, str],
             missing: str) -> str:
    if not math.isfinite(s.speedup):
        return missing
    return marks[s.speedup_bound] + fmt(s.speedup)


def _range(s: Summary, dash: str) -> str:
    """min–max of the final accuracy over seeds; "–" for fewer than two seeds."""
    lo, hi = s.final_range
    if s.final.n < 2 or not math.isfinite(lo):
        return dash
    return f"{lo:.3f}{dash}{hi:.3f}"


def bn_text(s: Summary) -> str:
    """``batch (method default)``, ``running (method default: batch)``, or – without
    batch norm."""
    if not s.bn_stats:
        return "–"
    return f"{s.bn_stats} ({s.bn_source})" if s.bn_source else s.bn_stats


def _mb(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x / 1e6:.3g}"


def _share(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.1%}"


def _cells(s: Summary, scale: float) -> list[str]:
    at = _acc(s.at_common)
    if 0 < s.at_common.n < len(s.seeds):  # the others had no evaluation by T yet
        at += f"; {len(s.seeds) - s.at_common.n} of {len(s.seeds)} seeds not evaluated by T"
    elif s.at_common.n == 0 and s.seeds:
        at = "not evaluated by T"
    return [s.policy, str(len(s.seeds)), bn_text(s), _g(s.end_s / scale), at,
            _time(s, scale), f"{s.reached}/{len(s.seeds)}",
            _speedup(s, _g, _BOUND_MD, "–"), _acc(s.final), _range(s, "–"), _acc(s.best),
            _g(s.rounds), _share(s.in_time_share), _mb(s.bytes_per_run),
            _g(s.macs_wasted_per_run), _share(s.wasted_share)]


def report_md(out: Path, rows: Sequence[Summary], target: float | None,
              baseline: str | None, n_failed: int,
              per_class: Sequence[dict[str, object]] = ()) -> str:
    unit, scale = time_unit(rows)
    n_runs = sum(len(s.seeds) for s in rows)
    lines = [f"# fleetsim report: {out.name}", "",
             f"{n_runs} complete runs in `{out}`."]
    if n_failed:
        lines.append(f"{n_failed} runs failed: see `{FAILURES_FILE}`.")
    lines += ["", "Target accuracy: " + (f"{target:g} for every setting." if target is not
              None else f"{DEFAULT_TARGET_SHARE:.0%} of the best policy's mean final "
              "accuracy in each setting, rounded down to 0.01."),
              "Speedup: " + (f"mean time to target of `{baseline}` divided by the policy's "
                             "(> 1: faster)." if baseline else "no baseline policy (give "
                             "--baseline)."), ""]
    head = ["Policy", "Seeds", "Batch norm", f"Ends at ({unit})",
            "Accuracy at T [95% CI]", f"Time to target ({unit}) [95% CI]", "Reached",
            f"Speedup vs {baseline or '–'}", "Final accuracy [95% CI]",
            "Final accuracy, min–max", "Best accuracy [95% CI]", "Rounds", "In time",
            "MB moved / run", "Wasted MACs / run", "Wasted share"]
    warned: list[str] = []
    for setting in _settings(rows):
        block = [s for s in rows if (s.scenario, s.overrides) == setting]
        splits = "/".join(dict.fromkeys(s.eval_split for s in block))
        t_common, rule = block[0].common_s, block[0].common_rule
        why = ("every run's training.time_budget_s" if rule == "time budget" else
               "the earliest end among the compared runs (they have no common "
               "training.time_budget_s)")
        apart = end_times_apart({s.policy: s.end_s for s in block},
                                f"{setting[0]} — {setting[1]}")
        lines += [f"## {setting[0]} — {setting[1]}", "",
                  f"Target accuracy {block[0].target:.4g}; accuracy measured on the "
                  f"{splits} split.",
                  f"Compared at T = {_g(t_common / scale)} {unit} of simulated time, "
                  f"{why}.",
                  ""]
        if apart:
            lines += [f"**Warning:** {apart}.", ""]
            warned.append(apart)
        lines += ["| " + " | ".join(head) + " |",
                  "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(s, scale)) + " |"
                  for s in block]
        lines.append("")
        warned += [f"{s.policy} ({setting[1]}): {w}" for s in block for w in s.warnings]
    if warned:
        lines += ["## Warnings", ""] + [f"- {w}" for w in dict.fromkeys(warned)] + [""]
    if per_class:
        lines += per_class_md(per_class)
    lines += ["## Figures", "",
              "Each figure is written as PNG (shown here), PDF and SVG.", "",
              "![accuracy versus simulated time](accuracy_vs_time.png)", "",
              "![accuracy versus rounds](accuracy_vs_rounds.png)", ""]
    if baseline:
        lines += [f"![speed-up versus {baseline}](speedup.png)", ""]
    if per_class:
        lines += ["![completed share per device class](per_class.png)", ""]
    lines += [
        "![round durations](round_durations.png)", "", "![kept share](kept_share.png)", "",
        "## Method", "",
        "- Ends at: mean simulated end time of the runs. Accuracy at T: the last evaluated "
        "accuracy at or before the common time T (the runs' common training.time_budget_s, "
        "else the earliest end among the setting's runs); a run that ended earlier "
        "keeps its final accuracy. Runs ending more than 10% apart are flagged: their "
        "final accuracies compare different simulated times; for a policy comparison give "
        "every run the same `training.time_budget_s`.",
        "- Batch norm: the statistics the model ran with (running, batch, static) and "
        "where the mode came from: the method's default (docs/policies.md), a departure "
        "from it (`method default: X`), the model's default, or the scenario.",
        "- MB moved / run: bytes down and up over the run (all selected devices); wasted "
        "MACs: MACs spent by devices whose update was not aggregated; wasted share: "
        "wasted over all MACs spent.",
        "- Time to target: end time (`t_end_s`) of the first evaluated round whose test "
        "accuracy is at least the target, in simulated time. Mean over the seeds that reach "
        "it; *Reached* counts them (the others are listed in `summary.csv`).",
        "- Speedup: the baseline's mean time to target over the policy's, over the seeds "
        "both have. A seed that never reaches the target counts with its run's end time, "
        "which it would need more than: ≥ marks a lower bound (the baseline missed the "
        "target in some seeds), ≤ an upper bound (the policy did); – where both did, or "
        "one never reached it.",
        f"- Intervals: {CONFIDENCE:.0%} BCa bootstrap over seeds (`scipy.stats.bootstrap`, "
        f"{N_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}); the percentile interval where BCa "
        "is undefined (identical values); one seed has no interval (marked *1 seed*); with "
        f"fewer than {MIN_SEEDS_FOR_CI} seeds the interval is the min–max range over seeds "
        "(marked *min–max*), not a confidence interval.",
        "- Final and best accuracy: last and highest evaluated accuracy of a run, on the "
        "split the scenario's `eval.split` names (test unless it says validation); "
        "*min–max* is the range of the final accuracy over the seeds.",
        "- In time: completed updates / selected devices, summed over rounds and seeds.",
        "- Figures: each seed's accuracy is interpolated linearly on a common time grid, "
        "from the time every seed has its first evaluation to the end of the longest run "
        "(a run that has ended keeps its final accuracy); the line is the mean over seeds, "
        "the band their range (min to max). Speed-ups: hatched bars marked ≥ or ≤ are "
        "bounds (some seeds never reached the target), n/a where there is no ratio. Box "
        "plots: box = quartiles, whiskers = furthest values within 1.5 IQR, line = median, "
        "triangle = mean. Round durations are `t_end_s - t_start_s`; kept share is each "
        "round's `mean_kept_share` (1 = the full model).", ""]
    return "\n".join(lines)


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def _tex_ci(e: Estimate, fmt: Callable[[float], str]) -> str:
    if e.n == 0:
        return "--"
    if e.n == 1:
        return f"{fmt(e.mean)} {{\\scriptsize(1 seed)}}"
    more = " min--max" if e.method == "range" else ""
    return f"{fmt(e.mean)} {{\\scriptsize[{fmt(e.lo)}, {fmt(e.hi)}]{more}}}"


def _acc3(x: float) -> str:
    return f"{x:.3f}"


#: the columns ``table.tex`` can have: name -> (alignment, header, cell). A cell gets the
#: row, its position in its setting's block, the time scale and the baseline.
TexCell = Callable[[Summary, int, float], str]
TEX_COLUMNS: dict[str, tuple[str, Callable[[str, str | None], str], TexCell]] = {
    "scenario": ("l", lambda u, b: "Scenario",
                 lambda s, j, k: tex_escape(s.scenario) if j == 0 else ""),
    "overrides": ("l", lambda u, b: "Overrides",
                  lambda s, j, k: tex_escape(s.overrides) if j == 0 else ""),
    "policy": ("l", lambda u, b: "Policy", lambda s, j, k: tex_escape(s.policy)),
    "bn": ("l", lambda u, b: "BN", lambda s, j, k: tex_escape(s.bn_stats) or "--"),
    "target": ("r", lambda u, b: "Target",
               lambda s, j, k: f"{s.target:.4g}" if j == 0 else ""),
    "time": ("r", lambda u, b: f"Time to target ({u})",
             lambda s, j, k: _tex_ci(s.time_s, lambda x: _g(x / k)) if s.time_s.n
             else "never"),
    "reached": ("r", lambda u, b: "Reached", lambda s, j, k: f"{s.reached}/{len(s.seeds)}"),
    "speedup": ("r", lambda u, b: "Speedup" + (f" vs {tex_escape(b)}" if b else ""),
                lambda s, j, k: _speedup(s, lambda x: f"{x:.2f}", _BOUND_TEX, "--")),
    "final": ("r", lambda u, b: "Final acc.", lambda s, j, k: _tex_ci(s.final, _acc3)),
    "range": ("r", lambda u, b: "Final min--max", lambda s, j, k: _range(s, "--")),
    "best": ("r", lambda u, b: "Best acc.", lambda s, j, k: _tex_ci(s.best, _acc3)),
    "rounds": ("r", lambda u, b: "Rounds", lambda s, j, k: _g(s.rounds)),
    "in_time": ("r", lambda u, b: "In time",
                lambda s, j, k: "--" if math.isnan(s.in_time_share)
                else f"{100 * s.in_time_share:.1f}\\%"),
    "end": ("r", lambda u, b: f"Ends ({u})", lambda s, j, k: _g(s.end_s / k)),
    "acc_at_t": ("r", lambda u, b: "Acc. at $T$",
                 lambda s, j, k: _tex_ci(s.at_common, _acc3)),
    "mb": ("r", lambda u, b: "MB/run", lambda s, j, k: _mb(s.bytes_per_run)),
    "wasted": ("r", lambda u, b: "Wasted",
               lambda s, j, k: "--" if not math.isfinite(s.wasted_share)
               else f"{100 * s.wasted_share:.1f}\\%"),
}
#: the columns of ``table.tex`` unless ``--tex-columns`` says otherwise (the table's
#: columns before they could be chosen)
DEFAULT_TEX_COLUMNS = ("scenario", "overrides", "policy", "target", "time", "reached",
                       "speedup", "final", "range", "best", "rounds", "in_time")


def parse_tex_columns(text: str | None) -> tuple[str, ...]:
    """``policy,final,acc_at_t`` -> the column names; a UserError for unknown ones."""
    if text is None:
        return DEFAULT_TEX_COLUMNS
    cols = tuple(c.strip() for c in text.split(",") if c.strip())
    bad = [c for c in cols if c not in TEX_COLUMNS]
    if bad or not cols:
        raise UserError(f"command line: at '--tex-columns': {text!r}: "
                        + (f"unknown column {bad[0]!r}" if bad else "no column") +
                        f". Allowed: a comma-separated list of {', '.join(TEX_COLUMNS)}.")
    return cols


def table_tex(rows: Sequence[Summary], baseline: str | None,
              columns: Sequence[str] = DEFAULT_TEX_COLUMNS) -> str:
    """A booktabs table of ``columns`` (names of :data:`TEX_COLUMNS`)."""
    unit, scale = time_unit(rows)
    cols = [TEX_COLUMNS[c] for c in columns]
    lines = ["% fleetsim report; needs \\usepackage{booktabs}. Intervals: 95% bootstrap "
             "over seeds (min--max: the range, for fewer than 3 seeds); Final min--max: "
             "range of the final accuracy over seeds; $\\geq$/$\\leq$: a speed-up bound "
             "(some seeds never reached the target); Acc. at $T$: accuracy at the "
             "setting's common simulated time.",
             "\\begin{tabular}{" + "".join(a for a, _, _ in cols) + "}", "\\toprule",
             " & ".join(h(unit, baseline) for _, h, _ in cols) + " \\\\", "\\midrule"]
    for i, setting in enumerate(_settings(rows)):
        if i:
            lines.append("\\midrule")
        for j, s in enumerate(s for s in rows if (s.scenario, s.overrides) == setting):
            lines.append(" & ".join(cell(s, j, scale) for _, _, cell in cols) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)


def _settings(rows: Sequence[Summary]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((s.scenario, s.overrides) for s in rows))


# ----------------------------------------------------------------------------- entry


def write_report(out: Path, target: float | None = None, baseline: str | None = None,
                 style: str = "screen", tex_columns: Sequence[str] = DEFAULT_TEX_COLUMNS,
                 formats: Sequence[str] = FIGURE_FORMATS) -> list[Path]:
    """Write ``summary.csv``, ``per_class.csv``, ``report.md``, ``table.tex`` and the
    figures (each as PNG, PDF and SVG) into ``out``; returns their paths.

    ``style``: ``screen`` (panels side by side) or ``paper`` (one column, 3.3 in wide,
    8 pt fonts). ``tex_columns``: names of :data:`TEX_COLUMNS`. ``formats``: the
    figures' file types (png, pdf, svg).
    """
    bad = [f for f in formats if f not in FIGURE_FORMATS]
    if bad or not formats:
        raise UserError(f"command line: at '--formats': {','.join(formats)!r} is not "
                        f"allowed. Allowed: a comma-separated list of "
                        f"{', '.join(FIGURE_FORMATS)}.")
    if not out.is_dir():
        raise UserError(f"{out}: the folder does not exist. Allowed: the --out folder of "
                        "`fleetsim compare`.")
    if style not in STYLES:
        raise UserError(f"command line: at '--style': {style!r} is not allowed. Allowed: "
                        f"{', '.join(STYLES)}.")
    runs = load_runs(out)
    rows = summarise(runs, target, baseline)
    base = resolve_baseline(baseline, [r.policy for r in runs])
    classes = per_class_summary(runs)
    failed = out / FAILURES_FILE
    n_failed = 0
    if failed.is_file():
        with failed.open(newline="") as f:
            n_failed = sum(1 for _ in csv.DictReader(f))
    written = [out / n for n in ("summary.csv", "per_class.csv", "report.md", "table.tex")]
    atomic_write_bytes(written[0], summary_csv(rows).encode())
    if classes:
        atomic_write_bytes(written[1], per_class_csv(classes).encode())
    else:
        written.remove(written[1])
        (out / "per_class.csv").unlink(missing_ok=True)
    atomic_write_bytes(out / "report.md",
                       report_md(out, rows, target, base, n_failed, classes).encode())
    atomic_write_bytes(out / "table.tex", table_tex(rows, base, tex_columns).encode())
    with figure_style(style):
        figures = {
            "accuracy_vs_time": lambda: figure_accuracy_vs_time(runs, rows),
            "accuracy_vs_rounds": lambda: figure_accuracy_vs_rounds(runs, rows),
            "round_durations": lambda: figure_distributions(
                runs, rows, lambda r: r.rounds["t_end_s"] - r.rounds["t_start_s"],
                "round duration (simulated s)"),
            "kept_share": lambda: figure_distributions(
                runs, rows, lambda r: r.rounds["mean_kept_share"], "mean kept share per round"),
        }
        if base:
            figures["speedup"] = lambda: figure_speedup(rows, base)
        if classes:
            figures["per_class"] = lambda: figure_per_class(classes)
        for name, make in figures.items():
            written += save_all(make(), out / name, formats)
    # figures of an earlier report that this one has no data for would be stale
    for name in ("speedup", "per_class"):
        if name not in figures:
            for ext in FIGURE_FORMATS:
                (out / f"{name}.{ext}").unlink(missing_ok=True)
    return written
