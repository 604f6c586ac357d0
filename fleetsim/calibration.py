"""Calibration: measured training-step times on this host, fitted as ``a * MACs + b``.

The simulator times work in MACs; a calibration turns MACs into seconds credibly. It runs
real single-threaded training steps of a model's sub-networks (channel choice, sliced
forward, cross-entropy, backward, SGD update) over a grid of dropout vectors and batch
sizes, takes the median time of each configuration, and fits ``time_s = a * MACs + b`` by
least squares, where MACs are the *training* MACs of the step (forward MACs per sample x
batch x (1 + backward factor)). R^2 says how well MACs alone explain the time.

Vectorised kernels work on blocks of channels (16 floats per AVX-512 register: oneDNN's
``nChw16c`` layout), so a layer with 12 kept filters takes as long as one with 16. The fit
is therefore tried with the kept channels of every group rounded up to a multiple of B, for
B in :data:`CHANNEL_BLOCKS`, and keeps the B with the best R^2; B = 1 is the exact MAC
count. The cost model then times steps by the same rounded MACs
(:class:`fleetsim.costs.CostModel`'s ``channel_block``), so the simulator uses exactly what
was fitted. The R^2 on exact MACs is reported beside it.

Two clocks are read for every step: the wall clock, and the CPU time of the thread, which
is what the step costs on a core of its own (it does not grow while other processes hold
the core). The fit uses the wall clock unless told otherwise; both are kept in the file.

The result is a small JSON file, written atomically, read back with
:func:`load_calibration`. It names the network it measured: ``arch``, ``input_shape`` and
``num_classes`` (every version of the format stores them). Its ``a`` and ``b`` hold for
that network only: the fixed cost ``b`` of a step, in particular, is worth ``b / a`` MACs
of it, which for another network can exceed a whole step and make every device late. So a
scenario whose model differs is rejected (:func:`model_mismatch`). A hand-made file
without ``input_shape`` or ``num_classes`` is checked on ``arch`` alone. Model options
(widths) are not part of the identity: ``fleetsim profile`` measures the default widths,
and ``a`` (seconds per MAC) carries over to other widths of the same architecture.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from fleetsim.costs import CostModel
from fleetsim.errors import UserError
from fleetsim.nn import DroppableNet, build_model, select_channels
from fleetsim.training import sgd_update

FORMAT = "fleetsim-calibration"
VERSION = 2  # 2: channel_block, r2_exact and per-point timed_macs (1 still reads: block 1)
READABLE_VERSIONS = (1, 2)
UNIFORM_RATES = (0.0, 0.25, 0.5, 0.75)
CLOCKS = ("wall", "cpu")
#: Channel block sizes the fit tries (1: exact MACs).
CHANNEL_BLOCKS = (1, 2, 4, 8, 16, 32)
#: A larger block must beat the smaller ones' R^2 by this much to be chosen: choosing the
#: best of several fits of the same points would otherwise pick up noise.
BLOCK_MIN_GAIN = 0.005


@dataclass(frozen=True)
class CalibrationPoint:
    """One measured configuration: dropout vector, batch size, exact training MACs, the
    median step time by the wall clock and by the thread's CPU clock, and the training
    MACs with kept channels rounded up to the calibration's channel block (what the fit
    uses; equal to ``train_macs`` for block 1)."""

    vector: tuple[float, ...]
    batch_size: int
    train_macs: int
    wall_s: float
    cpu_s: float
    timed_macs: int = -1

    @property
    def fit_macs(self) -> int:
        return self.train_macs if self.timed_macs < 0 else self.timed_macs

    def time_s(self, clock: str) -> float:
        return self.wall_s if clock == "wall" else self.cpu_s


@dataclass(frozen=True)
class Calibration:
    """A fitted host calibration: ``seconds(macs) = a_s_per_mac * macs + b_s``.

    ``macs`` are training MACs with kept channels rounded up to multiples of
    ``channel_block`` (1: exact MACs); ``r2_exact`` is the fit's R^2 on exact MACs, for
    comparison. ``clock`` names the clock the fit used (``wall`` or ``cpu``); ``host`` is
    provenance.
    """

    a_s_per_mac: float
    b_s: float
    r2: float
    arch: str
    clock: str = "wall"
    backward_factor: float = 2.0
    input_shape: tuple[int, ...] = ()
    num_classes: int = 0
    host: dict[str, Any] = field(default_factory=dict)
    points: tuple[CalibrationPoint, ...] = ()
    channel_block: int = 1
    r2_exact: float | None = None

    def seconds(self, timed_macs: float) -> float:
        """Predicted time of a training step of ``timed_macs`` MACs (counted with the
        calibration's channel block) on this host."""
        return self.a_s_per_mac * timed_macs + self.b_s

    @property
    def macs_per_s(self) -> float:
        """The host's marginal training throughput, 1 / a."""
        return 1.0 / self.a_s_per_mac

    def relative_errors(self) -> list[float]:
        """|predicted - measured| / measured for every point."""
        return [abs(self.seconds(p.fit_macs) - p.time_s(self.clock)) / p.time_s(self.clock)
                for p in self.points]


# -- measuring -------------------------------------------------------------------------------

def default_vectors(n_groups: int, n_random: int = 4, seed: int = 0,
                    levels: Sequence[float] | None = None) -> list[tuple[float, ...]]:
    """Uniform rates 0, 0.25, 0.5, 0.75 on every group, plus ``n_random`` random per-group
    vectors so that the fit also sees unequal layer shapes.

    Random rates are uniform in [0, 0.8], or drawn from ``levels`` when given. Arbitrary
    rates give arbitrary channel counts, and convolution kernels are much slower on some
    counts than on others (oneDNN on x86: 16 -> 17 channels cost 2.6x 16 -> 16): what a
    MAC count cannot see, and what the fit's R^2 then shows.
    """
    rng = np.random.default_rng(seed)
    vectors = [tuple([r] * n_groups) for r in UNIFORM_RATES]
    for _ in range(n_random):
        if levels is None:
            v = np.round(rng.uniform(0.0, 0.8, n_groups), 3)
        else:
            v = rng.choice(np.asarray(levels, dtype=float), n_groups)
        vectors.append(tuple(float(d) for d in v))
    return vectors


def train_macs(model: DroppableNet, vector: Sequence[float], batch_size: int,
               backward_factor: float = 2.0) -> int:
    """MACs of one training step: forward MACs per sample x batch x (1 + backward)."""
    return blocked_train_macs(model, [(tuple(vector), batch_size)], 1, backward_factor)[0]


def train_step(model: DroppableNet, x: torch.Tensor, y: torch.Tensor,
               vector: Sequence[float], gen: torch.Generator, lr: float = 1e-3) -> None:
    """One real training step of the sub-network for ``vector``, as the simulator trains it:
    channel choice, sliced forward, cross-entropy, backward, SGD on the kept elements."""
    keep = select_channels(model.groups, vector, "random", gen)
    params = dict(model.named_parameters())
    for p in params.values():
        p.grad = None
    leaves: dict[str, torch.Tensor] = {}
    F.cross_entropy(model(x, keep, leaves=leaves), y).backward()
    sgd_update(model, params, keep, leaves, lr)


def _time_grid(model: DroppableNet, configs: list[tuple[tuple[float, ...], int]],
               repeats: int, warmup: int, seed: int) -> tuple[list[float], list[float]]:
    """Median wall and thread-CPU step time per configuration.

    Configurations are interleaved within each repeat so that slow drift of the host
    (frequency, other load) hits all of them alike. The thread's CPU time covers the whole
    step: one intra-op thread, and autograd runs CPU backward passes on the calling thread.
    """
    gen = torch.Generator().manual_seed(seed)
    data = {}
    for _, bs in configs:
        if bs not in data:
            x = torch.randn((bs, *model.input_shape), generator=gen)
            data[bs] = (x, torch.randint(0, model.num_classes, (bs,), generator=gen))
    wall = np.zeros((repeats, len(configs)))
    cpu = np.zeros((repeats, len(configs)))
    for r in range(-warmup, repeats):
        for i, (vector, bs) in enumerate(configs):
            w0, c0 = time.perf_counter(), time.thread_time()
            train_step(model, *data[bs], vector, gen)
            if r >= 0:
                wall[r, i] = time.perf_counter() - w0
                cpu[r, i] = time.thread_time() - c0
    return np.median(wall, axis=0).tolist(), np.median(cpu, axis=0).tolist()


def fit(macs: Sequence[float], times_s: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares ``time = a * macs + b``; returns ``(a, b, r2)``."""
    res = stats.linregress(np.asarray(macs, dtype=float), np.asarray(times_s, dtype=float))
    return float(res.slope), float(res.intercept), float(res.rvalue ** 2)


def blocked_train_macs(model: DroppableNet, configs: Sequence[tuple[tuple[float, ...], int]],
                       block: int, backward_factor: float = 2.0) -> list[int]:
    """Training MACs of each (vector, batch size) with kept channels rounded up to
    multiples of ``block``: the count the cost model times steps by."""
    costs = CostModel(model, backward_factor, channel_block=block)
    return [round(costs.step_macs(v, bs)) for v, bs in configs]


def fit_block(model: DroppableNet, configs: Sequence[tuple[tuple[float, ...], int]],
              times_s: Sequence[float], backward_factor: float = 2.0,
              blocks: Sequence[int] = CHANNEL_BLOCKS) -> tuple[int, list[int], float, float, float]:
    """The channel block whose rounded MACs explain ``times_s`` best.

    Returns ``(block, its MACs per config, a, b, r2)``. A larger block wins only with an
    R^2 higher by at least :data:`BLOCK_MIN_GAIN`, so exact MACs (block 1) stay where
    rounding explains nothing; fits whose time does not grow with MACs (``a <= 0``) are
    never chosen.
    """
    best: tuple[int, list[int], float, float, float] | None = None
    for block in sorted(blocks):
        macs = blocked_train_macs(model, configs, block, backward_factor)
        if len(set(macs)) < 2:  # rounding made every configuration equal: nothing to fit
            continue
        a, b, r2 = fit(macs, times_s)
        if a > 0 and (best is None or r2 >= best[4] + BLOCK_MIN_GAIN):
            best = (block, macs, a, b, r2)
    if best is None:
        raise ValueError("no channel block gives a fit whose step time grows with the MACs "
                         f"(tried {', '.join(map(str, sorted(blocks)))}); the grid needs "
                         "configurations of clearly different MACs")
    return best


def host_info() -> dict[str, Any]:
    """What identifies the measured host (for provenance, not for matching)."""
    return {"node": platform.node(), "machine": platform.machine(),
            "processor": platform.processor(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": 1}


def profile_host(arch: str, input_shape: Sequence[int], num_classes: int,
                 vectors: Sequence[Sequence[float]] | None = None,
                 batch_sizes: Sequence[int] = (8, 16, 32, 64), repeats: int = 7, *,
                 warmup: int = 2, backward_factor: float = 2.0, clock: str = "wall",
                 options: dict[str, Any] | None = None, seed: int = 0,
                 channel_block: int | None = None) -> Calibration:
    """Measure single-threaded training-step times of ``arch`` on this host and fit them.

    Parameters
    ----------
    arch : registered model name
    input_shape, num_classes : the dataset's sample shape and class count
    vectors : dropout vectors to measure (default: :func:`default_vectors`)
    batch_sizes : batch sizes to measure, each with every vector
    repeats : timed steps per configuration (the median is kept), after ``warmup`` untimed
    backward_factor : backward MACs per forward MAC, in the MACs the fit uses
    clock : ``wall`` (elapsed time) or ``cpu`` (the thread's CPU time: robust to other
        processes on the host) for the fit
    options : model options
    seed : seeds the model, the data and the channel choices
    channel_block : fit with kept channels rounded up to multiples of this; None tries
        :data:`CHANNEL_BLOCKS` and keeps the best fit

    Returns
    -------
    The fitted :class:`Calibration`, with every measured point.
    """
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; allowed: {', '.join(CLOCKS)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one device = one core: the simulator's unit of compute
    try:
        torch.manual_seed(seed)
        model = build_model(arch, tuple(input_shape), num_classes, options).train()
        vecs = [tuple(map(float, v)) for v in (vectors or default_vectors(len(model.groups)))]
        configs = [(v, int(bs)) for bs in batch_sizes for v in vecs]
        wall, cpu = _time_grid(model, configs, repeats, warmup, seed)
    finally:
        torch.set_num_threads(threads)
    times = wall if clock == "wall" else cpu
    exact = blocked_train_macs(model, configs, 1, backward_factor)
    r2_exact = fit(exact, times)[2]
    blocks = CHANNEL_BLOCKS if channel_block is None else (channel_block,)
    block, timed, a, b, r2 = fit_block(model, configs, times, backward_factor, blocks)
    points = tuple(CalibrationPoint(v, bs, e, w, c, t)
                   for (v, bs), e, t, w, c in zip(configs, exact, timed, wall, cpu))
    return Calibration(a, b, r2, arch, clock, backward_factor,
                       tuple(int(s) for s in input_shape), num_classes, host_info(), points,
                       block, r2_exact)


# -- the file --------------------------------------------------------------------------------

def write_calibration(cal: Calibration, path: str | os.PathLike[str]) -> None:
    """Write ``cal`` as JSON; a temporary file renamed into place, so that a crash never
    leaves a half-written calibration behind."""
    path = Path(path)
    doc = {"format": FORMAT, "version": VERSION, **asdict(cal)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _bad(path: str | os.PathLike[str], problem: str) -> UserError:
    return UserError(
        f"calibration file '{os.fspath(path)}' {problem}. A calibration file is the JSON "
        "that `fleetsim profile --model ARCH --out FILE` writes (keys a_s_per_mac, b_s, r2, "
        "arch, ...); run that command on the host to calibrate to make a new one.")


def _number(doc: dict[str, Any], key: str, path: str | os.PathLike[str]) -> float:
    v = doc.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise _bad(path, f"has no finite number at '{key}' (found {v!r})")
    return float(v)


def _points(doc: dict[str, Any]) -> tuple[CalibrationPoint, ...]:
    return tuple(CalibrationPoint(tuple(map(float, p["vector"])), int(p["batch_size"]),
                                  int(p["train_macs"]), float(p["wall_s"]), float(p["cpu_s"]),
                                  int(p.get("timed_macs", -1)))
                 for p in doc.get("points", []))


def load_calibration(path: str | os.PathLike[str]) -> Calibration:
    """Read a calibration file written by :func:`write_calibration`.

    Raises
    ------
    UserError : the file is missing, is not JSON, or lacks or mistypes a field
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise _bad(path, "does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise _bad(path, f"cannot be read ({e})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad(path, f"is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _bad(path, f"is not a fleetsim calibration (no \"format\": \"{FORMAT}\")")
    if doc.get("version") not in READABLE_VERSIONS:
        raise _bad(path, f"has format version {doc.get('version')!r}, and this fleetsim reads "
                   f"versions {', '.join(map(str, READABLE_VERSIONS))}")
    a, b, r2 = (_number(doc, k, path) for k in ("a_s_per_mac", "b_s", "r2"))
    if a <= 0:
        raise _bad(path, f"has a non-positive 'a_s_per_mac' ({a!r}; seconds per MAC)")
    arch, clock = doc.get("arch"), doc.get("clock", "wall")
    if not isinstance(arch, str) or not arch:
        raise _bad(path, f"has no model name at 'arch' (found {arch!r})")
    if clock not in CLOCKS:
        raise _bad(path, f"has an unknown 'clock' {clock!r} (allowed: {', '.join(CLOCKS)})")
    try:
        points = _points(doc)
        shape = tuple(int(s) for s in doc.get("input_shape", ()))
        backward, classes = float(doc.get("backward_factor", 2.0)), int(doc.get("num_classes", 0))
    except (KeyError, TypeError, ValueError) as e:
        raise _bad(path, f"has a malformed 'points', 'input_shape' or count ({e!r})") from None
    block = doc.get("channel_block", 1)
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise _bad(path, f"has a 'channel_block' that is not a positive integer ({block!r})")
    r2_exact = doc.get("r2_exact")
    host = doc.get("host", {})
    return Calibration(a, b, r2, arch, clock, backward, shape, classes,
                       host if isinstance(host, dict) else {}, points, block,
                       float(r2_exact) if isinstance(r2_exact, int | float) else None)


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def model_mismatch(cal: Calibration, arch: str, input_shape: Sequence[int],
                   num_classes: int) -> str | None:
    """How the network ``cal`` measured differs from ``arch`` on ``input_shape`` samples
    with ``num_classes`` classes; None when it is the same (or the file cannot tell)."""
    diffs = []
    if cal.arch != arch:
        diffs.append(f"model {cal.arch}, not {arch}")
    if cal.input_shape and tuple(cal.input_shape) != tuple(input_shape):
        diffs.append(f"input shape {_shape_text(cal.input_shape)}, not "
                     f"{_shape_text(input_shape)}")
    if cal.num_classes and cal.num_classes != num_classes:
        diffs.append(f"{cal.num_classes} classes, not {num_classes}")
    if not diffs:
        return None
    return "was measured for " + "; ".join(diffs)


def profile_command(arch: str, input_shape: Sequence[int], num_classes: int) -> str:
    """The ``fleetsim profile`` command that calibrates this network."""
    return (f"fleetsim profile --model {arch} --input-shape {','.join(map(str, input_shape))} "
            f"--classes {num_classes} --out FILE")


# -- the command -----------------------------------------------------------------------------

def run_profile(arch: str, out: str, dataset_shape: Sequence[int] = (1, 28, 28),
                num_classes: int = 10, quick: bool = False, *, clock: str = "wall",
                channel_block: int | None = None) -> Calibration:
    """``fleetsim profile``: calibrate ``arch`` on this host, write ``out``, print the fit.

    ``quick`` measures a small grid in seconds (for smoke tests): the uniform vectors
    and three random ones on the same quarter levels, batch sizes 4, 16, 64. The default
    grid (random vectors with arbitrary rates, batch sizes 8 to 64) takes about 15 s for
    the small CNNs. ``clock`` and ``channel_block``: see :func:`profile_host`.
    """
    try:
        if quick:
            groups = len(build_model(arch, tuple(dataset_shape), num_classes).groups)
            vectors = default_vectors(groups, n_random=3, levels=UNIFORM_RATES)
            cal = profile_host(arch, dataset_shape, num_classes, vectors,
                               batch_sizes=(4, 16, 64), repeats=5, warmup=1, clock=clock,
                               channel_block=channel_block)
        else:
            cal = profile_host(arch, dataset_shape, num_classes, clock=clock,
                               channel_block=channel_block)
    except ValueError as exc:  # no usable fit: say so, no traceback
        raise UserError(f"fleetsim profile --model {arch}: {exc}. Allowed: a smaller "
                        "--channel-block (1 fits exact MACs), or the default grid.") from None
    write_calibration(cal, out)
    print(format_fit(cal))
    print(f"wrote {out}")
    return cal


def format_fit(cal: Calibration) -> str:
    """The fit in one human line."""
    errs = cal.relative_errors()
    med = float(np.median(errs)) if errs else float("nan")
    macs = "MACs" if cal.channel_block == 1 else f"MACs[channels in blocks of {cal.channel_block}]"
    exact = "" if cal.channel_block == 1 or cal.r2_exact is None else \
        f"; on exact MACs R^2 = {cal.r2_exact:.4f}"
    return (f"{cal.arch} on {cal.host.get('node', '?')} (1 thread, {cal.clock} clock): "
            f"time_s = {cal.a_s_per_mac:.4g} * {macs} + {cal.b_s:.4g}  "
            f"({cal.macs_per_s / 1e9:.2f} GMAC/s; R^2 = {cal.r2:.4f}; median error "
            f"{100 * med:.1f}%, max {100 * max(errs, default=float('nan')):.1f}%; "
            f"{len(cal.points)} points{exact})")
