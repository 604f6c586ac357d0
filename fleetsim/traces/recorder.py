"""Record this host's CPU availability into a one-device trace.

Every ``interval_s`` the busy share of all CPUs over that interval is measured with
psutil; availability is ``1 - busy share``, i.e. the compute other programs left free.
The device is online throughout. The trace repeats with its duration (like generated
traces), so a short recording can drive a long run.
"""

from __future__ import annotations

import datetime as dt
import math
import platform
import socket
from collections.abc import Callable

import numpy as np

from fleetsim.errors import UserError
from fleetsim.traces.format import Signal, TraceSet


def cpu_busy_share(interval_s: float) -> float:
    """Busy share of all CPUs over the next ``interval_s`` seconds (blocks that long)."""
    import psutil

    return float(psutil.cpu_percent(interval=interval_s)) / 100.0


def record(interval_s: float = 1.0, duration_s: float = 600.0,
           sampler: Callable[[float], float] = cpu_busy_share,
           on_sample: Callable[[int, int, float], None] | None = None) -> TraceSet:
    """Sample availability every ``interval_s`` for ``duration_s``; return a one-device trace.

    Parameters
    ----------
    interval_s : length of one sample; breakpoints are at 0, interval_s, 2 interval_s, ...
    duration_s : length of the recording, rounded up to whole intervals
    sampler : busy share in [0, 1] over the interval it is given (blocks that long);
        tests pass a fake
    on_sample : called with (sample index, number of samples, availability) after each
    """
    if not (interval_s > 0 and duration_s > 0 and math.isfinite(interval_s)
            and math.isfinite(duration_s)):
        raise UserError(f"command line: --interval-s {interval_s} and --duration-s "
                        f"{duration_s} are not allowed. Allowed: positive seconds, e.g. "
                        "--interval-s 1 --duration-s 600.")
    n = max(math.ceil(duration_s / interval_s - 1e-9), 1)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    values = np.empty(n)
    clipped = 0
    for k in range(n):
        busy = float(sampler(interval_s))
        if not math.isfinite(busy):
            raise UserError(f"recording: sample {k + 1} of {n} gave busy share {busy!r}. "
                            "Allowed: a finite share of the CPUs in [0, 1].")
        # a sampler may overshoot [0, 1] by a little (rounding in psutil): clip, and count
        clipped += not 0.0 <= busy <= 1.0
        values[k] = min(max(1.0 - busy, 0.0), 1.0)
        if on_sample is not None:
            on_sample(k, n, float(values[k]))
    horizon = n * interval_s
    meta = {
        "source": "fleetsim traces record", "generator": "",
        "params": {"interval_s": interval_s, "duration_s": horizon},
        "host": socket.gethostname(), "platform": platform.platform(),
        "cpus": _cpu_count(), "started_utc": started,
        "measure": "availability = 1 - busy share of all CPUs per interval (psutil)",
        "clipped_samples": clipped,
    }
    t = np.arange(n) * float(interval_s)
    one = np.array([0, 1], np.int64)
    return TraceSet(Signal(t, values, np.array([0, n], np.int64)),
                    Signal(np.zeros(1), np.ones(1, np.uint8), one),
                    horizon_s=horizon, period_s=horizon, meta=meta)


def _cpu_count() -> int:
    import psutil

    return int(psutil.cpu_count() or 0)
