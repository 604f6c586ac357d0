"""Trace generators: seeded, per device, registered by name.

A generator makes the trace of one device from that device's own random stream
(``stream(seed, "trace", device)``), so a fleet's traces can be made lazily, device by
device on first use, and still equal the materialised file bit for bit.

Generated traces are periodic with period ``horizon_s``: a run longer than the horizon
sees the same pattern again rather than a frozen last value.

Any numeric option may be given as a distribution spec instead of a number, e.g.
``{dist: uniform, low: 0.2, high: 0.8}``; each device then draws its own value, first
thing, from its own stream (see :func:`resolve`), so fleets are heterogeneous and lazy
traces still equal materialised ones.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    model_validator,
)

from fleetsim.registry import Registry
from fleetsim.traces.period import split_period_array

DAY_S = 86400.0


class GeneratorOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class DeviceSignals:
    """Raw breakpoints of one device: availability and online (0/1)."""

    avail_t: np.ndarray
    avail_v: np.ndarray
    online_t: np.ndarray
    online_v: np.ndarray


# ----------------------------------------------------------------------------- per-device draws


class Dist(BaseModel):
    """A distribution a per-device parameter is drawn from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def draw(self, rng: np.random.Generator) -> float:
        raise NotImplementedError

    def support(self) -> tuple[float, float]:
        """Smallest and largest value a draw can take (closed bounds)."""
        raise NotImplementedError


class UniformDist(Dist):
    """Uniform on [low, high]."""

    dist: Literal["uniform"] = "uniform"
    low: float
    high: float

    @model_validator(mode="after")
    def _order(self) -> UniformDist:
        if self.high < self.low:
            raise ValueError("high must be >= low")
        return self

    def draw(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))

    def support(self) -> tuple[float, float]:
        return self.low, self.high


class LogUniformDist(Dist):
    """Log-uniform on [low, high] (both > 0): every decade equally likely."""

    dist: Literal["loguniform"] = "loguniform"
    low: float = Field(gt=0)
    high: float = Field(gt=0)

    @model_validator(mode="after")
    def _order(self) -> LogUniformDist:
        if self.high < self.low:
            raise ValueError("high must be >= low")
        return self

    def draw(self, rng: np.random.Generator) -> float:
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

    def support(self) -> tuple[float, float]:
        return self.low, self.high


class NormalDist(Dist):
    """Normal with mean ``mean`` and standard deviation ``sd`` (unbounded)."""

    dist: Literal["normal"] = "normal"
    mean: float
    sd: float = Field(ge=0)

    def draw(self, rng: np.random.Generator) -> float:
        return float(self.mean + self.sd * rng.standard_normal())

    def support(self) -> tuple[float, float]:
        return (-math.inf, math.inf) if self.sd > 0 else (self.mean, self.mean)


class LogNormalDist(Dist):
    """Log-normal with arithmetic mean ``mean`` and log-scale standard deviation ``sigma``.

    ``mean`` is the mean of the values drawn (not of their logarithm), so changing
    ``sigma`` spreads devices without moving the fleet's average.
    """

    dist: Literal["lognormal"] = "lognormal"
    mean: float = Field(gt=0)
    sigma: float = Field(ge=0)

    def draw(self, rng: np.random.Generator) -> float:
        s = self.sigma
        return float(self.mean * math.exp(s * rng.standard_normal() - s * s / 2))

    def support(self) -> tuple[float, float]:
        # draws are strictly positive: the smallest float stands for "just above 0"
        return (5e-324, math.inf) if self.sigma > 0 else (self.mean, self.mean)


class ChoiceDist(Dist):
    """One of ``values``, with probabilities ``weights`` (default: equal)."""

    dist: Literal["choice"] = "choice"
    values: tuple[float, ...] = Field(min_length=1)
    weights: tuple[float, ...] | None = None

    @model_validator(mode="after")
    def _weights(self) -> ChoiceDist:
        w = self.weights
        if w is not None and (len(w) != len(self.values) or min(w) < 0 or sum(w) <= 0):
            raise ValueError("weights need one non-negative value per entry of values, "
                             "with a positive sum")
        return self

    def draw(self, rng: np.random.Generator) -> float:
        if self.weights is None:
            return float(self.values[int(rng.integers(len(self.values)))])
        p = np.asarray(self.weights, dtype=np.float64)
        return float(self.values[int(rng.choice(len(self.values), p=p / p.sum()))])

    def support(self) -> tuple[float, float]:
        return min(self.values), max(self.values)


DISTS: dict[str, type[Dist]] = {"uniform": UniformDist, "loguniform": LogUniformDist,
                                "normal": NormalDist, "lognormal": LogNormalDist,
                                "choice": ChoiceDist}

_SPEC_HELP = ("a number, or a distribution spec: {dist: uniform, low, high} | "
              "{dist: loguniform, low, high} | {dist: normal, mean, sd} | "
              "{dist: lognormal, mean, sigma} | {dist: choice, values, weights}")


def _parse_dist(raw: Mapping[str, Any]) -> Dist:
    kind = raw.get("dist")
    cls = DISTS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown distribution {kind!r}; expected {_SPEC_HELP}")
    try:
        return cls.model_validate(dict(raw))
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(str(p) for p in e["loc"])
        raise ValueError(f"{kind} spec: {where + ': ' if where else ''}"
                         f"{e['msg'].removeprefix('Value error, ')}") from None


def _number(lo: float, hi: float, lo_open: bool, hi_open: bool, many: bool = False) -> Any:
    """A pydantic type: a number in the given range, or a :class:`Dist` whose draws stay in it.

    With ``many``, a list of such values is accepted too (e.g. one per Markov level).
    """
    rng_text = (("(" if lo_open else "[") + f"{lo:g}, {hi:g}" + (")" if hi_open else "]"))

    def inside(x: float) -> bool:
        # an infinite end of the allowed range admits a support that is unbounded there
        lo_ok = x > lo if lo_open and math.isfinite(lo) else x >= lo
        hi_ok = x < hi if hi_open and math.isfinite(hi) else x <= hi
        return lo_ok and hi_ok

    def one(v: Any) -> float | Dist:
        if isinstance(v, bool):
            raise ValueError(f"expected {_SPEC_HELP}")
        if isinstance(v, int | float):
            if not (math.isfinite(v) and inside(float(v))):
                raise ValueError(f"must lie in {rng_text}")
            return float(v)
        if isinstance(v, Dist | Mapping):
            d = v if isinstance(v, Dist) else _parse_dist(v)
            a, b = d.support()
            if not (inside(a) and inside(b)):
                span = ("(0" if a == 5e-324 else f"[{a:g}") + f", {b:g}]"
                raise ValueError(f"draws of this {type(d).__name__.removesuffix('Dist').lower()}"
                                 f" distribution can leave {rng_text} (they range over {span})")
            return d
        raise ValueError(f"expected {_SPEC_HELP}" + (", or a list of those" if many else ""))

    def check(v: Any) -> Any:
        if many and isinstance(v, list | tuple):
            return tuple(one(x) for x in v)
        return one(v)

    def dump(v: Any) -> Any:
        if isinstance(v, tuple):
            return [dump(x) for x in v]
        return v.model_dump() if isinstance(v, Dist) else v

    typ = float | Dist | tuple[float | Dist, ...] if many else float | Dist
    return Annotated[typ, PlainValidator(check), PlainSerializer(dump)]


# Numeric option types: a plain number, or a per-device distribution spec within range.
Share = _number(0.0, 1.0, False, False)  # an availability level
Positive = _number(0.0, math.inf, True, True)
NonNegative = _number(0.0, math.inf, False, True)
Real = _number(-math.inf, math.inf, True, True)
Hours = _number(0.0, 24.0, True, False)  # a daily window length
Positives = _number(0.0, math.inf, True, True, many=True)


def _has_dist(v: Any) -> bool:
    if isinstance(v, Dist):
        return True
    return isinstance(v, tuple) and any(_has_dist(x) for x in v)


def _draw(v: Any, rng: np.random.Generator) -> Any:
    if isinstance(v, Dist):
        return v.draw(rng)
    if isinstance(v, tuple) and _has_dist(v):
        return tuple(_draw(x, rng) for x in v)
    return v


def resolve(options: GeneratorOptions, rng: np.random.Generator) -> GeneratorOptions:
    """``options`` with every distribution spec replaced by one draw from ``rng``.

    Draws happen in the order the options are declared, one per spec, so a device's
    parameters depend only on its own stream. Options without specs draw nothing.
    """
    updates = {name: _draw(getattr(options, name), rng) for name in type(options).model_fields
               if _has_dist(getattr(options, name))}
    return options.model_copy(update=updates) if updates else options


# ----------------------------------------------------------------------------- base class


class TraceGenerator:
    """Base class: ``Options`` validates the parameters, ``make`` makes one trace.

    ``device`` draws the device's own parameters (when any option is a distribution
    spec) and then calls ``make`` with plain numbers, using the same stream throughout.
    """

    Options: ClassVar[type[GeneratorOptions]] = GeneratorOptions

    def __init__(self, options: GeneratorOptions) -> None:
        self.options = options
        self.heterogeneous = any(_has_dist(getattr(options, n))
                                 for n in type(options).model_fields)

    def device(self, index: int, horizon_s: float, rng: np.random.Generator) -> DeviceSignals:
        o = resolve(self.options, rng) if self.heterogeneous else self.options
        return self.make(o, horizon_s, rng)

    def make(self, o: Any, horizon_s: float, rng: np.random.Generator) -> DeviceSignals:
        """One device's trace from plain (already drawn) options ``o``."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return self.options.model_dump(mode="json")


GENERATORS: Registry[type[TraceGenerator]] = Registry("trace generator")


# ----------------------------------------------------------------------------- helpers


def alternating_online(rng: np.random.Generator, horizon_s: float, mean_online_s: float,
                       mean_offline_s: float) -> tuple[np.ndarray, np.ndarray]:
    """On/off periods with exponential lengths (an alternating renewal process).

    The first state is drawn from the stationary share ``on / (on + off)``; exponential
    lengths are memoryless, so the process is stationary from t=0.
    """
    if mean_offline_s <= 0.0:
        return np.zeros(1), np.ones(1, np.uint8)
    p_on = mean_online_s / (mean_online_s + mean_offline_s)
    state0 = state = bool(rng.random() < p_on)
    n = int(horizon_s / (mean_online_s + mean_offline_s) * 2 + 8)
    chunks = [np.zeros(1)]
    t = 0.0
    # Written for speed (this runs once per device a huge fleet touches), with the draws
    # and the arithmetic of the plain version: period lengths e * mean, with the means
    # alternating from the current state; period ends t + cumsum (non-decreasing, so
    # those before the horizon are a prefix).
    while True:
        e = rng.standard_exponential(n)
        on, off = (mean_online_s, mean_offline_s) if state else (mean_offline_s, mean_online_s)
        e[0::2] *= on
        e[1::2] *= off
        ends = np.cumsum(e)
        if t != 0.0:
            ends = t + ends
        k = int(np.searchsorted(ends, horizon_s, "left"))
        chunks.append(ends[:k])
        if k < n:
            break
        t = float(ends[-1])
        state = state != (n % 2 == 1)  # the state after n more changes
    times = np.concatenate(chunks)
    states = np.empty(len(times), np.uint8)  # each change flips the state
    states[0::2], states[1::2] = state0, not state0
    return times, states


def intervals_signal(starts: np.ndarray, lengths: np.ndarray,
                     period_s: float) -> tuple[np.ndarray, np.ndarray]:
    """A periodic 0/1 signal that is 1 on the union of ``[start, start + length)``.

    Starts are taken modulo the period and an interval that runs past the period's end
    wraps around to its beginning, so windows such as 22:00-06:00 need no special case.
    Returns breakpoints (starting at 0, strictly increasing, below ``period_s``) and values.
    """
    p = float(period_s)
    _, s = split_period_array(starts, p)
    n = np.asarray(lengths, np.float64)
    if np.any(n >= p):
        return np.zeros(1), np.ones(1, np.uint8)
    keep = n > 0
    s, e = s[keep], s[keep] + n[keep]
    wrap = e > p
    a = np.concatenate([s, np.zeros(int(wrap.sum()))])
    b = np.concatenate([np.minimum(e, p), e[wrap] - p])
    if len(a) == 0:
        return np.zeros(1), np.zeros(1, np.uint8)
    order = np.argsort(a, kind="stable")
    a, b = a[order], b[order]
    # merge overlapping or touching intervals: a new group starts past all earlier ends
    reach = np.maximum.accumulate(b)
    new = np.ones(len(a), bool)
    new[1:] = a[1:] > reach[:-1]
    first = np.flatnonzero(new)
    on = a[first]
    off = reach[np.append(first[1:] - 1, len(a) - 1)]
    t = np.column_stack([on, off]).ravel()
    v = np.tile(np.array([1, 0], np.uint8), len(on))
    if off[-1] >= p:  # the last window reaches the period's end: no 'off' there
        t, v = t[:-1], v[:-1]
    if t[0] > 0.0:
        t, v = np.concatenate([[0.0], t]), np.concatenate([[0], v]).astype(np.uint8)
    return t, v


def _online(rng: np.random.Generator, horizon_s: float, o: Any) -> tuple[np.ndarray, np.ndarray]:
    return alternating_online(rng, horizon_s, o.mean_online_s, o.mean_offline_s)


def _online_field(default_s: float = 4 * 3600.0) -> Any:
    return Field(default_s, description="mean length of an online period (exponential)")


def _offline_field() -> Any:
    return Field(0.0, description="mean length of an offline period (exponential); "
                 "0: always online")


# ----------------------------------------------------------------------------- generators


@GENERATORS.register("constant")
class Constant(TraceGenerator):
    """Availability fixed at ``level``; always online unless on/off means are given."""

    class Options(GeneratorOptions):
        level: Share = Field(1.0, description="share of peak compute")
        mean_online_s: Positive = _online_field(3600.0)
        mean_offline_s: NonNegative = _offline_field()

    def make(self, o: Any, horizon_s: float, rng: np.random.Generator) -> DeviceSignals:
        on_t, on_v = _online(rng, horizon_s, o)
        return DeviceSignals(np.zeros(1), np.full(1, o.level), on_t, on_v)


@GENERATORS.register("uniform")
class Uniform(TraceGenerator):
    """A new availability level, uniform in [low, high], every ``interval_s``.

    With ``intervals: fixed`` levels change every ``interval_s`` exactly, the first change
    after a uniform share of an interval so that devices do not change in lockstep; with
    ``exponential`` the intervals are exponential with that mean (a Poisson process of
    changes). The long-run mean level is ``(low + high) / 2``. On/off periods as in
    ``constant``.
    """

    class Options(GeneratorOptions):
        low: Share = Field(0.2, description="lowest level")
        high: Share = Field(1.0, description="highest level")
        interval_s: Positive = Field(600.0, description="time between level changes "
                                     "(exact, or the mean)")
        intervals: Literal["fixed", "exponential"] = Field("fixed", description="fixed or "
                                                           "exponential interval lengths")
        mean_online_s: Positive = _online_field()
        mean_offline_s: NonNegative = _offline_field()

        @model_validator(mode="after")
        def _order(self) -> Uniform.Options:
            if isinstance(self.low, float) and isinstance(self.high, float) \
                    and self.high < self.low:
                raise ValueError("high must be >= low")
            return self

    def make(self, o: Any, horizon_s: float, rng: np.random.Generator) -> DeviceSignals:
        lo, hi = min(o.low, o.high), max(o.low, o.high)  # per-device draws may cross
        dt = o.interval_s
        if o.intervals == "fixed":
            first = rng.random() * dt
            inner = first + dt * np.arange(int(max(horizon_s - first, 0.0) // dt) + 1)
            t = np.concatenate([[0.0], inner[(inner > 0.0) & (inner < horizon_s)]])
        else:
            t = _poisson_times(rng, horizon_s, dt)
        v = rng.uniform(lo, hi, len(t))
        on_t, on_v = _online(rng, horizon_s, o)
        return DeviceSignals(t, v, on_t, on_v)


def _poisson_times(rng: np.random.Generator, horizon_s: float, mean_s: float) -> np.ndarray:
    """0 followed by the points of a Poisson process of rate 1/mean_s in (0, horizon_s)."""
    parts = [np.zeros(1)]
    t = 0.0
    n = int(horizon_s / mean_s * 1.2) + 16
    while True:
        ends = t + np.cumsum(rng.standard_exponential(n) * mean_s)
        keep = ends < horizon_s
        parts.append(ends[keep])
        if not keep[-1]:
            break
        t = float(ends[-1])
    out = np.concatenate(parts)
    # exponential draws of exactly 0 would repeat a time; the format needs strict increase
    return out[np.concatenate([[True], np.diff(out) > 0])]


@dataclass(frozen=True)
class _Chain:
    """A Markov chain's constants, computed once per distinct set of options."""

    levels: np.ndarray
    dwell: np.ndarray
    jump: np.ndarray
    jump_cdf: list[list[float]]
    stationary: np.ndarray
    uniform_jumps: bool
    #: the first state's cumulative distribution, as ``Generator.choice`` computes it
    start_cdf: list[float]
    one_dwell: bool  # the same mean dwell in every state


@GENERATORS.register("markov")
class Markov(TraceGenerator):
    """Markov-modulated availability with on/off periods.

    Availability jumps between ``levels`` as a continuous-time Markov chain: the device
    stays in state i for an exponential time of mean ``mean_dwell_s[i]``, then jumps to
    state j with probability ``jump[i][j]`` (by default uniformly to any other state). The
    stationary share of time in state i is proportional to ``mu_i * mean_dwell_s[i]``,
    where ``mu`` is the stationary distribution of ``jump``. Independently, the device is
    online and offline for exponential times of means ``mean_online_s`` and
    ``mean_offline_s`` (offline 0: always online). ``jump`` cannot be a distribution spec.
    """

    class Options(GeneratorOptions):
        levels: tuple[Share, ...] = Field((1.0, 0.6, 0.3), min_length=1,
                                          description="availability of each state")
        mean_dwell_s: Positives = Field(
            600.0, description="mean stay in a state (one value, or one per level)")
        jump: tuple[tuple[float, ...], ...] | None = Field(
            None, description="row-stochastic jump matrix with a zero diagonal "
            "(default: uniform to the other states)")
        mean_online_s: Positive = _online_field()
        mean_offline_s: NonNegative = _offline_field()

        @model_validator(mode="after")
        def _shapes(self) -> Markov.Options:
            m = len(self.levels)
            d = self.mean_dwell_s
            if isinstance(d, tuple) and len(d) != m:
                raise ValueError(f"mean_dwell_s needs one value per level ({m})")
            if self.jump is not None:
                p = np.asarray(self.jump, dtype=float)
                if p.shape != (m, m) or np.any(p < 0) or not np.allclose(p.sum(1), 1.0):
                    raise ValueError(f"jump must be a {m}x{m} row-stochastic matrix")
                if np.any(np.diag(p) > 0):
                    raise ValueError("jump must have a zero diagonal (dwell times model stays)")
            return self

    def __init__(self, options: GeneratorOptions) -> None:
        super().__init__(options)
        if not self.heterogeneous:
            c = self._chain(self.options)
            self._fixed: _Chain | None = c
            self.levels, self.dwell, self.jump = c.levels, c.dwell, c.jump
            self.stationary = c.stationary
        else:
            self._fixed = None

    @staticmethod
    def _chain(o: Any) -> _Chain:
        m = len(o.levels)
        levels = np.asarray(o.levels, dtype=np.float64)
        dwell = np.broadcast_to(np.asarray(o.mean_dwell_s, dtype=np.float64), (m,)).copy()
        if o.jump is None:
            p = (np.ones((m, m)) - np.eye(m)) / max(m - 1, 1)
        else:
            p = np.asarray(o.jump, dtype=np.float64)
        stationary = _stationary(p, dwell)
        start_cdf = stationary.cumsum()
        start_cdf /= start_cdf[-1]
        return _Chain(levels, dwell, p, np.cumsum(p, axis=1).tolist(), stationary,
                      o.jump is None, start_cdf.tolist(), bool(np.all(dwell == dwell[0])))

    def stationary_time_share(self) -> np.ndarray:
        """Long-run share of time spent at each level (fixed options only)."""
        if self._fixed is None:
            raise ValueError("options hold distribution specs: the share differs per device")
        return self._fixed.stationary

    @staticmethod
    def _states(c: _Chain, rng: np.random.Generator, s0: int, n: int) -> np.ndarray:
        m = len(c.levels)
        if m == 1:
            return np.zeros(n, np.int64)
        if c.uniform_jumps:
            # Uniform jumps to another state: a random walk of non-zero increments mod m,
            # vectorised (no Python loop over the chain).
            inc = rng.integers(1, m, size=n - 1)
            st = np.empty(n, np.int64)
            st[0] = 0
            np.cumsum(inc, out=st[1:])
            st += s0
            st %= m
            return st
        u = rng.random(n - 1).tolist()
        out = [s0]
        s = s0
        cdf = c.jump_cdf
        for x in u:  # general jumps are sequential; bisect on lists is the cheap step
            s = min(bisect_right(cdf[s], x), m - 1)
            out.append(s)
        return np.asarray(out, np.int64)

    def make(self, o: Any, horizon_s: float, rng: np.random.Generator) -> DeviceSignals:
        c = self._fixed if self._fixed is not None else self._chain(o)
        # rng.choice(m, p=stationary), without its checks of p: the same single draw
        s0 = bisect_right(c.start_cdf, rng.random())
        mean_dwell = float(np.dot(c.stationary, c.dwell))
        n = int(horizon_s / mean_dwell * 1.5) + 16
        times: list[np.ndarray] = []
        states: list[np.ndarray] = []
        t = 0.0
        # Written for speed (this runs once per device a huge fleet touches), with the
        # draws and the arithmetic of the plain version: start times t + cumsum of the
        # holds are non-decreasing, so those before the horizon are a prefix.
        while True:
            st = self._states(c, rng, s0, n)
            hold = rng.standard_exponential(n)
            hold *= c.dwell[0] if c.one_dwell else c.dwell[st]
            starts = np.empty(n)
            starts[0] = 0.0
            np.cumsum(hold[:-1], out=starts[1:])
            if t != 0.0:
                starts += t
            k = int(np.searchsorted(starts, horizon_s, "left"))
            times.append(starts[:k])
            states.append(st[:k])
            if k < n:
                break
            t = float(starts[-1] + hold[-1])
            if t >= horizon_s:
                break
            s0 = int(self._states(c, rng, int(st[-1]), 2)[1])
        at = times[0] if len(times) == 1 else np.concatenate(times)
        av = c.levels[states[0] if len(states) == 1 else np.concatenate(states)]
        on_t, on_v = _online(rng, horizon_s, o)
        return DeviceSignals(at, av, on_t, on_v)


def _stationary(jump: np.ndarray, dwell: np.ndarray) -> np.ndarray:
    """Long-run time share per state of a chain with jump matrix ``jump`` and mean dwells."""
    m = len(dwell)
    if m == 1:
        return np.ones(1)
    w, vecs = np.linalg.eig(jump.T)
    mu = np.real(vecs[:, np.argmin(np.abs(w - 1.0))])
    mu = mu / mu.sum()
    share = mu * dwell
    return share / share.sum()


@GENERATORS.register("diurnal")
class Diurnal(TraceGenerator):
    """A daily pattern: availability follows a smooth day curve plus noise.

    The mean availability at local hour h is ``night_level + (day_level - night_level) *
    (1 + cos(2 pi (h - busiest_hour) / 24)) / 2``: lowest (``day_level``) at
    ``busiest_hour``, when the owner uses the phone most, and highest (``night_level``)
    twelve hours later. Every ``step_s`` the level is redrawn as that mean plus Gaussian
    noise of sd ``noise_sd``, clipped to [0, 1]. The device is online only while it
    charges: every night a window of ``charge_hours`` opening at local hour
    ``charge_start_h`` plus Gaussian jitter of sd ``charge_jitter_h`` (``charge_hours``
    24: always online). Local time is ``t / 3600 + phase_h`` hours, so ``phase_h`` as a
    distribution spec spreads devices over time zones or habits. Use a horizon of whole
    days, since generated traces repeat with the horizon.
    """

    class Options(GeneratorOptions):
        night_level: Share = Field(0.9, description="mean availability at the quietest hour")
        day_level: Share = Field(0.3, description="mean availability at the busiest hour")
        busiest_hour: Real = Field(14.0, description="local hour of lowest availability")
        noise_sd: NonNegative = Field(0.1, description="sd of the noise added per step")
        step_s: Positive = Field(900.0, description="time between level changes")
        phase_h: Real = Field(0.0, description="local hour at t = 0 (time zone / habits)")
        charge_start_h: Real = Field(22.0, description="local hour the charging (online) "
                                     "window opens")
        charge_hours: Hours = Field(8.0, description="length of the nightly online window; "
                                    "24: always online")
        charge_jitter_h: NonNegative = Field(0.5, description="sd of the window's opening, "
                                             "drawn per night")

    @staticmethod
    def mean_level(o: Any, local_hour: np.ndarray) -> np.ndarray:
        """The day curve: mean availability at ``local_hour`` (before noise and clipping)."""
        c = (1.0 + np.cos(2 * np.pi * (np.asarray(local_hour) - o.busiest_hour) / 24.0)) / 2
        return o.night_level + (o.day_level - o.night_level) * c

    def make(self, o: Any, horizon_s: float, rng: np.random.Generator) -> DeviceSignals:
        t = np.arange(0.0, horizon_s, o.step_s)
        mid_h = (t + o.step_s / 2) / 3600.0 + o.phase_h
        v = np.clip(self.mean_level(o, mid_h) + o.noise_sd * rng.standard_normal(len(t)),
                    0.0, 1.0)
        days = max(math.ceil(horizon_s / DAY_S), 1)
        if o.charge_hours >= 24.0:
            on_t, on_v = np.zeros(1), np.ones(1, np.uint8)
        else:
            opens_h = np.arange(days) * 24.0 + o.charge_start_h - o.phase_h \
                + o.charge_jitter_h * rng.standard_normal(days)
            on_t, on_v = intervals_signal(opens_h * 3600.0, np.full(days, o.charge_hours * 3600),
                                          horizon_s)
        return DeviceSignals(t, v, on_t, on_v)


@GENERATORS.register("bursty")
class Bursty(TraceGenerator):
    """Background contention in bursts that lower availability from a base level.

    Bursts arrive as a Poisson process of rate ``burst_rate_per_h``; each lasts an
    exponential time of mean ``mean_burst_s`` and takes a share of peak compute drawn
    uniformly from [``depth_low``, ``depth_high``]. Overlapping bursts add up:
    availability is ``max(0, base - sum of the depths of the bursts under way)``. Bursts
    that run past the horizon wrap to its start, so the periodic trace is stationary; the
    long-run mean is ``base - rate * mean_burst_s / 3600 * mean depth`` while clipping at 0
    is rare. On/off periods as in ``constant``.
    """

    class Options(GeneratorOptions):
        base: Share = Field(1.0, description="availability without contention")
        burst_rate_per_h: NonNegative = Field(2.0, description="mean bursts per hour")
        mean_burst_s: Positive = Field(300.0, description="mean burst length (exponential)")
        depth_low: Share = Field(0.2, description="smallest share of peak a burst takes")
        depth_high: Share = Field(0.6, description="largest share of peak a burst takes")
        mean_online_s: Positive = _online_field()
        mean_offline_s: NonNegative = _offline_field()

        @model_validator(mode="after")
        def _order(self) -> Bursty.Options:
            if isinstance(self.depth_low, float) and isinstance(self.depth_high, float) \
                    and self.depth_high < self.depth_low:
                raise ValueError("depth_high must be >= depth_low")
            return self

    def make(self, o: Any, horizon_s: float, rng: np.random.Generator) -> DeviceSignals:
        h = float(horizon_s)
        k = int(rng.poisson(o.burst_rate_per_h * h / 3600.0))
        # a Poisson process on [0, h) given its count: uniform points
        s = np.sort(rng.uniform(0.0, h, k))
        length = rng.standard_exponential(k) * o.mean_burst_s
        lo, hi = min(o.depth_low, o.depth_high), max(o.depth_low, o.depth_high)
        d = rng.uniform(lo, hi, k)
        e = s + length
        wrap = e >= h
        full = wrap & (e - h >= s)  # longer than the horizon: covers all of it
        part = wrap & ~full
        ev_t = np.concatenate([s[~full], e[~wrap], np.zeros(int(wrap.sum())), e[part] - h])
        ev_d = np.concatenate([d[~full], -d[~wrap], d[wrap], -d[part]])
        order = np.argsort(ev_t, kind="stable")
        ev_t, ev_d = ev_t[order], ev_d[order]
        # rounding clears the residue of adding and removing the same depths
        load = np.round(np.cumsum(ev_d), 12)
        # the level after all events at one time
        last = np.append(ev_t[1:] != ev_t[:-1], True) if len(ev_t) else np.zeros(0, bool)
        t = np.concatenate([[0.0], ev_t[last]])
        lv = np.concatenate([[0.0], load[last]])
        if len(t) > 1 and t[1] == 0.0:  # events at 0 set the initial level
            t, lv = t[1:], lv[1:]
        v = np.clip(o.base - lv, 0.0, 1.0)
        keep = np.concatenate([[True], v[1:] != v[:-1]])
        on_t, on_v = _online(rng, horizon_s, o)
        return DeviceSignals(t[keep], v[keep], on_t, on_v)
