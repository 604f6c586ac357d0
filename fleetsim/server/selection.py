"""Client selectors: which online devices a round selects, registered by name.

``random`` (the default) draws uniformly among the online devices; ``oort`` (Lai et al.,
OSDI 2021) favours devices of high recent loss that are fast; ``tifl`` (Chai et al., HPDC
2020) draws each round from one tier of devices of similar latency. A selector learns
from :class:`DeviceReport` feedback after every round; it never sees the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleetsim.errors import UserError
from fleetsim.registry import Registry


class SelectorOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class DeviceReport:
    """What the server learnt about one selected device after a round."""

    device: int
    round: int
    status: str  # completed | late | dropped | not_needed | rejected | too_slow
    #: from round start to arrival (or drop / deadline); for too_slow, the time one
    #: mini-batch and the upload would have taken (inf: the device would never finish)
    duration_s: float
    loss: float  # mean training loss (nan if unknown, e.g. timing-only runs)
    steps: int
    samples: int


@dataclass(frozen=True)
class FleetView:
    """Read-only facts about the fleet a selector may use."""

    n_devices: int
    class_of: np.ndarray
    n_samples: np.ndarray
    #: (device, time) -> its battery's charge as a share of capacity (None: the fleet has
    #: no batteries; fleetsim.energy)
    battery_fraction: Callable[[int, float], float] | None = None


class Selector:
    """Base: random selection among online devices."""

    Options: ClassVar[type[SelectorOptions]] = SelectorOptions

    def __init__(self, options: SelectorOptions, fleet: FleetView) -> None:
        self.options = options
        self.fleet = fleet

    def select(self, round: int, now_s: float, n: int, is_online: Callable[[int], bool],
               rng: np.random.Generator) -> list[int]:
        raise NotImplementedError

    def select_idle(self, version: int, now_s: float, n: int,
                    is_available: Callable[[int], bool], rng: np.random.Generator
                    ) -> list[int]:
        """Asynchronous mode: ``n`` devices among those idle and online
        (``is_available``), asked for every few arrivals. Defaults to :meth:`select`."""
        return self.select(version, now_s, n, is_available, rng)

    def feedback(self, reports: Sequence[DeviceReport]) -> None:
        """Learn from the last round (default: nothing)."""


SELECTORS: Registry[type[Selector]] = Registry("selector")


def permutation(rng: np.random.Generator, n: int) -> np.ndarray:
    """``rng.permutation(n)``, the same values and the same draws, ~25% faster at 10^6.

    numpy's shuffle draws each swap partner from the position alone, never from the
    values, so shuffling 4-byte indices gives exactly the permutation of 8-byte ones and
    moves half the memory (the shuffle of a 10^6-device fleet is memory-bound).
    """
    order = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
    rng.shuffle(order)
    return order


def _take_online(candidates: list[int], n: int, is_online: Callable[[int], bool],
                 out: list[int], seen: set[int] | None = None) -> bool:
    """Append the online ``candidates``, in order, to ``out`` until it holds ``n``
    (skipping those in ``seen``, when given, and adding the rest to it); True once full.

    A check that can make traces for many devices at once (``is_online.prefetch``:
    counter streams) is told the next few candidates first, about as many as are still
    needed: the same devices are checked in the same order, only their traces are made
    together.
    """
    prefetch = getattr(is_online, "prefetch", None)
    j = 0
    while j < len(candidates):
        part = candidates[j:j + (n - len(out)) * 5 // 4 + 8] if prefetch else candidates[j:]
        j += len(part)
        if prefetch is not None:
            prefetch(part if seen is None else [d for d in part if d not in seen])
        for d in part:
            if seen is not None:
                if d in seen:
                    continue
                seen.add(d)
            if is_online(d):
                out.append(d)
                if len(out) == n:
                    return True
    return False


def online_sample(order: np.ndarray, n: int, is_online: Callable[[int], bool]) -> list[int]:
    """The first ``n`` online devices of ``order`` (checks only as many as needed)."""
    out: list[int] = []
    if n <= 0:
        return out
    # Walk ``order`` in growing chunks, converting only the head to Python ints: a
    # 100,000-device order must not become a 100,000-item list every round when the first
    # few hundred entries usually suffice.
    lo, size = 0, max(2 * n, 64)
    while lo < len(order):
        if _take_online(order[lo:lo + size].tolist(), n, is_online, out):
            return out
        lo += size
        size *= 4
    return out


class RandomOptions(SelectorOptions):
    candidates: Literal["permutation", "draws"] = Field(
        "permutation", description="how candidates are drawn, both uniform among the "
        "online devices: permutation walks a permutation of the whole fleet each round "
        "(~45 ms at 1,000,000 devices); draws takes 8K random device ids and walks a "
        "permutation only when fewer than K of them are online (for huge fleets; it "
        "selects other devices than permutation for the same seed)")


@SELECTORS.register("random")
class RandomSelector(Selector):
    """Uniformly random among the devices online at the round's start (the default)."""

    Options = RandomOptions
    options: RandomOptions

    def select(self, round: int, now_s: float, n: int, is_online: Callable[[int], bool],
               rng: np.random.Generator) -> list[int]:
        if self.options.candidates == "draws":
            return self.select_idle(round, now_s, n, is_online, rng)
        # A permutation is cheap even for 100k devices (~1 ms) and, walked until n online
        # devices are found, touches only the traces of the devices it checks.
        return online_sample(permutation(rng, self.fleet.n_devices), n, is_online)

    def select_idle(self, version: int, now_s: float, n: int,
                    is_available: Callable[[int], bool], rng: np.random.Generator
                    ) -> list[int]:
        # Asked after nearly every arrival for one or a few devices: a permutation of a
        # 100,000-device fleet each time would cost ~1 ms, most of an async job's budget.
        # Draw a few candidates at random instead (uniform among the available, as the
        # permutation is), and walk a permutation only when too few of them are available.
        big = self.fleet.n_devices
        if n * 8 < big:
            out: list[int] = []
            if _take_online(rng.integers(0, big, size=8 * n).tolist(), n, is_available, out,
                            set()):
                return out
        return online_sample(permutation(rng, big), n, is_available)


class BatteryOptions(RandomOptions):
    min_fraction: float = Field(0.3, ge=0.0, le=1.0, description="skip devices whose "
                                "battery holds less than this share of its capacity")


@SELECTORS.register("battery")
class BatterySelector(RandomSelector):
    """Uniformly random among the online devices whose battery is at least
    ``min_fraction`` full (the example of a selector that sees energy).

    Devices without a battery count as full. A fleet without batteries is refused: the
    selector would then be plain ``random`` under another name.
    """

    Options = BatteryOptions
    options: BatteryOptions

    def __init__(self, options: SelectorOptions, fleet: FleetView) -> None:
        super().__init__(options, fleet)
        if fleet.battery_fraction is None:
            raise UserError("at 'selector.name': selector 'battery' needs batteries. "
                            "Allowed: fleet.classes[i].energy.battery on some class, or "
                            "another selector.")

    def _charged(self, now_s: float, ok: Callable[[int], bool]) -> Callable[[int], bool]:
        frac, low = self.fleet.battery_fraction, self.options.min_fraction
        assert frac is not None
        return lambda d: ok(d) and frac(d, now_s) >= low

    def select(self, round: int, now_s: float, n: int, is_online: Callable[[int], bool],
               rng: np.random.Generator) -> list[int]:
        return super().select(round, now_s, n, self._charged(now_s, is_online), rng)

    def select_idle(self, version: int, now_s: float, n: int,
                    is_available: Callable[[int], bool], rng: np.random.Generator
                    ) -> list[int]:
        return super().select_idle(version, now_s, n, self._charged(now_s, is_available),
                                   rng)


# ----------------------------------------------------------------------------- Oort


class OortOptions(SelectorOptions):
    alpha: float = Field(2.0, ge=0.0, description="system penalty exponent: a device slower "
                         "than the preferred duration T has its score times (T/t)^alpha")
    preferred_duration_s: float | None = Field(None, gt=0, description="T; null: the "
                                               "pacer's percentile of known durations")
    round_threshold: float = Field(30.0, gt=0, le=100, description="pacer: T starts as "
                                   "this percentile of the known durations (FedScale: 30)")
    pacer_step: int = Field(20, ge=1, description="pacer: rounds W between adjustments of T")
    pacer_delta: float = Field(5.0, ge=0, description="pacer: percentile points T moves by")
    epsilon: float = Field(0.9, ge=0, le=1, description="initial share of exploration")
    epsilon_decay: float = Field(0.98, gt=0, le=1, description="epsilon factor per round")
    epsilon_min: float = Field(0.2, ge=0, le=1, description="epsilon floor (the paper: 0.2; "
                               "FedScale: 0.3)")
    cut_off: float = Field(0.95, gt=0, le=1, description="exploit among devices scoring at "
                           "least this times the score at rank (1-epsilon)K")
    clip_percentile: float = Field(95.0, gt=0, le=100, description="statistical utilities "
                                   "are clipped at this percentile before normalising")
    staleness: float = Field(0.1, ge=0, description="c of the staleness bonus "
                             "sqrt(c ln(R) / L), L the round the device last took part")
    sample_window: float = Field(5.0, ge=1, description="explore among the top "
                                 "sample_window x slots unexplored devices by sample count")


@SELECTORS.register("oort")
class OortSelector(Selector):
    """Oort (Lai et al., OSDI 2021): fast devices of high loss, plus exploration.

    F. Lai, X. Zhu, H. V. Madhyastha, M. Chowdhury, "Oort: Efficient Federated
    Learning via Guided Participant Selection", OSDI 2021 (arXiv:2010.06081).

    Exploits devices of high utility: the statistical utility ``|B| sqrt(mean loss^2)``
    from their last round (min-max normalised after clipping), plus a staleness bonus,
    times ``(T/t)^alpha`` when their last duration ``t`` exceeded the preferred duration
    ``T``; explores unexplored devices (preferring those with more samples) with a share
    ``epsilon`` of the slots that decays each round. A pacer relaxes ``T`` when utility
    stops improving. fleetsim reports each device's mean mini-batch loss, so
    ``sqrt(mean loss^2)`` is approximated by it and ``|B|`` by the mini-batches done; in
    timing-only runs (no losses) the loss is taken as 1, so the utility is the work done
    and Oort selects on speed and staleness alone (a documented stand-in).
    """

    Options = OortOptions
    options: OortOptions

    def __init__(self, options: OortOptions, fleet: FleetView) -> None:
        super().__init__(options, fleet)
        n = fleet.n_devices
        self.utility = np.zeros(n)
        self.duration_s = np.full(n, np.nan)
        self.last_round = np.full(n, -1)
        self.explored = np.zeros(n, dtype=bool)
        self.threshold = options.round_threshold
        self.exploit_history: list[float] = []  # utility of the exploited picks, per round
        # asynchronous mode (select_idle): the round is the model version, asked for a
        # few devices at a time; the pacer runs once per version, and the exploitation
        # share is kept over the selections (exploitation owed, carried between them)
        self._paced_version = -1
        self._exploit_credit = 0.0
        self._history_round = -1

    def epsilon(self, round: int) -> float:
        o = self.options
        return max(o.epsilon_min, o.epsilon * o.epsilon_decay ** round)

    def preferred_s(self) -> float:
        """T: fixed, or the pacer's percentile of the known durations."""
        if self.options.preferred_duration_s is not None:
            return self.options.preferred_duration_s
        known = self.duration_s[np.isfinite(self.duration_s)]
        if self.threshold >= 100 or not known.size:
            return math.inf
        return float(np.percentile(known, self.threshold))

    def scores(self, round: int, devices: np.ndarray) -> np.ndarray:
        """Exploitation score of explored ``devices`` in ``round``."""
        o = self.options
        u = self.utility[devices]
        if u.size:
            u = np.minimum(u, np.percentile(u, o.clip_percentile))
        span = u.max() - u.min() if u.size else 0.0
        s = (u - u.min()) / span if span > 0 else np.zeros_like(u)
        last = self.last_round[devices] + 1  # rounds counted from 1, as in Oort
        s = s + np.sqrt(o.staleness * math.log(round + 1) / np.maximum(last, 1))
        t_pref = self.preferred_s()
        dur = self.duration_s[devices]
        # nan: not known yet, no penalty; inf (a device that would never finish) gets
        # (T/inf)^alpha = 0 like any slower device, not the unknown device's free pass
        slow = ~np.isnan(dur) & (dur > t_pref)
        s[slow] *= (t_pref / dur[slow]) ** o.alpha
        return s

    def select(self, round: int, now_s: float, n: int, is_online: Callable[[int], bool],
               rng: np.random.Generator) -> list[int]:
        self._pace(round)
        # floor with a tolerance: (1 - 0.3) * 90 is 62.99999999999999 in floating point
        return self._pick(round, n, math.floor((1.0 - self.epsilon(round)) * n + 1e-9),
                          is_online, rng)

    def select_idle(self, version: int, now_s: float, n: int,
                    is_available: Callable[[int], bool], rng: np.random.Generator
                    ) -> list[int]:
        """Asynchronous mode: asked for one or a few devices after nearly every arrival,
        where ``floor((1 - epsilon) * 1)`` would never exploit. Oort's round is the model
        version: the pacer runs once per version, and the exploitation owed,
        ``(1 - epsilon) * n`` per selection, is carried from one selection to the next,
        so over a run the exploited share is ``1 - epsilon`` as in synchronous rounds."""
        if version != self._paced_version:
            self._paced_version = version
            self._pace(version)
        self._exploit_credit += (1.0 - self.epsilon(version)) * n
        want = min(n, math.floor(self._exploit_credit + 1e-9))
        self._exploit_credit -= want
        return self._pick(version, n, want, is_available, rng)

    def _pick(self, round: int, n: int, n_exploit: int, is_online: Callable[[int], bool],
              rng: np.random.Generator) -> list[int]:
        """``n`` devices, ``n_exploit`` of them (at most) by utility, the rest explored."""
        # only explored devices and a window of unexplored ones are checked for being
        # online: a huge fleet's traces are then never all built
        explored = np.array([d for d in np.flatnonzero(self.explored).tolist() if is_online(d)],
                            dtype=int)
        n_exploit = min(explored.size, n_exploit)
        fresh = self._fresh_online(n - n_exploit, is_online, rng)
        if fresh.size < n - n_exploit:  # too few unexplored devices: exploit more
            n_exploit = min(explored.size, n - fresh.size)
        picked: list[int] = []
        if n_exploit:
            score = self.scores(round, explored)
            cut = np.sort(score)[::-1][n_exploit - 1] * self.options.cut_off
            cand = np.flatnonzero(score >= cut)
            picked += _weighted(explored[cand], score[cand], n_exploit, rng)
            # one entry per round (per version in async mode, however many selections)
            if round == self._history_round and self.exploit_history:
                self.exploit_history[-1] += float(self.utility[picked].sum())
            else:
                self.exploit_history.append(float(self.utility[picked].sum()))
                self._history_round = round
        n_explore = min(n - len(picked), fresh.size)
        if n_explore:
            # Oort ranks unexplored devices by their initial utility, the samples they hold
            picked += _weighted(fresh, self.fleet.n_samples[fresh].astype(float), n_explore,
                                rng)
        return sorted(picked)

    def _fresh_online(self, k: int, is_online: Callable[[int], bool],
                      rng: np.random.Generator) -> np.ndarray:
        """Up to ``sample_window x k`` online unexplored devices, most samples first."""
        cand = np.flatnonzero(~self.explored)
        if k <= 0 or not cand.size:
            return np.zeros(0, dtype=int)
        # ties in random order, so devices of equal size share the exploration
        order = cand[np.lexsort((rng.random(cand.size), -self.fleet.n_samples[cand]))]
        want = max(k, int(self.options.sample_window * k))
        return np.asarray(online_sample(order, want, is_online), dtype=int)

    def _pace(self, round: int) -> None:
        """Oort's pacer: relax T when utility stalls, tighten it when it jumps."""
        o, h = self.options, self.exploit_history
        w = o.pacer_step
        if o.preferred_duration_s is not None or round == 0 or round % w or len(h) < 2 * w:
            return
        last, prev = sum(h[-w:]), sum(h[-2 * w:-w])
        if abs(last - prev) <= 0.1 * prev:
            self.threshold = min(100.0, self.threshold + o.pacer_delta)
        elif abs(last - prev) >= 5 * prev:
            self.threshold = max(o.pacer_delta, self.threshold - o.pacer_delta)

    def feedback(self, reports: Sequence[DeviceReport]) -> None:
        for r in reports:
            d = r.device
            self.explored[d] = True
            self.last_round[d] = r.round
            if r.status != "dropped":  # going offline says nothing about speed
                self.duration_s[d] = r.duration_s
            if r.status == "completed":
                loss = 1.0 if math.isnan(r.loss) else abs(r.loss)  # timing-only stand-in
                self.utility[d] = r.steps * loss


def _weighted(devices: np.ndarray, weight: np.ndarray, k: int,
              rng: np.random.Generator) -> list[int]:
    """``k`` of ``devices`` without replacement, with probability proportional to weight."""
    w = np.maximum(weight, 0.0) + 1e-12  # all-zero weights: uniform
    return [int(d) for d in rng.choice(devices, size=k, replace=False, p=w / w.sum())]


# ----------------------------------------------------------------------------- TiFL


class TiFLOptions(SelectorOptions):
    tiers: int = Field(5, ge=1, description="number of latency tiers (equal-size groups)")
    probabilities: tuple[float, ...] | None = Field(None, description="chance of each "
                                                    "tier, fastest first (null: uniform)")
    profile_rounds: int = Field(1, ge=0, description="first rounds select at random to "
                                "observe latencies before tiering")

    @model_validator(mode="after")
    def _probabilities(self) -> TiFLOptions:
        p = self.probabilities
        if p is not None:
            if len(p) != self.tiers:
                raise ValueError(f"give one probability per tier ({self.tiers})")
            if min(p) < 0 or not math.isclose(sum(p), 1.0, abs_tol=1e-6):
                raise ValueError("probabilities must be >= 0 and sum to 1")
        return self


@SELECTORS.register("tifl")
class TiFLSelector(Selector):
    """TiFL (Chai et al., HPDC 2020): each round, devices from one tier of similar latency.

    Z. Chai, A. Ali, S. Zawad, S. Truex, A. Anwar, N. Baracaldo, Y. Zhou,
    H. Ludwig, F. Yan, Y. Cheng, "TiFL: A Tier-based Federated Learning System",
    HPDC 2020 (arXiv:2001.09249).

    Devices are split into ``tiers`` equal-size groups by their mean observed round
    latency (a device not yet observed takes its class's mean); each round one tier is
    drawn with ``probabilities`` and the devices are drawn uniformly within it, so a
    round waits only for devices of similar speed. The first ``profile_rounds`` select at
    random (TiFL's profiling). fleetsim choices: when a tier has too few online devices
    the nearest tiers fill in, and devices with no estimate at all are used last.
    TiFL's adaptive, accuracy-driven tier probabilities and credits are not modelled.
    """

    Options = TiFLOptions
    options: TiFLOptions

    def __init__(self, options: TiFLOptions, fleet: FleetView) -> None:
        super().__init__(options, fleet)
        self.latency_sum = np.zeros(fleet.n_devices)
        self.latency_n = np.zeros(fleet.n_devices)
        self.last_tier: int | None = None  # tier drawn last round (None: random)

    def estimates(self) -> np.ndarray:
        """Latency estimate per device: its own mean, else its class's, else nan."""
        seen = self.latency_n > 0
        est = np.full(self.fleet.n_devices, np.nan)
        est[seen] = self.latency_sum[seen] / self.latency_n[seen]
        cls = self.fleet.class_of
        for c in np.unique(cls):
            members = cls == c
            known = members & seen
            if known.any():
                est[members & ~seen] = est[known].mean()
        return est

    def tiers(self) -> list[np.ndarray]:
        """Devices of each tier, fastest tier first (ties by device id)."""
        est = self.estimates()
        known = np.flatnonzero(np.isfinite(est))
        order = known[np.argsort(est[known], kind="stable")]
        return [t for t in np.array_split(order, min(self.options.tiers, max(order.size, 1)))]

    def select(self, round: int, now_s: float, n: int, is_online: Callable[[int], bool],
               rng: np.random.Generator) -> list[int]:
        tiers = self.tiers()
        if round < self.options.profile_rounds or not any(t.size for t in tiers):
            self.last_tier = None
            return online_sample(rng.permutation(self.fleet.n_devices), n, is_online)
        p = np.asarray(self.options.probabilities or [1.0] * self.options.tiers)[:len(tiers)]
        p = p * np.array([t.size > 0 for t in tiers])
        if p.sum() <= 0:  # the chosen probabilities name only empty tiers
            p = np.array([float(t.size > 0) for t in tiers])
        k = int(rng.choice(len(tiers), p=p / p.sum()))
        self.last_tier = k
        # the chosen tier first, then the nearest ones, then devices with no estimate
        by_distance = sorted(range(len(tiers)), key=lambda j: (abs(j - k), j))
        in_tiers = np.concatenate([tiers[j] for j in by_distance])
        rest = np.setdiff1d(np.arange(self.fleet.n_devices), in_tiers)
        order = np.concatenate([rng.permutation(tiers[j]) for j in by_distance]
                               + [rng.permutation(rest)])
        return online_sample(order, n, is_online)

    def feedback(self, reports: Sequence[DeviceReport]) -> None:
        for r in reports:
            if r.status != "dropped":  # going offline is not latency
                self.latency_sum[r.device] += r.duration_s
                self.latency_n[r.device] += 1
