"""What a run records: one timeline row per device-round (:class:`DeviceRound`) and one
round row per round or aggregation (:class:`RoundRow`), defined once for both servers
and for the files (``results.ROUND_COLUMNS`` is :data:`ROUND_COLUMNS`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from fleetsim.training import UpdateJob

INF = math.inf
#: Device outcomes of a round, in the order of their codes in ``run.h5`` (append only).
STATUS = ("completed", "late", "dropped", "not_needed", "rejected", "too_slow", "stale")


@dataclass(slots=True)
class Plan:
    """A device's phase times in one round, kept until the round closes, so that work
    the server did not wait for can be cut back to the instant it stopped waiting."""

    nbytes: int
    latency_s: float
    t_start: float
    down_s: float
    up_start: float | None = None
    up_s: float = 0.0
    #: per mini-batch (start, end, MACs, kept share); recorded (not None) only if the
    #: round can close before every device's fate (over-commitment, async)
    work: list[tuple[float, float, float, float]] | None = None
    #: the download's and upload's bandwidth traces (None: constant rates)
    down_tr: Any = None
    up_tr: Any = None
    #: the upload's bytes (the update's, after the pipeline's transforms; -1: nbytes)
    up_nbytes: int = -1

    def __post_init__(self) -> None:
        if self.up_nbytes < 0:
            self.up_nbytes = self.nbytes


@dataclass(slots=True)  # slots: a long run keeps one per selected device per round
class DeviceRound:
    """What one selected device did in one round (becomes a timeline row)."""

    device: int
    round: int
    t_start: float
    t_end: float = INF
    status: str = "completed"
    steps: int = 0
    macs: float = 0.0
    kept_share_sum: float = 0.0
    need_s: float = math.nan  # "too_slow": time one mini-batch and the upload would take
    bytes_down: int = 0  # bytes that crossed the downlink (all of the model, or less if cut)
    bytes_up: int = 0  # bytes that crossed the uplink (0 if the upload never started)
    job: UpdateJob | None = None  # what to train, for an update that arrived in time
    plan: Plan | None = None  # phase times, only until the round closes
    start_version: int = -1  # the global model version it trained from (sync: the round)
    # with bandwidth traces (else nan): how long its download and upload took (or would
    # have taken, for an upload cut short)
    down_s: float = math.nan
    up_s: float = math.nan
    # with an energy model (else nan, False): joules it drew from its start to its end,
    # and whether its battery reaching the floor ended it ("dropped" at that instant)
    energy_j: float = math.nan
    battery_ended: bool = False


@dataclass(slots=True)
class RoundRow:
    """One row of ``rounds.csv`` (and of ``run.h5``'s ``rounds`` group), in column order.

    A synchronous round, or one aggregation of the asynchronous server; every column is
    described in ``docs/results.md``."""

    round: int
    t_start_s: float
    t_end_s: float
    selected: int
    completed: int
    late: int
    dropped: int
    not_needed: int
    rejected: int
    too_slow: int
    stale: int
    accuracy: float
    loss: float
    train_loss: float
    mean_kept_share: float
    steps: int
    macs: float
    macs_wasted: float
    bytes_down: int
    bytes_up: int
    staleness_mean: float
    staleness_max: int


#: The columns of a round row, in file order.
ROUND_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(RoundRow))


def round_row(r: int, t_start: float, t_end: float, outcomes: Sequence[DeviceRound],
              done: Sequence[DeviceRound], losses: dict[int, float],
              staleness: Sequence[int] = (), selected: int | None = None,
              acc: float = math.nan, loss: float = math.nan,
              world: frozenset[str] = frozenset(), link_busy_s: float = 0.0
              ) -> dict[str, Any]:
    """The row of a round whose devices ended as ``outcomes`` (``done``: the aggregated
    ones; ``selected``: jobs started, default ``len(outcomes)``), as a dict by column."""
    count = dict.fromkeys(STATUS, 0)
    for o in outcomes:
        count[o.status] += 1
    steps = sum(o.steps for o in done)
    row = RoundRow(
        round=r, t_start_s=t_start, t_end_s=t_end,
        selected=len(outcomes) if selected is None else selected,
        completed=count["completed"], late=count["late"], dropped=count["dropped"],
        not_needed=count["not_needed"], rejected=count["rejected"],
        too_slow=count["too_slow"], stale=count["stale"],
        accuracy=acc, loss=loss,
        train_loss=float(np.mean(list(losses.values()))) if losses else math.nan,
        mean_kept_share=(sum(o.kept_share_sum for o in done) / steps) if steps else math.nan,
        steps=steps, macs=sum(o.macs for o in done),
        macs_wasted=sum(o.macs for o in outcomes if o.status != "completed"),
        bytes_down=sum(o.bytes_down for o in outcomes),
        bytes_up=sum(o.bytes_up for o in outcomes),
        staleness_mean=float(np.mean(staleness)) if len(staleness) else 0.0,
        staleness_max=int(max(staleness)) if len(staleness) else 0,
    )
    out = {c: getattr(row, c) for c in ROUND_COLUMNS}
    if "energy" in world:  # joules drawn by the round's devices; rounds ended by batteries
        out["energy_j"] = math.fsum(o.energy_j for o in outcomes if o.energy_j == o.energy_j)
        out["battery_ended"] = sum(1 for o in outcomes if o.battery_ended)
    if "sharing" in world:  # the busiest shared link's busy share of the round
        span = t_end - t_start
        out["link_busy_share"] = link_busy_s / span if span > 0 else 0.0
    return out


#: timeline columns (DeviceRound fields) written only when the run simulates the world
#: model that fills them, so a run without it writes the same files as ever
WORLD_TIMELINE_COLUMNS: dict[str, tuple[str, ...]] = {"bandwidth": ("down_s", "up_s"),
                                                     "energy": ("energy_j", "battery_ended"),
                                                     "sharing": ("down_s", "up_s")}
#: round columns likewise (after :data:`ROUND_COLUMNS`, in this order)
WORLD_ROUND_COLUMNS: dict[str, tuple[str, ...]] = {"energy": ("energy_j", "battery_ended"),
                                                  "sharing": ("link_busy_share",)}


@dataclass
class RunLog:
    """Everything a run produced, row by row; ``world``: the world models it simulated
    (keys of :data:`WORLD_TIMELINE_COLUMNS`)."""

    rounds: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[DeviceRound] = field(default_factory=list)
    wall_s: float = 0.0
    events: int = 0
    world: frozenset[str] = frozenset()
    attackers: np.ndarray | None = None  # per device, whether it attacks (None: nobody)
