"""Check (or rewrite) the result tables of docs/reproduction.md against a summary.csv.

The tables in the document are generated from the ``summary.csv`` that ``fleetsim
report`` wrote for the study, so the numbers in the text are the ones the commands
printed:

    python benchmarks/check_reproduction.py                       # check the committed copy
    python benchmarks/check_reproduction.py --summary DIR/summary.csv --write   # update
    python benchmarks/check_reproduction.py --summary runs/paper/summary.csv \
        --ablation runs/paper-bn/summary.csv --write     # the study and its bn ablation

The sweep's table (between ``<!-- choice:begin -->`` and ``<!-- choice:end -->``) is
``docs/reproduction/lr_choice.csv``, the ``choice.csv`` of ``fleetsim choose``.

A summary written by a report that compares at equal simulated time (``common_time_s``
and ``bn_stats`` columns) gets two more columns: each method's batch-norm mode (and
whether it is the method's default) and its accuracy at the common time T.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reproduction.md"
SUMMARY = REPO / "docs" / "reproduction" / "summary.csv"
BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"
ABL_BEGIN, ABL_END = "<!-- ablation:begin -->", "<!-- ablation:end -->"
ABLATION = REPO / "docs" / "reproduction" / "ablation_summary.csv"
CH_BEGIN, CH_END = "<!-- choice:begin -->", "<!-- choice:end -->"
CHOICE = REPO / "docs" / "reproduction" / "lr_choice.csv"
BN_MODES = ("running", "batch", "static")
POLICY_ORDER = ("distreal", "distreal+anchor_full=true", "uniform-adaptive",
                "distreal-static", "fedavg", "fedavg+stragglers=wait", "fedprox", "fednova",
                "federated_dropout", "heterofl", "fjord", "fedrolex")


def _num(row: dict[str, str], key: str) -> float:
    v = row.get(key, "")
    return float(v) if v not in ("", "nan") else math.nan


def _minutes(row: dict[str, str]) -> str:
    t = _num(row, "time_to_target_s")
    if math.isnan(t):
        return "never"
    if row.get("reached") == "1" and len(row["seeds"].split()) > 1:
        return f"{t / 60:.1f} (1 seed)"  # one value has no interval: [x, x] would mislead
    lo, hi = _num(row, "time_to_target_s_lo"), _num(row, "time_to_target_s_hi")
    return f"{t / 60:.1f} [{lo / 60:.1f}, {hi / 60:.1f}]"


def _acc(row: dict[str, str], key: str) -> str:
    return f"{_num(row, key):.3f} [{_num(row, key + '_lo'):.3f}, {_num(row, key + '_hi'):.3f}]"


def _range(row: dict[str, str]) -> str:
    lo, hi = _num(row, "final_accuracy_min"), _num(row, "final_accuracy_max")
    return "–" if math.isnan(lo) else f"{lo:.3f}–{hi:.3f}"


def _order(label: str) -> int:
    """Position of a policy label in the tables; ``fedavg@lr=0.1`` (the policy at its
    tuned learning rate) sorts as ``fedavg``."""
    name = label.partition("@")[0]
    return POLICY_ORDER.index(name) if name in POLICY_ORDER else len(POLICY_ORDER)


BOUND = {"": "", ">=": "≥", "<=": "≤"}  # a speed-up over seeds that did not all reach it


def tables(summary: Path) -> str:
    """The Markdown tables, one per setting of the sweep."""
    with summary.open() as f:
        rows = list(csv.DictReader(f))
    out: list[str] = []
    settings = sorted({r["overrides"] for r in rows},
                      key=lambda s: float(s.rsplit("=", 1)[-1]) if "=" in s else 0.0)
    # summaries written before fleetsim report gave the range over seeds have no such
    # column: their tables keep the columns they were published with
    ranged = bool(rows) and "final_accuracy_min" in rows[0]
    timed = bool(rows) and "accuracy_at_common_time" in rows[0]
    for s in settings:
        sub = {r["policy"]: r for r in rows if r["overrides"] == s}
        first = next(iter(sub.values()))
        split = f", {first['eval_split']} split" if first.get("eval_split") else ""
        at = (f", compared at T = {_num(first, 'common_time_s') / 60:.1f} min "
              f"({first['common_time_rule']})") if timed else ""
        out += [f"**{s}** (target accuracy {first['target_accuracy']}{split}{at})", "",
                "| policy | " + ("batch norm | " if timed else "") +
                "time to target, min [95% CI] | reached | speedup vs fedavg | "
                + ("accuracy at T [95% CI] | " if timed else "") +
                "final accuracy [95% CI] | " + ("final accuracy, min–max over seeds | "
                                                if ranged else "") + "in time |",
                "|---|" + ("---|" if timed else "") + "---:|---:|---:|"
                + ("---:|" if timed else "") + "---:|" + ("---:|" if ranged else "")
                + "---:|"]
        for p in sorted(sub, key=_order):
            r = sub[p]
            sp = _num(r, "speedup")
            mark = BOUND[r.get("speedup_bound", "")]
            bn = (f"{r['bn_stats'] or '–'}"
                  + (f" ({r['bn_stats_source']})" if r.get("bn_stats_source") else "") + " | "
                  if timed else "")
            out.append(f"| {p} | {bn}{_minutes(r)} | {r['reached']}/{len(r['seeds'].split())} | "
                       f"{'–' if math.isnan(sp) else f'{mark}{sp:.2f}'} | "
                       + (f"{_acc(r, 'accuracy_at_common_time')} | " if timed else "")
                       + f"{_acc(r, 'final_accuracy')} | "
                       + (f"{_range(r)} | " if ranged else "")
                       + f"{100 * _num(r, 'in_time_share'):.1f}% |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _is_default(mode: str, source: str) -> bool:
    """Whether ``mode`` is the method's own batch-norm mode, from the report's source:
    ``method default`` (this run's mode is the method's), ``method default: X`` (X is);
    ``scenario`` / ``model default`` (the method has none: the model's, ``running``)."""
    if source.startswith("method default: "):
        return mode == source.removeprefix("method default: ")
    if source == "method default":
        return True
    return mode == "running"  # the built-in models' bn_stats default


def ablation_table(summary: Path) -> str:
    """The batch-norm ablation: one row per method, one column per ``bn_stats`` mode,
    each cell the accuracy at the common time T [95% CI] and the seeds that reached the
    target (from the ablation batch's summary.csv, whose setting varies the mode)."""
    with summary.open() as f:
        rows = list(csv.DictReader(f))
    cell: dict[tuple[str, str], dict[str, str]] = {}
    for r in rows:
        mode = r["overrides"].rsplit("bn_stats=", 1)[-1].split("+", 1)[0]
        cell[(r["policy"], mode)] = r
    policies = sorted({p for p, _ in cell}, key=_order)
    first = rows[0]
    out = [f"Accuracy at T = {_num(first, 'common_time_s') / 60:.1f} min of simulated time "
           f"[95% CI over {len(first['seeds'].split())} seeds] and seeds that reached "
           f"{first['target_accuracy']}; **bold**: the method's own default.", "",
           "| method | " + " | ".join(f"`{m}`" for m in BN_MODES) + " |",
           "|---|" + "---:|" * len(BN_MODES)]
    for p in policies:
        cells = []
        for m in BN_MODES:
            r = cell.get((p, m))
            if r is None:
                cells.append("–")
                continue
            text = (f"{_acc(r, 'accuracy_at_common_time')}, "
                    f"{r['reached']}/{len(r['seeds'].split())}")
            cells.append(f"**{text}**" if _is_default(m, r.get("bn_stats_source", ""))
                         else text)
        out.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def choice_table(choice: Path) -> str:
    """The sweep's validation scores (``fleetsim choose``'s choice.csv, keyed by learning
    rate and batch-norm mode): one row per method, **bold** the chosen cell, and the
    method's own batch-norm default."""
    with choice.open() as f:
        rows = list(csv.DictReader(f))
    lr_key, bn_key = "training.optimizer.lr", "model.options.bn_stats"
    lrs = sorted({r[lr_key] for r in rows}, key=float)
    score: dict[tuple[str, str, str], dict[str, str]] = {}
    for r in rows:
        score[(r["policy"], r[lr_key], r[bn_key].strip('"'))] = r
    policies = sorted({r["policy"] for r in rows}, key=_order)
    cols = [(lr, m) for lr in lrs for m in BN_MODES]
    out = ["| method | " + " | ".join(f"{lr} `{m}`" for lr, m in cols)
           + " | chosen | own default |", "|---|" + "---:|" * len(cols) + "---|---|"]
    for p in policies:
        cells, chosen, own = [], "", "none (the model's: running)"
        for lr, m in cols:
            r = score.get((p, lr, m))
            if r is None:
                cells.append("–")
                continue
            text = f"{float(r['score']):.3f}"
            if r["chosen"] == "1":
                text, chosen = f"**{text}**", f"{lr}, `{m}`"
            cells.append(text)
            if r.get("method_default"):
                own = r["method_default"].rsplit("=", 1)[-1].strip('"')
        out.append(f"| {p} | " + " | ".join(cells) + f" | {chosen} | {own} |")
    return "\n".join(out) + "\n"


def current_block(doc: str, begin: str = BEGIN, end: str = END) -> str:
    return doc.split(begin, 1)[1].split(end, 1)[0].strip("\n") + "\n"


def _replace(doc: str, begin: str, end: str, text: str) -> str:
    head, rest = doc.split(begin, 1)
    return f"{head}{begin}\n{text}{end}{rest.split(end, 1)[1]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--summary", type=Path, default=SUMMARY)
    ap.add_argument("--ablation", type=Path, default=None,
                    help="the batch-norm ablation's summary.csv (default: the committed "
                    "copy, if any)")
    ap.add_argument("--write", action="store_true", help="rewrite the tables in the document")
    args = ap.parse_args()
    want = tables(args.summary)
    ablation = args.ablation or (ABLATION if ABLATION.is_file() else None)
    doc = DOC.read_text()
    if args.write:
        doc = _replace(doc, BEGIN, END, want)
        if CH_BEGIN in doc and CHOICE.is_file():
            doc = _replace(doc, CH_BEGIN, CH_END, choice_table(CHOICE))
        if ablation is not None:
            if ABL_BEGIN not in doc:
                doc += f"\n{ABL_BEGIN}\n{ABL_END}\n"
            doc = _replace(doc, ABL_BEGIN, ABL_END, ablation_table(ablation))
        DOC.write_text(doc)
        print(f"rewrote the tables in {DOC} from {args.summary}"
              + (f" and {ablation}" if ablation else ""))
        return 0
    if current_block(doc) != want:
        print(f"{DOC}: the tables differ from {args.summary}; run with --write", file=sys.stderr)
        return 1
    if CH_BEGIN in doc and CHOICE.is_file() and current_block(
            doc, CH_BEGIN, CH_END) != choice_table(CHOICE):
        print(f"{DOC}: the choice table differs from {CHOICE}; run with --write",
              file=sys.stderr)
        return 1
    if ablation is not None and (ABL_BEGIN not in doc or current_block(
            doc, ABL_BEGIN, ABL_END) != ablation_table(ablation)):
        print(f"{DOC}: the ablation table differs from {ablation}; run with --write",
              file=sys.stderr)
        return 1
    print(f"{DOC}: tables match {args.summary}" + (f" and {ablation}" if ablation else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
