"""``fleetsim traces ...``: generate, import, record, inspect, plot, slice and merge traces."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from fleetsim.errors import UserError
from fleetsim.paths import check_output_file


class _Formatter(argparse.HelpFormatter):
    """Wraps one-paragraph descriptions; keeps texts with line breaks (examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


RAW = _Formatter

EPILOG = """examples:
  fleetsim traces generate --kind markov --devices 1000 --horizon-s 604800 -o week.h5
  fleetsim traces generate --kind diurnal --devices 500 --horizon-s 172800 \\
      --param 'phase_h={dist: uniform, low: -3, high: 3}' -o days.h5
  fleetsim traces import fedscale-behave client_behave_trace -o fedscale.h5
  fleetsim traces import fedscale-capacity client_device_capacity -o classes.yaml
  fleetsim traces import fedscale-bandwidth client_device_capacity -o bandwidth.csv
  fleetsim traces import csv my_traces.csv --period-s 86400 -o mine.h5
  fleetsim traces record --interval-s 1 --duration-s 600 -o host.h5
  fleetsim traces show week.h5
  fleetsim traces plot week.h5 -o week.png
  fleetsim traces slice week.h5 --devices 0:100 --start-s 0 --end-s 86400 -o day.h5
  fleetsim traces merge a.h5 b.h5 -o ab.h5
See docs/traces.md for the file format and every generator's model and parameters.
"""


def _add(sub: argparse._SubParsersAction, name: str, help_text: str, description: str,
         func: object, epilog: str | None = None) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=description, epilog=epilog,
                       formatter_class=RAW)
    if func is not None:
        p.set_defaults(func=func)
    return p


def add_traces(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("traces", help="generate, import, record, inspect and edit traces",
                       description="Availability traces: HDF5 files with per-device "
                       "piecewise-constant availability (0..1) and online (0/1) signals.",
                       epilog=EPILOG, formatter_class=RAW)
    tsub = p.add_subparsers(dest="traces_cmd", required=True, metavar="COMMAND")
    _add_generate(tsub)
    _add_import(tsub)
    r = _add(tsub, "record", "record this host's CPU availability into a trace",
             "Sample this host's CPU every --interval-s for --duration-s with psutil and "
             "write a one-device trace: availability = 1 - busy share of all CPUs over each "
             "interval, always online. The trace repeats with its duration. Provenance: "
             "host name, platform, CPU count, start time, interval.", cmd_traces_record)
    r.add_argument("--interval-s", metavar="S", type=float, default=1.0,
                   help="sample length in seconds (default 1)")
    r.add_argument("--duration-s", metavar="S", type=float, default=600.0,
                   help="recording length in seconds (default 600)")
    r.add_argument("-o", "--out", required=True, help="output .h5 file")
    r.add_argument("--quiet", action="store_true", help="no progress line")
    s = _add(tsub, "show", "print statistics of a trace file",
             "Print a trace file's size, period, availability percentiles, per-device mean "
             "availability, online share and provenance.", cmd_traces_show)
    s.add_argument("file", help="trace file (.h5)")
    pl = _add(tsub, "plot", "draw a trace file as a PNG",
              "Write a PNG: a heatmap of availability over one period for a random sample "
              "of devices (offline time grey), and the CDFs over devices of mean "
              "availability and of the share of time online.", cmd_traces_plot)
    pl.add_argument("file", help="trace file (.h5)")
    pl.add_argument("-o", "--out", required=True, help="output .png file")
    pl.add_argument("--devices", metavar="N", type=int, default=50, help="devices in the heatmap "
                    "(default 50)")
    pl.add_argument("--bins", metavar="N", type=int, default=400, help="time bins of the heatmap "
                    "(default 400)")
    pl.add_argument("--seed", metavar="N", type=int, default=0, help="seed of the device sample")
    sl = _add(tsub, "slice", "cut devices and/or a time window into a new file",
              "Copy devices START:STOP (Python range: STOP excluded) on the time window "
              "[--start-s, --end-s) into a new file. The window is shifted to start at 0; a "
              "periodic source gives a slice that repeats with the window's length (a "
              "window longer than the period unrolls it). Default: all devices, one period "
              "(or the horizon).", cmd_traces_slice)
    sl.add_argument("file", help="trace file (.h5)")
    sl.add_argument("--devices", help="START:STOP device range, e.g. 0:1000")
    sl.add_argument("--start-s", metavar="S", type=float,
                    help="window start in seconds (default 0)")
    sl.add_argument("--end-s", metavar="S", type=float,
                    help="window end in seconds (default: the period or horizon)")
    sl.add_argument("-o", "--out", required=True, help="output .h5 file")
    m = _add(tsub, "merge", "concatenate the devices of several files",
             "Write one file holding the devices of every input, in order. The inputs must "
             "have the same horizon and period (slice them first if not).", cmd_traces_merge)
    m.add_argument("files", nargs="+", help="trace files (.h5), at least two")
    m.add_argument("-o", "--out", required=True, help="output .h5 file")


# Written out rather than read from the registry: importing the trace package at parser
# build time would load torch (via fleetsim.rng) and slow every fleetsim command by seconds.
GENERATOR_NAMES = "constant | uniform | markov | diurnal | bursty (or a plugin's)"


def _add_generate(tsub: argparse._SubParsersAction) -> None:
    g = _add(tsub, "generate", "generate a trace file with a registered generator",
             "Generate traces, device by device from the seed (the same traces a scenario "
             "naming this generator makes lazily). Generators: "
             + GENERATOR_NAMES + ". Any numeric option may be a distribution "
             "spec drawn per device, e.g. --param 'level={dist: uniform, low: 0.2, high: 1}' "
             "(uniform, loguniform, normal, lognormal, choice). `fleetsim schema` lists "
             "every option with its default.", cmd_traces_generate,
             epilog="example:\n  fleetsim traces generate --kind bursty --devices 1000 "
             "--horizon-s 86400 \\\n      --param burst_rate_per_h=3 -o bursty.h5")
    g.add_argument("--kind", required=True, help="generator name: " + GENERATOR_NAMES)
    g.add_argument("--devices", metavar="N", type=int, required=True, help="number of devices")
    g.add_argument("--horizon-s", metavar="S", type=float, required=True,
                   help="time span; traces repeat with this period")
    g.add_argument("--seed", metavar="N", type=int, default=0, help="seed (default 0)")
    g.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="generator option, value in YAML (e.g. levels=[1,0.5,0.2]); repeatable")
    g.add_argument("--streams", choices=("device", "counter"), default="device",
                   help="random streams, as fleet.traces.streams: device (default) or "
                   "counter (many devices per numpy call; markov and constant with "
                   "plain-number options)")
    g.add_argument("-o", "--out", required=True, help="output .h5 file")


def _add_import(tsub: argparse._SubParsersAction) -> None:
    p = _add(tsub, "import", "convert FedScale files or a CSV",
             "Convert other formats. FedScale's files are Python pickles: unpickling runs "
             "code stored in the file, so import only files you trust.", None)
    isub = p.add_subparsers(dest="import_kind", required=True, metavar="FORMAT")
    b = _add(isub, "fedscale-behave", "FedScale client_behave_trace -> trace file",
             "FedScale's client_behave_trace (pickled dict: client id -> {'active': [start "
             "s], 'inactive': [end s], 'finish_time': period s, ...}) to a trace file: "
             "online on [active, inactive) modulo the client's own finish_time, as "
             "FedScale's is_active; each client's cycle repeats within the file's one "
             "period (exact where its finish_time divides the period). Parts FedScale "
             "never sees (past finish_time, inactive before active) are cut or dropped and "
             "counted; negative times, missing keys and a --period-s shorter than a "
             "finish_time are errors. Availability constant. Devices are the clients in id "
             "order; their ids are kept in the dataset 'client_id'.",
             cmd_traces_import_behave)
    b.add_argument("file", help="the client_behave_trace pickle")
    b.add_argument("-o", "--out", required=True, help="output .h5 file")
    b.add_argument("--availability", metavar="X", type=float, default=1.0,
                   help="availability of every "
                   "device (default 1: all of peak compute while online)")
    b.add_argument("--period-s", metavar="S", type=float,
                   help="the file's period, at least the largest finish_time (default: "
                   "that); a common multiple of the finish times makes every client exact")
    b.add_argument("--skip-never-online", action="store_true", help="drop clients without "
                   "any active interval (default: keep them, never online)")
    c = _add(isub, "fedscale-capacity", "FedScale client_device_capacity -> device classes",
             "FedScale's client_device_capacity (pickled dict: client id -> {'computation': "
             "ms per sample (inference), 'communication': kbit/s}) to a fleet.classes YAML "
             "snippet: clients binned into --classes speed quantiles; per class "
             "peak_macs_per_s = --ref-macs-per-sample / (computation / 1000) (geometric "
             "mean), speed_spread = sd of log speed, uplink = median kbit/s / 1000. With "
             "backward_factor 2 a sample trains in 3x the inference time, as in FedScale.",
             cmd_traces_import_capacity)
    c.add_argument("file", help="the client_device_capacity pickle")
    c.add_argument("-o", "--out", help="output .yaml file (default: print)")
    c.add_argument("--classes", metavar="N", type=int, default=4, help="number of speed classes "
                   "(default 4)")
    c.add_argument("--ref-macs-per-sample", metavar="X", type=float, default=None,
                   help="forward MACs of one sample of the model FedScale's times stand for "
                   "(default 3e8, MobileNetV2 at 224x224)")
    c.add_argument("--down-up-ratio", metavar="X", type=float, default=1.0,
                   help="downlink / uplink bandwidth (default 1: FedScale has one bandwidth)")
    c.add_argument("--latency-s", metavar="S", type=float, default=0.05,
                   help="access latency of every class (default 0.05)")
    w = _add(isub, "fedscale-bandwidth", "FedScale client_device_capacity -> bandwidth CSV",
             "Each FedScale client's own 'communication' rate (kbit/s, one for both "
             "directions) as a constant bandwidth: a CSV device,t_s,up_mbps,down_mbps for "
             "fleet.classes[i].bandwidth.file (device k is the k-th client in id order; "
             "up = kbit/s / 1000, down = up x --down-up-ratio). See docs/network.md.",
             cmd_traces_import_bandwidth)
    w.add_argument("file", help="the client_device_capacity pickle")
    w.add_argument("-o", "--out", required=True, help="output .csv file")
    w.add_argument("--down-up-ratio", metavar="X", type=float, default=1.0,
                   help="downlink / uplink bandwidth (default 1: FedScale has one bandwidth)")
    v = _add(isub, "csv", "CSV device,t_s,availability[,online] -> trace file",
             "A CSV with the header device,t_s,availability or device,t_s,availability,"
             "online; one row per breakpoint, sorted by device (integer ids) then by "
             "strictly increasing time, each device's first row at t_s=0, availability in "
             "[0, 1], online 0 or 1 (default 1). A value holds until the device's next row. "
             "Errors name the line.", cmd_traces_import_csv)
    v.add_argument("file", help="the CSV file")
    v.add_argument("-o", "--out", required=True, help="output .h5 file")
    v.add_argument("--period-s", metavar="S", type=float, help="the traces repeat with this period "
                   "(default: no repetition; the last values hold)")
    v.add_argument("--horizon-s", metavar="S", type=float,
                   help="time span (default: the period, or the last time in the file)")


# ----------------------------------------------------------------------------- commands


def _out_dir_ok(out: str) -> None:
    parent = Path(out).resolve().parent
    if not parent.is_dir():
        raise UserError(f"command line: -o {out}: the folder {parent} does not exist. "
                        "Allowed: a file in an existing folder.")


def cmd_traces_generate(args: argparse.Namespace) -> int:
    from fleetsim.build import check_options
    from fleetsim.scenario import parse_overrides
    from fleetsim.traces.generators import GENERATORS
    from fleetsim.traces.source import GeneratedTraces

    check_output_file(args.out, "-o", make_parents=False)
    if args.devices < 1 or not 0 < args.horizon_s < math.inf:  # NaN fails this too
        raise UserError("command line: --devices must be >= 1 and --horizon-s finite and > 0. "
                        "Allowed: e.g. --devices 1000 --horizon-s 604800.")
    cls = GENERATORS.get(args.kind, source="command line", key_path="--kind")
    opts = check_options(cls.Options, parse_overrides(args.param), "command line", "--param",
                         f"trace generator '{args.kind}'")
    try:
        src = GeneratedTraces(cls(opts), args.kind, args.devices, args.horizon_s, args.seed,
                              streams=args.streams)
    except ValueError as exc:  # counter streams for a generator without that form
        raise UserError(f"command line: --streams counter: {exc}. Allowed: --streams "
                        "device, or --kind markov or constant with plain numbers.") from None
    t0 = time.perf_counter()
    src.write(args.out, progress=True)
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out}: {args.devices} devices, {size / 1e6:.1f} MB, "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


def cmd_traces_show(args: argparse.Namespace) -> int:
    from fleetsim.traces.stats import trace_stats

    print(f"{args.file}")
    for line in trace_stats(args.file).lines():
        print("  " + line)
    return 0


def cmd_traces_import_behave(args: argparse.Namespace) -> int:
    from fleetsim.traces.importers import BEHAVE_REPORT, import_fedscale_behave, write_with_ids

    check_output_file(args.out, "-o", make_parents=False)
    ts, ids = import_fedscale_behave(args.file, args.availability, args.period_s,
                                     args.skip_never_online)
    write_with_ids(args.out, ts, ids)
    print(f"wrote {args.out}: {ts.n_devices} devices ({ts.meta['clients_in_file']} clients "
          f"in the file), period {ts.period_s:g} s")
    # what the importer cut, dropped or could not reproduce exactly, so nothing is silent
    # (also stored in the file: extra.import_report)
    for key, count in ts.meta["import_report"].items():
        if count:
            print(f"  {count} {BEHAVE_REPORT[key]}")
    return 0


def cmd_traces_import_capacity(args: argparse.Namespace) -> int:
    from fleetsim.traces.importers import REF_MACS_PER_SAMPLE, capacity_classes

    if args.out:
        check_output_file(args.out, "-o", make_parents=False)
    ref = REF_MACS_PER_SAMPLE if args.ref_macs_per_sample is None else args.ref_macs_per_sample
    res = capacity_classes(args.file, args.classes, ref, args.down_up_ratio, args.latency_s)
    text = res.yaml()
    if args.out:
        _out_dir_ok(args.out)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}: {len(res.classes)} classes from {res.n_clients} clients "
              f"({res.skipped} skipped)")
    else:
        sys.stdout.write(text)
    return 0


def cmd_traces_import_bandwidth(args: argparse.Namespace) -> int:
    from fleetsim.traces.bandwidth import write_csv
    from fleetsim.traces.importers import capacity_bandwidth

    check_output_file(args.out, "-o", make_parents=False)
    devs, ids = capacity_bandwidth(args.file, args.down_up_ratio)
    _out_dir_ok(args.out)
    write_csv(args.out, devs)
    print(f"wrote {args.out}: {len(devs)} clients' bandwidth (ids {ids[0]!r}..{ids[-1]!r})")
    return 0


def cmd_traces_import_csv(args: argparse.Namespace) -> int:
    from fleetsim.traces.importers import import_csv, write_with_ids

    check_output_file(args.out, "-o", make_parents=False)
    ts, ids = import_csv(args.file, args.period_s, args.horizon_s)
    write_with_ids(args.out, ts, ids)
    print(f"wrote {args.out}: {ts.n_devices} devices, horizon {ts.horizon_s:g} s")
    return 0


def cmd_traces_record(args: argparse.Namespace) -> int:
    from fleetsim.traces.format import write_traces
    from fleetsim.traces.recorder import record

    _out_dir_ok(args.out)

    def progress(k: int, n: int, avail: float) -> None:
        if not args.quiet:
            print(f"\rsample {k + 1}/{n}: availability {avail:.3f}", end="", file=sys.stderr,
                  flush=True)

    ts = record(args.interval_s, args.duration_s, on_sample=progress)
    if not args.quiet:
        print(file=sys.stderr)
    write_traces(args.out, ts)
    mean = float(ts.availability.value.mean())
    print(f"wrote {args.out}: {len(ts.availability.t)} samples of {args.interval_s:g} s on "
          f"{ts.meta['host']}, mean availability {mean:.3f}")
    return 0


def cmd_traces_plot(args: argparse.Namespace) -> int:
    from fleetsim.traces.plot import plot_traces

    _out_dir_ok(args.out)
    plot_traces(args.file, args.out, args.devices, args.bins, args.seed)
    print(f"wrote {args.out}")
    return 0


def _device_range(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    lo, sep, hi = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(lo or 0), int(hi)
    except ValueError:
        raise UserError(f"command line: --devices {text!r} is not a device range. Allowed: "
                        "START:STOP, e.g. 0:1000 (STOP excluded).") from None


def cmd_traces_slice(args: argparse.Namespace) -> int:
    from fleetsim.traces.ops import slice_file

    _out_dir_ok(args.out)
    head = slice_file(args.file, args.out, _device_range(args.devices), args.start_s,
                      args.end_s)
    period = f"{head['period_s']:g} s" if head["period_s"] else "none"
    print(f"wrote {args.out}: {head['n_devices']} devices, horizon {head['horizon_s']:g} s, "
          f"period {period}")
    return 0


def cmd_traces_merge(args: argparse.Namespace) -> int:
    from fleetsim.traces.ops import merge_files

    _out_dir_ok(args.out)
    head = merge_files(args.files, args.out)
    print(f"wrote {args.out}: {head['n_devices']} devices from {len(args.files)} files")
    return 0
