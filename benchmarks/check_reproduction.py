"""Check (or rewrite) the result tables of docs/reproduction.md against a summary.csv.

The tables in the document are generated from the ``summary.csv`` that ``fleetsim
report`` wrote for the study, so the numbers in the text are the ones the commands
printed:

    python benchmarks/check_reproduction.py                       # check the committed copy
    python benchmarks/check_reproduction.py --summary DIR/summary.csv --write   # update
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
POLICY_ORDER = ("distreal", "uniform-adaptive", "distreal-static", "fedavg",
                "fedavg+stragglers=wait", "fedprox", "fednova", "federated_dropout", "heterofl",
                "fjord", "fedrolex")


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
    for s in settings:
        sub = {r["policy"]: r for r in rows if r["overrides"] == s}
        first = next(iter(sub.values()))
        split = f", {first['eval_split']} split" if first.get("eval_split") else ""
        out += [f"**{s}** (target accuracy {first['target_accuracy']}{split})", "",
                "| policy | time to target, min [95% CI] | reached | speedup vs fedavg | "
                "final accuracy [95% CI] | " + ("final accuracy, min–max over seeds | "
                                                if ranged else "") + "in time |",
                "|---|---:|---:|---:|---:|" + ("---:|" if ranged else "") + "---:|"]
        for p in sorted(sub, key=_order):
            r = sub[p]
            sp = _num(r, "speedup")
            mark = BOUND[r.get("speedup_bound", "")]
            out.append(f"| {p} | {_minutes(r)} | {r['reached']}/{len(r['seeds'].split())} | "
                       f"{'–' if math.isnan(sp) else f'{mark}{sp:.2f}'} | "
                       f"{_acc(r, 'final_accuracy')} | "
                       + (f"{_range(r)} | " if ranged else "")
                       + f"{100 * _num(r, 'in_time_share'):.1f}% |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def current_block(doc: str) -> str:
    return doc.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--summary", type=Path, default=SUMMARY)
    ap.add_argument("--write", action="store_true", help="rewrite the tables in the document")
    args = ap.parse_args()
    want = tables(args.summary)
    doc = DOC.read_text()
    if args.write:
        head, rest = doc.split(BEGIN, 1)
        DOC.write_text(f"{head}{BEGIN}\n{want}{END}{rest.split(END, 1)[1]}")
        print(f"rewrote the tables in {DOC} from {args.summary}")
        return 0
    if current_block(doc) != want:
        print(f"{DOC}: the tables differ from {args.summary}; run with --write", file=sys.stderr)
        return 1
    print(f"{DOC}: tables match {args.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
