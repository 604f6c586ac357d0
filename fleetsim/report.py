"""Tables and figures of a ``fleetsim compare`` folder.

Reads every complete run (``DIR/<scenario>/<policy>/<overrides>/seed-<k>/run.h5``) and
writes, per scenario, overrides and policy: simulated time to a target accuracy (mean and
95% bootstrap confidence interval over seeds), speedup over a baseline policy, final and
best accuracy, rounds run and the share of selected devices whose work arrived in time --
as ``summary.csv``, ``report.md`` and ``table.tex`` (booktabs) -- and three figures.

A *setting* is a (scenario, overrides) pair: policies are compared within a setting, and
the default target accuracy is chosen per setting.
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
from fleetsim.report_figures import (
    figure_accuracy_vs_time,
    figure_distributions,
    figure_speedup,
    mean_band,  # noqa: F401  (re-exported: it lived here before the figures moved out)
    save,
)
from fleetsim.results import atomic_write_bytes, read_eval_split, read_rounds
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
    "final_accuracy_min", "final_accuracy_max", "eval_split")


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

    @property
    def setting(self) -> tuple[str, str]:
        return (self.scenario, self.overrides)

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
        runs.append(RunData(scenario.name, policy.name, overrides.name, int(m.group(1)),
                            read_rounds(h5), read_eval_split(h5)))
    if not runs:
        raise UserError(f"{out}: no complete runs found. Allowed: the --out folder of "
                        "`fleetsim compare`, holding <scenario>/<policy>/<overrides>/"
                        "seed-<k>/run.h5.")
    return runs


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
    method: str  # "bca", "percentile" or "none"


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean and bootstrap CI (BCa, :func:`scipy.stats.bootstrap`) of the finite values.

    With fewer than 2 values or identical values, BCa is undefined: the interval is then
    the percentile interval, which collapses to the mean. If BCa fails on real spread
    (tiny samples can make its acceleration term undefined), the percentile bootstrap
    is used.
    """
    x = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if x.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "none")
    mean = float(x.mean())
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
        policies = sorted({r.policy for r in in_setting},
                          key=lambda p: (p != base, natural_key(p)))
        rows = [_summary_of([r for r in in_setting if r.policy == p], tgt) for p in policies]
        base_runs = [r for r in in_setting if r.policy == base]
        out += [_with_speedup(s, base_runs, [r for r in in_setting if r.policy == s.policy],
                              tgt, s.policy == base) for s in rows]
    return out


def _summary_of(runs: Sequence[RunData], target: float) -> Summary:
    runs = sorted(runs, key=lambda r: r.seed)
    times = [time_to_target(r, target) for r in runs]
    finals = [final_accuracy(r) for r in runs]
    selected = sum(float(r.rounds["selected"].sum()) for r in runs)
    completed = sum(float(r.rounds["completed"].sum()) for r in runs)
    return Summary(
        scenario=runs[0].scenario, overrides=runs[0].overrides, policy=runs[0].policy,
        seeds=tuple(r.seed for r in runs), target=target,
        never_reached=tuple(r.seed for r, t in zip(runs, times) if math.isnan(t)),
        time_s=mean_ci(times), speedup=math.nan,
        final=mean_ci(finals), best=mean_ci([best_accuracy(r) for r in runs]),
        rounds=float(np.mean([len(r.rounds["round"]) for r in runs])),
        in_time_share=completed / selected if selected else math.nan,
        final_range=value_range(finals),
        eval_split="/".join(sorted({r.eval_split for r in runs})))


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
            _num(s.final_range[1]), s.eval_split])
    return buf.getvalue()


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
    return f"{e.mean:.3f} [{e.lo:.3f}, {e.hi:.3f}]"


def _time(s: Summary, scale: float) -> str:
    e = s.time_s
    if e.n == 0:
        return "never"
    if e.n == 1:
        return f"{_g(e.mean / scale)} (1 seed)"
    return f"{_g(e.mean / scale)} [{_g(e.lo / scale)}, {_g(e.hi / scale)}]"


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


def _cells(s: Summary, scale: float) -> list[str]:
    return [s.policy, str(len(s.seeds)), _time(s, scale), f"{s.reached}/{len(s.seeds)}",
            _speedup(s, _g, _BOUND_MD, "–"), _acc(s.final), _range(s, "–"), _acc(s.best),
            _g(s.rounds), "–" if math.isnan(s.in_time_share) else f"{s.in_time_share:.1%}"]


def report_md(out: Path, rows: Sequence[Summary], target: float | None,
              baseline: str | None, n_failed: int) -> str:
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
    head = ["Policy", "Seeds", f"Time to target ({unit}) [95% CI]", "Reached",
            f"Speedup vs {baseline or '–'}", "Final accuracy [95% CI]",
            "Final accuracy, min–max", "Best accuracy [95% CI]", "Rounds", "In time"]
    for setting in _settings(rows):
        block = [s for s in rows if (s.scenario, s.overrides) == setting]
        splits = "/".join(dict.fromkeys(s.eval_split for s in block))
        lines += [f"## {setting[0]} — {setting[1]}", "",
                  f"Target accuracy {block[0].target:.4g}; accuracy measured on the "
                  f"{splits} split.", "",
                  "| " + " | ".join(head) + " |",
                  "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(s, scale)) + " |"
                  for s in block]
        lines.append("")
    lines += ["## Figures", "", "![accuracy versus simulated time](accuracy_vs_time.png)", ""]
    if baseline:
        lines += [f"![speed-up versus {baseline}](speedup.png)", ""]
    lines += [
        "![round durations](round_durations.png)", "", "![kept share](kept_share.png)", "",
        "## Method", "",
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
        "is undefined (identical values); one seed has no interval (marked *1 seed*).",
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


def table_tex(rows: Sequence[Summary], baseline: str | None) -> str:
    unit, scale = time_unit(rows)

    def ci(e: Estimate, fmt: Callable[[float], str]) -> str:
        if e.n == 0:
            return "--"
        if e.n == 1:
            return f"{fmt(e.mean)} {{\\scriptsize(1 seed)}}"
        return f"{fmt(e.mean)} {{\\scriptsize[{fmt(e.lo)}, {fmt(e.hi)}]}}"

    def acc(x: float) -> str:
        return f"{x:.3f}"

    def tim(x: float) -> str:
        return _g(x / scale)

    head = ["Scenario", "Overrides", "Policy", "Target",
            f"Time to target ({unit})", "Reached",
            "Speedup" + (f" vs {tex_escape(baseline)}" if baseline else ""),
            "Final acc.", "Final min--max", "Best acc.", "Rounds", "In time"]
    lines = ["% fleetsim report; needs \\usepackage{booktabs}. Intervals: 95% bootstrap "
             "over seeds; min--max: range of the final accuracy over seeds; $\\geq$/$\\leq$: "
             "a speed-up bound (some seeds never reached the target).",
             "\\begin{tabular}{lllrrrrrrrrr}", "\\toprule",
             " & ".join(head) + " \\\\", "\\midrule"]
    for i, setting in enumerate(_settings(rows)):
        if i:
            lines.append("\\midrule")
        for j, s in enumerate(s for s in rows if (s.scenario, s.overrides) == setting):
            lines.append(" & ".join([
                tex_escape(s.scenario) if j == 0 else "",
                tex_escape(s.overrides) if j == 0 else "",
                tex_escape(s.policy), f"{s.target:.4g}" if j == 0 else "",
                ci(s.time_s, tim) if s.time_s.n else "never",
                f"{s.reached}/{len(s.seeds)}",
                _speedup(s, lambda x: f"{x:.2f}", _BOUND_TEX, "--"),
                ci(s.final, acc), _range(s, "--"), ci(s.best, acc), _g(s.rounds),
                "--" if math.isnan(s.in_time_share) else f"{100 * s.in_time_share:.1f}\\%",
            ]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)


def _settings(rows: Sequence[Summary]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((s.scenario, s.overrides) for s in rows))


# ----------------------------------------------------------------------------- entry


def write_report(out: Path, target: float | None = None, baseline: str | None = None
                 ) -> list[Path]:
    """Write ``summary.csv``, ``report.md``, ``table.tex`` and the figures into ``out``;
    returns their paths."""
    if not out.is_dir():
        raise UserError(f"{out}: the folder does not exist. Allowed: the --out folder of "
                        "`fleetsim compare`.")
    runs = load_runs(out)
    rows = summarise(runs, target, baseline)
    base = resolve_baseline(baseline, [r.policy for r in runs])
    failed = out / FAILURES_FILE
    n_failed = 0
    if failed.is_file():
        with failed.open(newline="") as f:
            n_failed = sum(1 for _ in csv.DictReader(f))
    names = ["summary.csv", "report.md", "table.tex", "accuracy_vs_time.png",
             "round_durations.png", "kept_share.png"] + (["speedup.png"] if base else [])
    paths = {name: out / name for name in names}
    atomic_write_bytes(paths["summary.csv"], summary_csv(rows).encode())
    atomic_write_bytes(paths["report.md"],
                       report_md(out, rows, target, base, n_failed).encode())
    atomic_write_bytes(paths["table.tex"], table_tex(rows, base).encode())
    save(figure_accuracy_vs_time(runs, rows), paths["accuracy_vs_time.png"])
    save(figure_distributions(runs, rows, lambda r: r.rounds["t_end_s"] - r.rounds["t_start_s"],
                              "round duration (simulated s)"), paths["round_durations.png"])
    save(figure_distributions(runs, rows, lambda r: r.rounds["mean_kept_share"],
                              "mean kept share per round"), paths["kept_share.png"])
    if base:
        save(figure_speedup(rows, base), paths["speedup.png"])
    else:  # a speed-up figure of an earlier report with a baseline would be stale
        (out / "speedup.png").unlink(missing_ok=True)
    return list(paths.values())
