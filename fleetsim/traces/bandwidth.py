"""Bandwidth over time: one device's up or down rate as a piecewise-constant trace.

A transfer of ``nbytes`` whose bytes start to flow at ``t0`` has sent its last bit at the
``t1`` where ``integral_{t0}^{t1} rate(t) dt = 8 nbytes / 1e6`` (megabits; the rate is in
megabit/s like ``uplink_mbps``), found exactly as compute work is: the cumulative
integral at the breakpoints, one binary search, one interpolation
(:class:`~fleetsim.traces.device.DeviceTrace` does the integration). As everywhere in
fleetsim, a transfer's latency comes first and its bytes flow after it. A trace with
one value gives today's time bit for bit:
``latency_s + nbytes * 8 / (mbps * 1e6)``, as :func:`fleetsim.costs.comm_seconds`.

Generators (registered in :data:`BANDWIDTH_GENERATORS`): ``constant``, ``markov_levels``
(a continuous-time chain over given levels, exponential dwell times) and ``lognormal``
(a new mean-preserving log-normal value every ``interval_s``). :func:`read_csv` reads
``device,t_s,up_mbps,down_mbps`` files.
"""

from __future__ import annotations

import csv
import math
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleetsim.errors import UserError
from fleetsim.registry import Registry
from fleetsim.traces.device import DeviceTrace
from fleetsim.traces.period import split_period

INF = math.inf
BYTES_PER_S_PER_MBPS = 1e6 / 8.0


class BandwidthTrace:
    """A rate in megabit/s, piecewise constant in time.

    Parameters
    ----------
    t : breakpoints (the first 0, strictly increasing), seconds
    mbps : rate from each breakpoint on (>= 0, finite)
    period_s : the trace repeats with this period (None: the last rate holds for ever)
    """

    __slots__ = ("_int", "_t", "_v", "period_s")

    def __init__(self, t: Any, mbps: Any, period_s: float | None = None) -> None:
        t = np.asarray(t, dtype=np.float64).ravel()
        v = np.asarray(mbps, dtype=np.float64).ravel()
        if len(t) == 0 or len(t) != len(v):
            raise ValueError("a bandwidth trace needs as many rates as breakpoints, >= 1")
        if t[0] != 0.0 or np.any(np.diff(t) <= 0) or not np.all(np.isfinite(t)):
            raise ValueError("bandwidth breakpoints must start at 0 and increase strictly")
        if not np.all(np.isfinite(v)) or np.any(v < 0):
            bad = v[~(np.isfinite(v) & (v >= 0))][0]
            raise ValueError(f"a bandwidth rate of {bad!r} Mbit/s is not allowed (>= 0, "
                             "finite)")
        if period_s is not None and not (t[-1] < period_s < INF):
            raise ValueError(f"period {period_s!r} s must be finite and after the last "
                             "breakpoint")
        self.period_s = period_s
        self._t = t.tolist()
        self._v = v.tolist()
        self._int = DeviceTrace(t, v, np.zeros(1), np.ones(1), period_s)

    @classmethod
    def constant(cls, mbps: float) -> BandwidthTrace:
        return cls([0.0], [mbps])

    @property
    def is_constant(self) -> bool:
        return len(self._v) == 1

    def rate_mbps_at(self, t: float) -> float:
        return self._int.availability_at(t)

    def rate_bytes_per_s(self, t: float) -> float:
        """The rate at ``t`` in bytes per second (a :class:`fleetsim.links.RateSource`)."""
        return self.rate_mbps_at(t) * BYTES_PER_S_PER_MBPS

    def next_change_s(self, t: float) -> float:
        """The first breakpoint strictly after ``t`` (``inf``: none)."""
        if self.is_constant:
            return INF
        if self.period_s is None:
            k = bisect_right(self._t, t)
            return self._t[k] if k < len(self._t) else INF
        q, r = split_period(t, self.period_s)
        k = bisect_right(self._t, r)
        nxt = self._t[k] if k < len(self._t) else self.period_s
        return q * self.period_s + nxt

    def megabits(self, t0: float, t1: float) -> float:
        """Megabits the trace moves from ``t0`` to ``t1`` (the integral of the rate)."""
        return self._int.cumulative(t1) - self._int.cumulative(t0)

    def send_end_s(self, t0: float, nbytes: float) -> float:
        """When the last bit of ``nbytes`` started at ``t0`` is sent (``inf``: never)."""
        if self.is_constant:
            v = self._v[0]
            return t0 + nbytes * 8.0 / (v * 1e6) if v > 0 else (t0 if nbytes <= 0 else INF)
        return self._int.finish_time(t0, nbytes * 8.0 / 1e6)

    def transfer_s(self, t0: float, nbytes: float, latency_s: float) -> float:
        """Duration of a transfer of ``nbytes`` started at ``t0``: the latency first, then
        the bytes at the trace's rate from ``t0 + latency_s`` (the engine's convention:
        :func:`fleetsim.engine.timing.sent`). A constant trace gives
        :func:`fleetsim.costs.comm_seconds` exactly."""
        if self.is_constant and self._v[0] > 0:
            # fleetsim.costs.comm_seconds's expression, term for term (same bits); not
            # imported because costs imports torch, which the traces layer does without
            return latency_s + nbytes * 8.0 / (self._v[0] * 1e6)
        start = t0 + latency_s
        return latency_s + (self.send_end_s(start, nbytes) - start)

    def capped(self, max_mbps: float) -> BandwidthTrace:
        """This trace with every rate at most ``max_mbps`` (a path's bottleneck)."""
        if max_mbps == INF:
            return self
        return BandwidthTrace(self._t, np.minimum(self._v, max_mbps), self.period_s)


@dataclass(frozen=True)
class DeviceBandwidth:
    """One device's up and down bandwidth traces."""

    up: BandwidthTrace
    down: BandwidthTrace


# ----------------------------------------------------------------------------- generators


class BandwidthOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class BandwidthGenerator:
    """Base: ``Options`` validates, ``make`` draws one direction of one device."""

    Options: ClassVar[type[BandwidthOptions]] = BandwidthOptions

    def __init__(self, options: BandwidthOptions) -> None:
        self.options = options

    def make(self, horizon_s: float, rng: np.random.Generator) -> BandwidthTrace:
        raise NotImplementedError


BANDWIDTH_GENERATORS: Registry[type[BandwidthGenerator]] = Registry("bandwidth generator")


class ConstantOptions(BandwidthOptions):
    mbps: float = Field(gt=0, description="the rate, megabit/s")


@BANDWIDTH_GENERATORS.register("constant")
class Constant(BandwidthGenerator):
    """One rate for ever (the same as the class's constant uplink/downlink)."""

    Options = ConstantOptions

    def make(self, horizon_s: float, rng: np.random.Generator) -> BandwidthTrace:
        return BandwidthTrace.constant(self.options.mbps)  # type: ignore[attr-defined]


class MarkovLevelsOptions(BandwidthOptions):
    levels_mbps: tuple[float, ...] = Field(min_length=1, description="the rates the chain "
                                           "moves between, megabit/s (>= 0)")
    mean_dwell_s: float = Field(60.0, gt=0, description="mean time in a level "
                                "(exponential); then a jump to another level, uniformly")

    @model_validator(mode="after")
    def _levels(self) -> MarkovLevelsOptions:
        if any(v < 0 for v in self.levels_mbps):
            raise ValueError("levels_mbps must be >= 0")
        return self


@BANDWIDTH_GENERATORS.register("markov_levels")
class MarkovLevels(BandwidthGenerator):
    """A continuous-time Markov chain over rate levels, starting in a uniform level."""

    Options = MarkovLevelsOptions

    def make(self, horizon_s: float, rng: np.random.Generator) -> BandwidthTrace:
        o: MarkovLevelsOptions = self.options  # type: ignore[assignment]
        n = len(o.levels_mbps)
        ts, vs = [0.0], [int(rng.integers(n))]
        t = float(rng.exponential(o.mean_dwell_s))
        while t < horizon_s and n > 1:
            ts.append(t)
            step = int(rng.integers(1, n))  # any other level
            vs.append((vs[-1] + step) % n)
            t += float(rng.exponential(o.mean_dwell_s))
        return BandwidthTrace(ts, [o.levels_mbps[k] for k in vs], horizon_s)


class LogNormalOptions(BandwidthOptions):
    mean_mbps: float = Field(gt=0, description="mean rate, megabit/s")
    sigma: float = Field(0.5, ge=0, description="sd of the log of the rate; each value is "
                         "mean_mbps * exp(sigma z - sigma^2 / 2), z standard normal")
    interval_s: float = Field(60.0, gt=0, description="a new value every interval_s")


@BANDWIDTH_GENERATORS.register("lognormal")
class LogNormal(BandwidthGenerator):
    """Independent mean-preserving log-normal rates, one per interval."""

    Options = LogNormalOptions

    def make(self, horizon_s: float, rng: np.random.Generator) -> BandwidthTrace:
        o: LogNormalOptions = self.options  # type: ignore[assignment]
        n = max(1, math.ceil(horizon_s / o.interval_s))
        ts = np.arange(n) * o.interval_s
        z = rng.standard_normal(n)
        v = o.mean_mbps * np.exp(o.sigma * z - o.sigma**2 / 2)
        return BandwidthTrace(ts, v, horizon_s if ts[-1] < horizon_s else None)


def make_generator(name: str, options: dict[str, Any], key_path: str,
                   source: str | None = None) -> BandwidthGenerator:
    """A generator from its name and options; bad input is a :class:`UserError`."""
    cls = BANDWIDTH_GENERATORS.get(name, source=source, key_path=f"{key_path}.generator")
    try:
        return cls(cls.Options(**options))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        where = f"{source}: " if source else ""
        raise UserError(f"{where}at '{key_path}.options': bandwidth generator {name!r} "
                        f"refuses these options: {_short(exc)}. Allowed: "
                        f"{_allowed(cls.Options)}.") from None


def _short(exc: Exception) -> str:
    errs = getattr(exc, "errors", None)
    if callable(errs):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}"
                         for e in errs())
    return str(exc)


def _allowed(model: type[BaseModel]) -> str:
    return ", ".join(f"{k} ({f.description or f.annotation})"
                     for k, f in model.model_fields.items())


# ----------------------------------------------------------------------------- CSV

CSV_HEADER = ["device", "t_s", "up_mbps", "down_mbps"]


def read_csv(path: str | Path, key_path: str, period_s: float | None = None
             ) -> list[DeviceBandwidth]:
    """``device,t_s,up_mbps,down_mbps`` rows, sorted by device then time (the first at
    0): one :class:`DeviceBandwidth` per distinct device id, in file order. Any bad row is a
    :class:`UserError` naming the file, the line and the key path."""
    p = Path(path)

    def bad(line: int, problem: str, allowed: str) -> UserError:
        return UserError(f"at '{key_path}': {p}: line {line}: {problem}. Allowed: {allowed}.")

    if not p.is_file():
        raise UserError(f"at '{key_path}': {p}: the file does not exist. Allowed: a CSV file "
                        "with the header device,t_s,up_mbps,down_mbps.")
    rows: dict[int, tuple[list[float], list[float], list[float], int]] = {}
    order: list[int] = []
    with p.open(newline="") as f:
        reader = csv.reader(f)
        if [h.strip() for h in next(reader, [])] != CSV_HEADER:
            raise bad(1, "the header is not device,t_s,up_mbps,down_mbps",
                      "exactly that header")
        last = None
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            try:
                d, t, up, down = int(row[0]), float(row[1]), float(row[2]), float(row[3])
            except (ValueError, IndexError):
                raise bad(line, f"{','.join(row)!r} is not four numbers",
                          "an integer device id and three numbers") from None
            for name, x in (("up_mbps", up), ("down_mbps", down)):
                if not (x >= 0 and math.isfinite(x)):
                    raise bad(line, f"{name} is {x!r}", "rates >= 0 and finite, Mbit/s")
            if d != last:
                if d in rows:
                    raise bad(line, f"device {d} appears again after other devices",
                              "rows sorted by device")
                rows[d] = ([], [], [], line)
                order.append(d)
                last = d
                if t != 0.0:
                    raise bad(line, f"device {d} starts at t_s={t!r}", "a first row at 0")
            ts = rows[d][0]
            if ts and not t > ts[-1]:
                raise bad(line, f"t_s={t!r} does not increase", "strictly increasing times")
            if period_s is not None and t >= period_s:
                raise bad(line, f"t_s={t!r} is not before the period {period_s!r} s",
                          "times within the period")
            ts.append(t)
            rows[d][1].append(up)
            rows[d][2].append(down)
    if not order:
        raise bad(2, "no data rows", "at least one row after the header")
    return [DeviceBandwidth(BandwidthTrace(rows[d][0], rows[d][1], period_s),
                            BandwidthTrace(rows[d][0], rows[d][2], period_s)) for d in order]


def write_csv(path: str | Path, devices: list[DeviceBandwidth]) -> None:
    """Write traces with shared breakpoints in :func:`read_csv`'s format."""
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_HEADER)
        for i, dev in enumerate(devices):
            if dev.up._t != dev.down._t:
                raise ValueError("write_csv needs the same breakpoints up and down")
            for t, u, v in zip(dev.up._t, dev.up._v, dev.down._v):
                w.writerow([i, repr(t), repr(u), repr(v)])

