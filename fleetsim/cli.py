"""The ``fleetsim`` command line.

Every user mistake becomes a one-paragraph message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from fleetsim.errors import UserError
from fleetsim.paths import check_output_dir, check_output_file

EPILOG = """examples:
  fleetsim run scenarios/quickstart.yaml --out runs/quickstart
  fleetsim run scenarios/quickstart.yaml --set training.rounds=5 --set policy.name=fedavg
  fleetsim traces generate --kind markov --devices 1000 --horizon-s 604800 --seed 1 -o t.h5
  fleetsim traces show t.h5
  fleetsim schema            # every scenario option with its default
"""


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run one scenario",
                       description="Run one scenario with one seed and write run.h5, "
                       "rounds.csv and accuracy.png to --out.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", help="scenario YAML file")
    p.add_argument("--out", help="output folder (default runs/<name>/seed-<seed>)")
    p.add_argument("--seed", type=int, help="run seed (overrides the scenario's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key, e.g. training.rounds=5 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--resume", action="store_true", help="go on from the checkpoint in --out "
                   "(output.checkpoint_every_rounds) if there is one; refused if the scenario "
                   "or the code changed")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    _start_fork_server(args)
    from fleetsim import checkpoint
    from fleetsim.build import build, load_scenario, trackers
    from fleetsim.results import write_run

    overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
    sc = load_scenario(args.scenario, overrides)
    out = Path(args.out) if args.out else Path("runs") / sc.name / f"seed-{sc.seed}"
    check_output_dir(out, "--out")  # before the run, not after it
    resumed = checkpoint.load(out, sc) if args.resume else None  # checked before building
    if resumed is not None and not args.quiet:
        print(f"resuming {sc.name} from {checkpoint.resumed_at(resumed)}", flush=True)
    t0 = time.perf_counter()
    built = build(sc, args.scenario, progress=not args.quiet, callbacks=trackers(sc, out))
    try:
        checkpoint.attach(built.engine, sc, out, resumed)
        log = built.engine.run()
    finally:
        if built.backend is not None:
            built.backend.close()
    write_run(out, sc, log, {"command": " ".join(sys.argv)}, built.facts)
    checkpoint.remove(out)  # the run is complete
    if not args.quiet:
        _summary(sc, log, out, time.perf_counter() - t0, built.facts)
    else:
        _print_warnings(log, built.facts)
    return 0


def _print_warnings(log, facts) -> None:  # type: ignore[no-untyped-def]
    from fleetsim.guardrails import run_warnings

    for w in run_warnings(log.rounds, facts):
        print("warning: " + textwrap.fill(w, width=100, subsequent_indent="  "),
              file=sys.stderr)


def _start_fork_server(args: argparse.Namespace) -> None:
    """Start the pool's fork server before torch is imported here, if the run uses it.

    Its imports (~1.5 s) then run beside this process's own instead of after them; the
    scenario is only peeked at (no torch needed): :func:`load_scenario` validates it.
    """
    from fleetsim import forkserver
    from fleetsim.scenario import read_scenario

    try:
        sc = read_scenario(args.scenario, list(args.overrides))
    except UserError:  # load_scenario reports it, properly, below
        return
    # timing-only runs build no backend: no workers to fork
    if sc.training.backend == "pool" and sc.training.mode != "timing":
        forkserver.start()


def _summary(sc, log, out: Path, wall_s: float, facts=None) -> None:  # type: ignore[no-untyped-def]
    import math

    rows = log.rounds
    accs = [r["accuracy"] for r in rows if not math.isnan(r["accuracy"])]
    sel = sum(r["selected"] for r in rows)
    comp = sum(r["completed"] for r in rows)
    sim_h = rows[-1]["t_end_s"] / 3600 if rows else 0.0
    print(f"{sc.name} (seed {sc.seed}, policy {sc.policy.name}): {len(rows)} rounds, "
          f"{sim_h:.2f} simulated hours, {wall_s:.1f} s wall")
    if accs:
        print(f"  test accuracy: final {accs[-1]:.4f}, best {max(accs):.4f}")
    if sel:
        print(f"  updates in time: {comp}/{sel} selected ({comp / sel:.1%})")
    if facts is not None and sc.training.mode == "full":
        lo, med, hi = facts.samples_stats()
        print(f"  training samples per device: min {lo}, median {med:g}, max {hi} "
              f"(batch size {facts.batch_size})")
    print(f"  wrote {out}/run.h5, rounds.csv" + (", accuracy.png" if sc.output.plot else ""))
    _print_warnings(log, facts)


def _add_dse(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dse", help="design-space exploration: the Pareto front of dropout vectors",
        description="Search per-group dropout vectors with NSGA-II for two objectives, cost "
        "per mini-batch (MACs) and a convergence proxy (excess validation loss over the full "
        "network after a short, fixed training budget from a common warm start on the same "
        "mini-batches, mean and spread over repeats; diverged vectors are infeasible), and "
        "write the Pareto front (HDF5) and a "
        "plot (PNG beside it). Settings come from the scenario's dse section.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  fleetsim dse scenarios/distreal-mnist.yaml --out fronts/mnist.h5")
    p.add_argument("scenario", help="scenario YAML file (its data, model and dse sections)")
    p.add_argument("--out", required=True, help="front file to write (.h5; a .png beside it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key, e.g. dse.generations=20")
    p.add_argument("--workers", type=int, help="processes evaluating candidates "
                   "(default dse.workers)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_dse)


def cmd_dse(args: argparse.Namespace) -> int:
    import numpy as np

    from fleetsim.build import load_scenario, run_dse
    from fleetsim.dse import cache_dir as dse_cache_dir
    from fleetsim.dse import useful, write_front

    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"dse.workers={args.workers}")
    sc = load_scenario(args.scenario, overrides)
    png = Path(args.out).with_suffix(".png")
    if png == Path(args.out):
        raise UserError(f"command line: at '--out': {args.out} ends in .png, the name of the "
                        "plot written beside the front, which would overwrite it. Allowed: a "
                        "front file such as fronts/mnist.h5.")
    check_output_file(args.out, "--out")
    check_output_file(png, "--out")  # the plot beside it
    check_output_dir(dse_cache_dir(sc.dse), "dse.cache_dir", source=args.scenario)
    t0 = time.perf_counter()
    front, evaluated = run_dse(sc, progress=not args.quiet)
    write_front(args.out, front, evaluated)
    full = front.meta["full_macs"]
    print(f"front of {len(front.macs)} non-dominated vectors out of {len(evaluated['macs'])} "
          f"evaluated, {time.perf_counter() - t0:.1f} s")
    diverged = int((~evaluated["feasible"]).sum())
    print(f"  proxy: {front.meta['proxy']}; {diverged} diverged (infeasible, not on the "
          "front); useful: proxy <= spread")
    names = ", ".join(g for g, _ in front.groups)
    print(f"  {'cost (share of full)':>22}  {'proxy':>8}  {'spread':>7}  useful  "
          f"vector ({names})")
    good = useful(front)
    assert front.spread is not None
    for i in np.argsort(front.macs, kind="stable"):
        v = ", ".join(f"{x:.1f}" for x in front.vectors[i])
        print(f"  {front.macs[i] / full:>22.3f}  {front.proxy[i]:>8.4f}  "
              f"{front.spread[i]:>7.4f}  {'yes' if good[i] else 'no':>6}  {v}")
    print(f"  wrote {args.out} and {Path(args.out).with_suffix('.png')}")
    return 0


def _add_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile", help="calibrate the cost model: measure step times on this host",
        description="Measure real single-threaded training-step times of a model on this host "
        "over a grid of dropout vectors and batch sizes, fit time_s = a * MACs + b, print R^2 "
        "and write a calibration file that scenarios use with costs.calibration: FILE. "
        "Vectorised kernels process channels in blocks (16 on AVX-512), so the fit is also "
        "tried with kept channels rounded up to blocks of 2 to 32 and keeps the block that "
        "explains the times best; the scenario's cost model then counts MACs the same way.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  fleetsim profile --model cnn4 --out calib/cnn4.json")
    p.add_argument("--model", required=True, help="model architecture (model.arch)")
    p.add_argument("--out", required=True, help="calibration file to write (JSON)")
    p.add_argument("--input-shape", default="1,28,28", help="C,H,W of one sample "
                   "(default 1,28,28: MNIST)")
    p.add_argument("--classes", type=int, default=10, help="number of classes")
    p.add_argument("--quick", action="store_true", help="a small grid (seconds)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="time steps by wall clock (default) or this thread's CPU time, which a "
                   "busy machine disturbs less")
    p.add_argument("--channel-block", type=int, default=None, metavar="B",
                   help="fit with kept channels rounded up to multiples of B only (1: exact "
                   "MACs); default: try 1, 2, 4, 8, 16, 32 and keep the best fit")
    p.set_defaults(func=cmd_profile)


def cmd_profile(args: argparse.Namespace) -> int:
    from fleetsim.calibration import run_profile
    from fleetsim.nn import MODELS, build_model

    MODELS.get(args.model, source="command line", key_path="--model")
    try:
        shape = tuple(int(x) for x in args.input_shape.split(","))
    except ValueError:
        raise UserError(f"command line: at '--input-shape': {args.input_shape!r} is not "
                        "allowed. Allowed: comma-separated integers C,H,W such as 1,28,28."
                        ) from None
    if min(shape, default=0) < 1:
        raise UserError(f"command line: at '--input-shape': {args.input_shape!r} is not "
                        "allowed. Allowed: positive integers C,H,W such as 1,28,28 (or one "
                        "integer, the length of a flat sample, for mlp).")
    if args.classes < 1:
        raise UserError(f"command line: at '--classes': {args.classes} is not allowed. "
                        "Allowed: an integer >= 1.")
    if args.channel_block is not None and args.channel_block < 1:
        raise UserError(f"command line: at '--channel-block': {args.channel_block} is not "
                        "allowed. Allowed: a positive integer (1 fits exact MACs).")
    check_output_file(args.out, "--out")
    try:
        build_model(args.model, shape, args.classes)  # the model must fit the input shape
    except UserError as exc:
        raise UserError(f"command line: at '--input-shape': {args.input_shape!r} does not fit "
                        f"--model {args.model} ({exc})") from None
    run_profile(args.model, args.out, shape, args.classes, quick=args.quick, clock=args.clock,
                channel_block=args.channel_block)
    return 0


def _add_schema(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schema", help="print every scenario option with its default",
                       description="Print the scenario schema: sections, keys, defaults, "
                       "meanings, and the registered components with their options.")
    p.add_argument("--markdown", action="store_true", help="as Markdown (docs/scenario.md)")
    p.set_defaults(func=cmd_schema)


def cmd_schema(args: argparse.Namespace) -> int:
    from fleetsim.schema_doc import schema_text

    print(schema_text(markdown=args.markdown))
    return 0


def _add_traces(sub: argparse._SubParsersAction) -> None:
    from fleetsim.cli_traces import add_traces

    add_traces(sub)


from fleetsim.cli_batch import add_choose, add_compare, add_report  # noqa: E402
from fleetsim.cli_model import add_model  # noqa: E402

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_run, add_compare, add_report, add_choose, _add_traces, _add_dse, _add_profile,
    add_model, _add_schema]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fleetsim",
        description="fleetsim: simulate federated learning on fleets of heterogeneous devices "
        "whose compute availability changes over time, with real PyTorch training of "
        "structured-dropout sub-networks.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        # paths and commands in the message stay whole: never broken inside a word or
        # at a hyphen, so they can be copied from the terminal
        print("error: " + textwrap.fill(str(exc), width=100, subsequent_indent="  ",
                                        break_long_words=False, break_on_hyphens=False),
              file=sys.stderr)
        return UserError.exit_status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``fleetsim`` command: :func:`main`, then a fast exit.

    Python's shutdown garbage-collects every object left, which with torch loaded costs
    ~0.5 s, a tenth of a short run's start-up; frozen objects are left out of those
    collections, and nothing is skipped otherwise (files close, atexit handlers run).
    Only here, not in :func:`main`, which tests call in one long process.
    """
    rc = main()
    gc.freeze()
    sys.exit(rc)


if __name__ == "__main__":
    entry()
