"""``fleetsim compare`` and ``fleetsim report``: batch runs and their tables and figures."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

COMPARE_EPILOG = """Policies whose rounds differ in length (sub-models finish early) end at
different simulated times after a fixed number of rounds; compare them at equal simulated
time with --set training.time_budget_s=SECONDS (and --set training.rounds=null for no
round cap).

examples:
  fleetsim compare scenarios/tiny.yaml --policies fedavg,fedavg:stragglers=wait \\
      --seeds 0-4 --out runs/batch --jobs 2
  fleetsim compare a.yaml b.yaml --policies fedavg --seeds 0-2 \\
      --set training.clients_per_round=5,10 --set training.rounds=20 --out runs/grid
  fleetsim compare scenarios/tiny.yaml --seeds 0-9 --backend ray --address auto --out runs/r

Results go to OUT/<scenario>/<policy>/<overrides>/seed-<k>/ (run.h5, rounds.csv, ...).
Complete cells are skipped, so running the same command again resumes a stopped batch.
Failed cells are listed in OUT/failures.csv; the exit status is then 1.
"""

REPORT_EPILOG = """examples:
  fleetsim report runs/batch
  fleetsim report runs/batch --target-accuracy 0.8 --baseline fedavg
  fleetsim report runs/batch --style paper --tex-columns policy,bn,acc_at_t,time,speedup

Writes DIR/summary.csv, DIR/per_class.csv, DIR/report.md, DIR/table.tex and the figures
accuracy_vs_time, accuracy_vs_rounds, round_durations, kept_share, per_class and, with a
baseline, speedup, each as .png, .pdf and .svg.

Runs are compared at a common simulated time T: their common training.time_budget_s, or
the earliest end among them. For a policy comparison, give every run the same budget:
  fleetsim compare S.yaml --policies fedavg,fjord --set training.time_budget_s=600 \\
      --set training.rounds=null --seeds 0-4 --out runs/fair
"""


def add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="run scenarios x policies x seeds x --set values (resumable)",
        description="Run a grid of scenarios, policies, seeds and --set values, one run per "
        "cell, on this machine (--jobs processes) or on Ray. Results do not depend on "
        "--jobs or the backend.",
        epilog=COMPARE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="+", metavar="SCENARIO.yaml", help="scenario files")
    p.add_argument("--policies", metavar="P1,P2,...",
                   help="policies, each name or name:key=value;key2=value (quote it for the "
                   "shell), e.g. fedavg,fedavg:stragglers=wait; a dotted key is a scenario key "
                   "for that policy only, e.g. fedprox:training.optimizer.lr=0.1 (default: "
                   "each scenario's own)")
    p.add_argument("--seeds", default="0", help="seeds: 0-4, 0,3,7 or 0-2,9 (default 0)")
    p.add_argument("--set", dest="sets", action="append", default=[],
                   metavar="KEY=V1,V2", help="override a scenario key; several values make "
                   "a grid axis, one value applies to every cell (repeatable)")
    p.add_argument("--out", required=True, help="batch folder")
    p.add_argument("--jobs", type=int, default=1,
                   help="cells at once: local processes or local Ray CPUs (default 1)")
    p.add_argument("--backend", choices=("local", "ray"), default=None,
                   help="local processes (default) or Ray tasks (pip install .[ray])")
    p.add_argument("--address", help="Ray cluster address, e.g. auto or HEAD:6379 (implies "
                   "--backend ray; default: start a local Ray with --jobs CPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compare)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_compare(args: argparse.Namespace) -> int:
    from fleetsim.batch import expand_grid, run_batch
    from fleetsim.errors import UserError
    from fleetsim.paths import check_output_dir

    backend = args.backend or ("ray" if args.address else "local")
    if args.address and backend != "ray":
        raise UserError("command line: --address is for the Ray backend. Allowed: "
                        "--backend ray --address ADDR, or no --address.")
    check_output_dir(args.out, "--out")  # before the batch, not after its first cell
    grid = expand_grid(args.scenarios, args.policies, args.seeds, args.sets)
    # SIGTERM (a batch scheduler, `kill`) stops the running cells like Ctrl-C does
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        s = run_batch(grid, args.out, args.jobs, backend, args.address,
                      progress=not args.quiet)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"{s.cells} runs: {s.ran} ran, {s.skipped} already complete, {s.failed} failed; "
          f"results in {s.out}/")
    if s.ran_on:  # on a Ray cluster: which node ran which cell
        nodes: dict[str, list[str]] = {}
        for cell, node in s.ran_on:
            nodes.setdefault(node, []).append(cell)
        for node, cells in sorted(nodes.items()):
            print(f"ray node {node}: {len(cells)} runs: {', '.join(sorted(cells))}")
    _equal_time_notes(Path(s.out))
    if s.failed:
        print(f"failed runs are listed in {s.out / 'failures.csv'}", file=sys.stderr)
    return 1 if s.failed else 0


def _equal_time_notes(out: Path) -> None:
    """Say so when the batch's policies ended at simulated times more than 10% apart."""
    import textwrap

    from fleetsim.errors import UserError
    from fleetsim.report import equal_time_notes, load_runs

    try:
        runs = load_runs(out)
    except UserError:  # no complete run: nothing to compare
        return
    for note in equal_time_notes(runs):
        print("note: " + textwrap.fill(note, width=100, subsequent_indent="  "),
              file=sys.stderr)


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="tables and figures of a compare folder",
        description="Summarise the complete runs of a compare folder: time to a target "
        "accuracy (mean and 95% bootstrap CI over seeds; the min-max range with fewer than "
        "3 seeds), speedup over a baseline policy, accuracy at a common simulated time, "
        "final and best accuracy, each run's batch-norm mode, rounds, share of selected "
        "devices whose work arrived in time, bytes and wasted MACs, results per device "
        "class; as CSV, Markdown and LaTeX, with figures (PNG, PDF, SVG).",
        epilog=REPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="the --out folder of fleetsim compare")
    p.add_argument("--target-accuracy", type=float, metavar="A",
                   help="test accuracy to reach, in (0, 1] (default: per scenario and "
                   "overrides, 90%% of the best policy's mean final accuracy, rounded down "
                   "to 0.01)")
    p.add_argument("--baseline", metavar="POLICY",
                   help="policy folder name or spec to compute speedups against "
                   "(default: fedavg when present)")
    p.add_argument("--style", choices=("screen", "paper"), default="screen",
                   help="figures side by side for a screen (default), or paper: one "
                   "column 3.3 in wide with 8 pt fonts")
    p.add_argument("--formats", default="png,pdf,svg", metavar="F1,F2",
                   help="figure file types, from png, pdf, svg (default: all three)")
    p.add_argument("--tex-columns", metavar="C1,C2,...",
                   help="columns of table.tex, from: scenario, overrides, policy, bn, "
                   "target, time, reached, speedup, final, range, best, rounds, in_time, "
                   "end, acc_at_t, mb, wasted (default: scenario,overrides,policy,target,"
                   "time,reached,speedup,final,range,best,rounds,in_time)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    import math

    from fleetsim.errors import UserError
    from fleetsim.paths import check_output_dir
    from fleetsim.report import parse_tex_columns, write_report

    t = args.target_accuracy
    if t is not None and not (math.isfinite(t) and 0 < t <= 1):
        raise UserError(f"command line: at '--target-accuracy': {t!r} is not allowed. "
                        "Allowed: a test accuracy in (0, 1], e.g. 0.9.")
    # the report is written into the batch folder: it must be one, and writable
    check_output_dir(args.dir, "DIR", must_exist=True,
                     allowed="the --out folder of `fleetsim compare`, writable")
    columns = parse_tex_columns(args.tex_columns)
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    written = write_report(Path(args.dir), args.target_accuracy, args.baseline, args.style,
                           columns, formats)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


CHOOSE_EPILOG = """Repeat --key to choose several keys jointly, e.g. each method's learning rate and
batch-norm mode: --key training.optimizer.lr --key model.options.bn_stats.

example (a learning-rate sweep, then the study at the chosen rates):
  fleetsim compare scenarios/paper/mnist.yaml --policies fedavg,fedprox --seeds 0 \\
      --set training.optimizer.lr=0.02,0.05,0.1 --set eval.split=validation \\
      --set data.validation_fraction=0.1 --out runs/lr
  fleetsim choose runs/lr --key training.optimizer.lr
  fleetsim compare scenarios/paper/mnist.yaml --policies "$(cat runs/lr/policies.txt)" ...

Writes DIR/choice.csv (every value's score per policy) and DIR/policies.txt (the
--policies argument running each policy at its chosen value).
"""


def add_choose(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "choose", help="pick a swept setting per policy (e.g. each method's learning rate)",
        description="Pick, per policy, the value of a swept scenario key with the best "
        "validation accuracy: each run scores the mean of its last --last evaluations, a "
        "value the mean over its runs. The runs must have evaluated on the validation split "
        "(eval.split: validation), so the choice never sees the test data.",
        epilog=CHOOSE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="the --out folder of the sweep's fleetsim compare")
    p.add_argument("--key", required=True, action="append", help="the swept scenario "
                   "key, e.g. training.optimizer.lr; repeat it to choose several keys "
                   "jointly, e.g. --key training.optimizer.lr --key model.options.bn_stats")
    p.add_argument("--last", type=int, default=3, help="evaluations averaged per run "
                   "(default 3)")
    p.add_argument("--allow-test", action="store_true", help="accept runs evaluated on the "
                   "test split (tuning on the test data; not for a study)")
    p.set_defaults(func=cmd_choose)


def cmd_choose(args: argparse.Namespace) -> int:
    from fleetsim.choose import choice_csv, choose, policies_arg
    from fleetsim.paths import check_output_dir
    from fleetsim.results import atomic_write_bytes

    check_output_dir(args.dir, "DIR", must_exist=True,
                     allowed="the --out folder of `fleetsim compare`, writable")
    out = Path(args.dir)
    key = args.key[0] if len(args.key) == 1 else args.key
    choices = choose(out, key, args.last, args.allow_test)
    width = max(len(c.policy) for c in choices)
    keys = list(args.key)
    for c in choices:
        tried = "  ".join(f"{v}: {s:.4f}" for v, s, _ in c.scores)
        vals = [c.value] if len(keys) == 1 else list(c.value)
        chosen = ", ".join(f"{k}={v}" for k, v in zip(keys, vals))
        md = "".join(f" [method default {k.rsplit('.', 1)[-1]}={v}]"
                     for k, v in c.method_defaults)
        print(f"{c.policy:<{width}}  chosen {chosen}{md}   ({tried})")
    atomic_write_bytes(out / "choice.csv", choice_csv(choices, key).encode())
    arg = policies_arg(choices)
    if arg is None:
        print("a policy label could not be turned back into a --policies spec: "
              "see choice.csv", file=sys.stderr)
    else:
        atomic_write_bytes(out / "policies.txt", (arg + "\n").encode())
        print(f"--policies \"{arg}\"\nwrote {out / 'choice.csv'}, {out / 'policies.txt'}")
    return 0
