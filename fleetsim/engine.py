"""The discrete-event engine: the only module that touches the SimPy environment.

A server process runs synchronous rounds: it selects devices among those online, works
out each selected device's round at once (download, training and upload, each phase as
long as the cost model, the network path and the exact integral of the device's
availability trace make it; a device that goes offline during any phase drops out at
that instant), and waits with one timeout until every fate, the deadline, or (with
over-commitment) the K-th arrival. No device needs a process or an event of its own.

Timing depends on the cost model and the traces alone, never on training results, so a
round's schedule -- who finishes, when, with which dropout vector at each mini-batch --
is fixed before any real training; the backend then trains only the updates that reach
aggregation.
"""

from __future__ import annotations

import dataclasses
import gc
import heapq
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy
import torch

from fleetsim.backends import Backend, Evaluation
from fleetsim.callbacks import Callback
from fleetsim.config import ServerConfig
from fleetsim.costs import CostModel
from fleetsim.errors import UserError
from fleetsim.fleet import Fleet
from fleetsim.nn.slicing import keep_share
from fleetsim.pipeline import UpdatePipeline
from fleetsim.policies.base import Assignment, Policy, StepObservation, check_vector
from fleetsim.rng import LazyStream, stream
from fleetsim.server.buffered import staleness_weight
from fleetsim.server.selection import DeviceReport, Selector
from fleetsim.training import UpdateJob, epoch_samples, epoch_steps

INF = math.inf
#: Device outcomes of a round, in the order of their codes in ``run.h5`` (append only).
STATUS = ("completed", "late", "dropped", "not_needed", "rejected", "too_slow", "stale")

# Mini-batches a deciding policy may ask for in one round when nothing else ends it (the
# server waits for every device), as a multiple of the round's step count: more is taken
# as a policy that never says stop, and is an error.
MAX_STEPS_FACTOR = 100
# ... and at most, whatever ends the round (step times are positive, so a finite cutoff
# ends the loop; this only guards against a policy that chooses empty work for ever).
MAX_STEPS_HARD = 1_000_000
# Consecutive rounds with no online device after which a run is declared stuck (with the
# default 60 s retry, about a week of simulated time with the whole fleet offline).
MAX_IDLE_WAITS = 10_000
# Async: a device's second job from one model version gets streams of its own, keyed
# version + repeat * this (version alone for the first, as in synchronous rounds).
ASYNC_REPEAT_STRIDE = 1 << 32


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
    plan: _Plan | None = None  # phase times, only until the round closes
    start_version: int = -1  # the global model version it trained from (sync: the round)


class _OnlineAt:
    """What a selector asks of the fleet at a round's start: whether a device is online
    then, and (``prefetch``) the devices it is about to ask about, whose traces a source
    with counter streams then makes together."""

    __slots__ = ("_busy", "_fleet", "_t", "prefetch")

    def __init__(self, fleet: Fleet, t: float, busy: set[int] | None = None) -> None:
        self._fleet, self._t, self._busy = fleet, t, busy
        self.prefetch = self._prefetch if fleet.batched else None

    def _prefetch(self, devices: Sequence[int]) -> None:
        self._fleet.prefetch(devices, online_only=True)

    def __call__(self, device: int) -> bool:
        """Online at the time (and, in asynchronous mode, not training already)."""
        if self._busy is not None and device in self._busy:
            return False
        return self._fleet.online_at(device, self._t)


@dataclass(slots=True)
class _Plan:
    """A device's phase times in one round, kept until the round closes, so that work
    the server did not wait for can be cut back to the instant it stopped waiting."""

    nbytes: int
    latency_s: float
    t_start: float
    down_s: float
    up_nbytes: int = 0  # the upload's bytes (the update's, after its transforms)
    up_start: float | None = None
    up_s: float = 0.0
    #: per mini-batch (start, end, MACs, kept share); recorded (not None) only if the
    #: round can close before every device's fate (over-commitment)
    work: list[tuple[float, float, float, float]] | None = None


@dataclass
class RunLog:
    """Everything a run produced, row by row."""

    rounds: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[DeviceRound] = field(default_factory=list)
    wall_s: float = 0.0
    events: int = 0
    attackers: np.ndarray | None = None  # per device, whether it attacks (None: nobody)


@dataclass(frozen=True)
class EngineSettings:
    """The server's rules for one run (from the scenario's training and eval sections).

    Attributes
    ----------
    name : the run's name, for messages and the progress bar
    seed : the run's seed (selection, assignment and policy streams)
    rounds, time_budget_s : when the run ends (either may be None, not both)
    clients_per_round : K
    deadline_s : round deadline after its start (None: none)
    local_steps, batch_size : the devices' local work
    local_epochs : instead of ``local_steps``, each device does ceil(E * n / b)
        mini-batches over its n samples (None: ``local_steps``)
    idle_wait_s : retry interval when no device is online
    server_time_s : simulated aggregation time per round
    eval_every_rounds : evaluate the global model every this many rounds (and the last)
    policy_name : the policy's registered name, for messages about its decisions
    """

    name: str
    seed: int
    rounds: int | None
    time_budget_s: float | None
    clients_per_round: int
    deadline_s: float | None
    local_steps: int
    batch_size: int
    idle_wait_s: float = 60.0
    server_time_s: float = 0.0
    eval_every_rounds: int = 1
    policy_name: str = ""
    local_epochs: float | None = None
    server: ServerConfig = field(default_factory=ServerConfig)


class Engine:
    """Runs one scenario with one seed.

    Parameters
    ----------
    settings : the server's rules
    fleet, costs, policy, selector : the parts (see :func:`fleetsim.build.build`)
    backend : where training runs; None in timing-only mode
    n_samples : training samples per device
    callbacks : told of every finished round and of the run's end (progress bar,
        trackers, the results writer, users' own code)
    """

    def __init__(self, settings: EngineSettings, fleet: Fleet, costs: CostModel,
                 policy: Policy, selector: Selector, backend: Backend | None,
                 n_samples: np.ndarray, callbacks: Sequence[Callback] = (),
                 server_opt: Any = None, pipeline: UpdatePipeline | None = None) -> None:
        self.settings = settings
        self.fleet = fleet
        self.costs = costs
        self.policy = policy
        self.selector = selector
        self.backend = backend
        self.n_samples = n_samples
        self.callbacks = tuple(callbacks)
        # applied to every aggregate (None: the aggregate is the new model, FedAvg)
        self.server_opt = server_opt
        # attacks, update transforms, the aggregation rule, DP noise (default: none of them)
        self.pipeline = pipeline if pipeline is not None else UpdatePipeline()
        self.env = simpy.Environment()
        self.log = RunLog(attackers=self.pipeline.attackers)
        self.groups = costs.groups
        self._share_memo: dict[tuple[float, ...], float] = {}
        self.train_spec = policy.train_spec()
        # The base policy's decide() is a pure function of the assignment (its vector for
        # steps_of() mini-batches), so the engine may skip building an observation per
        # mini-batch for policies that keep it (FedAvg, FedProx, HeteroFL, ...).
        self._fixed_work = type(policy).decide is Policy.decide
        # A selector that keeps the base feedback() learns nothing (random): a frozen
        # report per selected device per round would be built for nobody.
        self._learns = type(selector).feedback is not Selector.feedback
        self.state: dict[str, torch.Tensor] | None = (
            backend.initial_state() if backend is not None else None)
        #: where a resumed run goes on (set by :meth:`restore`), and the checkpoint writer
        #: (:class:`fleetsim.checkpoint.Checkpoints`: ``due(rounds)``, ``save(snapshot)``)
        self._resumed: dict[str, Any] | None = None
        self.checkpoints: Any = None

    # ------------------------------------------------------------------ running

    def run(self) -> RunLog:
        t0 = time.perf_counter()
        for cb in self.callbacks:
            cb.on_run_start(self.settings)
        # Everything built so far (torch, the model, the data, the fleet) lives for the whole
        # run: freezing it keeps the garbage collector's full passes, which a long run
        # triggers again and again, from walking it each time (~10-15% of a timing-only
        # run). Only when nobody else froze objects, so that unfreezing is ours to do.
        freeze = gc.get_freeze_count() == 0
        if freeze:
            gc.freeze()
        # The log keeps a DeviceRound per device-round, so a huge run's young collections
        # keep promoting objects and triggering full passes over all of them (~30% of a
        # timing-only run of a million devices, 300 rounds); collecting the youngest
        # generation every 10,000 allocations instead of every 700 leaves ~4%. Cyclic
        # garbage is still collected, only in larger batches; restored after the run.
        thresholds = gc.get_threshold()
        gc.set_threshold(max(thresholds[0], 10_000), *thresholds[1:])
        try:
            if self.settings.server.mode == "async":
                self.env.process(self._async_server())
                self.env.run()
            else:
                self.env.process(self._server())
                self.env.run()
        finally:
            gc.set_threshold(*thresholds)
            if freeze:
                gc.unfreeze()
        self.log.wall_s = time.perf_counter() - t0
        # SimPy numbers every scheduled event from one counter, and run() processes them all
        self.log.events = next(self.env._eid)
        for cb in self.callbacks:
            cb.on_run_end(self.log)
        return self.log

    def _done(self, r: int) -> bool:
        tr = self.settings
        if tr.rounds is not None and r >= tr.rounds:
            return True
        return tr.time_budget_s is not None and self.env.now >= tr.time_budget_s

    def _server(self) -> Iterator[simpy.events.Event]:
        env, cfg = self.env, self.settings
        k = cfg.clients_per_round
        deadline_s = cfg.deadline_s
        budget_s = cfg.time_budget_s
        r = 0
        idle = 0
        last_eval = -1
        if self._resumed is not None:
            r, last_eval = self._resumed["round"], self._resumed["last_eval"]
        pending: tuple[dict[str, Any], Evaluation | None] | None = None  # a row to finish
        while not self._done(r):
            t_start = env.now
            plan = self.policy.plan(r, k)
            selected = self.selector.select(r, t_start, plan.select,
                                            _OnlineAt(self.fleet, t_start),
                                            stream(cfg.seed, "select", r))
            if not selected:
                idle += 1
                if idle > MAX_IDLE_WAITS:
                    raise UserError(
                        f"{cfg.name}: no device was online for {idle - 1} server retries in a "
                        f"row ({(idle - 1) * cfg.idle_wait_s:g} simulated seconds "
                        f"from t={env.now - (idle - 1) * cfg.idle_wait_s:g} s), so the "
                        "run cannot go on. Allowed: traces in which devices come online "
                        "(check with `fleetsim traces show`), or a time_budget_s.")
                yield env.timeout(cfg.idle_wait_s)
                continue
            idle = 0
            selected = sorted(selected)
            cutoff = t_start + deadline_s if (deadline_s is not None and not plan.wait_all) \
                else INF
            if budget_s is not None:
                # the round running when the budget ends closes then, as at a deadline:
                # no result of a run lies past its time budget
                cutoff = min(cutoff, budget_s)
            rng_assign = stream(cfg.seed, "assign", r)
            outcomes = []
            self.fleet.prefetch(selected)
            for d in selected:
                a = self.policy.assign(r, d, int(self.fleet.class_of[d]), rng_assign)
                out = DeviceRound(d, r, t_start, start_version=r)
                self._schedule(out, self._checked(a), cutoff, deadline_s,
                               record=plan.keep < plan.select)
                outcomes.append(out)
            self._check_server_can_close(outcomes, cutoff, plan.keep, plan.select, r)
            # Every fate is known now, so the server waits with one timeout for the
            # instant it stops waiting (every fate, the cutoff or the keep-th arrival),
            # not with a SimPy process per device: that was most of the engine's events
            # and ~10 us per selected device. SimPy reaches that instant as now + (t -
            # now), exactly where the first of per-device timeouts would have woken it
            # (the map is monotone), so the next round starts at the same time to the bit.
            # The close time itself is the fates' own, not env.now, which can land an ulp
            # short of t: a device that arrived must not look as if it were still working.
            t_end = _close_time(outcomes, cutoff, plan.keep if plan.keep < plan.select
                                else None)
            yield env.timeout(t_end - t_start)
            self._close(outcomes, t_end, cutoff, plan.keep)
            done = [o for o in outcomes if o.status == "completed"]
            losses = self._aggregate(done)
            # the last round's evaluation ran in the backend beside this round's training
            self._settle(pending)
            pending = None
            yield env.timeout(cfg.server_time_s)
            evaluation = None
            if self.backend is not None and (r % cfg.eval_every_rounds == 0
                                             or self._done(r + 1)):
                evaluation = self.backend.start_evaluation(self.state)  # type: ignore[arg-type]
                last_eval = r
            done = [o for o in outcomes if o.status == "completed"]  # without the rejected
            row = self._row(r, t_start, t_end, outcomes, done, math.nan, math.nan, losses)
            row.update(self.pipeline.figures())
            self.log.rounds.append(row)
            self.log.timeline.extend(outcomes)
            # Selectors learn from training losses and times, never from the evaluation,
            # so the next round's schedule need not wait for it.
            if self._learns:
                self.selector.feedback([
                    DeviceReport(o.device, r, o.status,
                                 o.need_s if o.status == "too_slow" else o.t_end - t_start,
                                 losses.get(o.device, math.nan), o.steps,
                                 int(self.n_samples[o.device])) for o in outcomes])
            pending = (row, evaluation)
            if evaluation is None or not evaluation.pending:
                self._settle(pending)  # nothing to wait for: tell the callbacks now
                pending = None
            r += 1
            if self.checkpoints is not None and not self._done(r) and self.checkpoints.due(r):
                self._settle(pending)  # the row is finished before it is saved
                pending = None
                self.checkpoints.save(self.snapshot({"round": r, "last_eval": last_eval}))
        self._settle(pending)
        if self.backend is not None and last_eval != r - 1 and self.log.rounds:
            # the run ended by its time budget after a round that was not evaluated
            acc, loss = self.backend.evaluate(self.state)  # type: ignore[arg-type]
            self.log.rounds[-1].update(accuracy=acc, loss=loss)

    def _settle(self, pending: tuple[dict[str, Any], Evaluation | None] | None) -> None:
        """Finish a round's row: its evaluation's figures, then the callbacks hear of it.

        Callbacks only observe, so telling them a round late changes no result."""
        if pending is None:
            return
        row, evaluation = pending
        if evaluation is not None:
            row["accuracy"], row["loss"] = evaluation.result()
        for cb in self.callbacks:
            cb.on_round_end(row)

    # ------------------------------------------------------------------ async server

    def _async_server(self) -> Iterator[simpy.events.Event]:
        """FedBuff (FedAsync with a buffer of one): ``concurrency`` devices train at once.

        A job's whole course is known when it starts (:meth:`_schedule`, with the job's own
        deadline in place of a round's), so the server keeps the jobs in flight in a heap by
        (fate time, job id) and waits for the earliest: jobs ending at one instant are
        handled in start order, by rule rather than by SimPy's event order. On an arrival
        it buffers the update (or drops it as stale, untrained), and every ``buffer_size``
        arrivals it trains the buffered updates -- each from the global model of its start
        version, kept while referenced -- and aggregates them into a new version. Every job
        that ends is replaced at once by a new one on an idle online device.
        """
        env, cfg = self.env, self.settings
        srv = cfg.server
        self._versions: dict[int, dict[str, torch.Tensor] | None] = {0: self.state}
        self._refs: dict[int, int] = {}
        self._version = 0
        self._busy: set[int] = set()
        self._jobs = 0
        self._repeats: dict[int, int] = {}  # per device, jobs from the current version
        self._buffer: list[DeviceRound] = []
        self._ended: list[DeviceRound] = []
        self._in_flight: dict[int, DeviceRound] = {}
        self._heap: list[tuple[float, int]] = []
        self._started_since = 0
        self._t_last = 0.0
        self._last_eval = -1
        plan = self.policy.plan(0, srv.concurrency)
        self._job_deadline = cfg.deadline_s if not plan.wait_all else None
        idle = 0
        if self._resumed is None:
            self._fill()
        else:  # the saved server replaces the fresh one, and goes on where it was
            for k, v in self._resumed["async"].items():
                setattr(self, k, v)
        while True:
            if self._async_done():
                break
            version = self._version
            if self._heap:
                t = self._heap[0][0]
                yield env.timeout(max(t - env.now, 0.0))
                # every job ending at this instant, in start order, before any new start:
                # simultaneous arrivals fill the buffer together (so FedBuff with equal
                # devices is synchronous FedAvg), and replacements start from the newest
                # version
                while self._heap and self._heap[0][0] == t:
                    _, jid = heapq.heappop(self._heap)
                    self._job_ended(self._in_flight.pop(jid), t)
                idle = 0
            else:  # nobody is training: every device busy or offline; look again later
                idle += 1
                if idle > MAX_IDLE_WAITS:
                    raise UserError(
                        f"{cfg.name}: no device was online for {idle - 1} server retries in "
                        f"a row ({(idle - 1) * cfg.idle_wait_s:g} simulated seconds), so the "
                        "run cannot go on. Allowed: traces in which devices come online "
                        "(check with `fleetsim traces show`), or a time_budget_s.")
                yield env.timeout(cfg.idle_wait_s)
            if not self._async_done():
                self._fill()
                if self.checkpoints is not None and any(  # several can happen at one instant
                        self.checkpoints.due(v) for v in range(version + 1, self._version + 1)):
                    # after an aggregation: the loop goes on from its top, with idle 0
                    self.checkpoints.save(self.snapshot({"version": self._version}))
        self._finish()

    #: the async server's attributes that cross aggregations (what a checkpoint keeps)
    _ASYNC_STATE = ("_versions", "_refs", "_version", "_busy", "_jobs", "_repeats", "_buffer",
                    "_ended", "_in_flight", "_heap", "_started_since", "_t_last",
                    "_last_eval")

    def snapshot(self, position: dict[str, Any]) -> dict[str, Any]:
        """Everything the run needs to go on from ``position`` (a round's end in sync
        mode, an aggregation in async mode): simulated time, global model, rows so far,
        the selector's, policy's and server optimizer's state and, in async mode, the jobs
        in flight, the buffer and the model versions they train from. The schedule needs
        nothing else: it depends only on the traces and on streams keyed by purpose.
        Written to a file by :mod:`fleetsim.checkpoint`."""
        snap: dict[str, Any] = {
            "position": position, "now": self.env.now, "state": self.state,
            "rounds": self.log.rounds, "timeline": self.log.timeline,
            "selector": vars(self.selector),
            # the policy's context is built from the scenario; the rest may be its state
            "policy": {k: v for k, v in vars(self.policy).items() if k != "ctx"},
            "server_opt": None if self.server_opt is None else vars(self.server_opt),
            "pipeline": self.pipeline.state()}
        if self.settings.server.mode == "async":
            snap["position"] = {**position,
                                "async": {k: getattr(self, k) for k in self._ASYNC_STATE}}
        return snap

    def restore(self, snap: dict[str, Any]) -> None:
        """Go on from ``snap`` (what :meth:`snapshot` gave) when :meth:`run` is called."""
        self.env = simpy.Environment(initial_time=snap["now"])
        self.state = snap["state"]
        self.log.rounds, self.log.timeline = snap["rounds"], snap["timeline"]
        vars(self.selector).update(snap["selector"])
        vars(self.policy).update(snap["policy"])
        if self.server_opt is not None:
            vars(self.server_opt).update(snap["server_opt"])
        self.pipeline.load_state(snap["pipeline"])
        self._resumed = snap["position"]

    def _async_done(self) -> bool:
        cfg = self.settings
        if cfg.rounds is not None and self._version >= cfg.rounds:
            return True
        return cfg.time_budget_s is not None and self.env.now >= cfg.time_budget_s

    def _fill(self) -> None:
        """Start jobs on idle online devices until ``concurrency`` are training."""
        cfg = self.settings
        want = cfg.server.concurrency - len(self._in_flight)
        if want <= 0:
            return
        t = self.env.now
        busy = self._busy
        picked = self.selector.select_idle(self._version, t, want,
                                           _OnlineAt(self.fleet, t, busy),
                                           stream(cfg.seed, "select", self._jobs))
        self.fleet.prefetch(picked)
        for d in sorted(picked):
            self._start_job(d)

    def _start_job(self, d: int) -> None:
        cfg = self.settings
        jid = self._jobs
        self._jobs += 1
        self._started_since += 1
        t = self.env.now
        v = self._version
        # Training streams are keyed by the start version (so that FedBuff with no
        # staleness draws exactly what synchronous rounds draw), made unique for a device
        # that trains twice from one version.
        rep = self._repeats.get(d, 0)  # jobs of d from the current version so far
        self._repeats[d] = rep + 1
        key = v + rep * ASYNC_REPEAT_STRIDE
        a = self.policy.assign(key, d, int(self.fleet.class_of[d]),
                               LazyStream(cfg.seed, "assign", jid))  # type: ignore[arg-type]
        out = DeviceRound(d, jid, t, start_version=v)
        deadline_s = self._job_deadline
        cutoff = t + deadline_s if deadline_s is not None else INF
        if cfg.time_budget_s is not None:
            cutoff = min(cutoff, cfg.time_budget_s)
        self._schedule(out, self._checked(a), cutoff, deadline_s, record=True, key=key)
        if out.t_end == INF:
            raise UserError(
                f"{cfg.name}: job {jid}: device {d} (class '{self.fleet.class_name(d)}') can "
                f"never finish its mini-batch: its availability stays 0 for ever (its trace "
                "does not repeat) and it never goes offline, and the job has no deadline. "
                "Allowed: a training.deadline_s (the job's time limit in async mode), a "
                "training.time_budget_s, or traces with a period or with availability above "
                "0 after their last breakpoint.")
        self._busy.add(d)
        self._in_flight[jid] = out
        heapq.heappush(self._heap, (out.t_end, jid))
        self._refs[v] = self._refs.get(v, 0) + 1

    def _release(self, version: int) -> None:
        n = self._refs[version] - 1
        if n:
            self._refs[version] = n
            return
        del self._refs[version]
        if version != self._version:
            self._versions.pop(version, None)  # nobody trains from it any more

    def _job_ended(self, out: DeviceRound, t: float) -> None:
        srv = self.settings.server
        self._busy.discard(out.device)
        out.plan = None
        if self._learns:
            self.selector.feedback([DeviceReport(
                out.device, self._version, out.status,
                out.need_s if out.status == "too_slow" else out.t_end - out.t_start,
                math.nan, out.steps, int(self.n_samples[out.device]))])
        if out.status == "completed":
            s = self._version - out.start_version
            if srv.max_staleness is not None and s > srv.max_staleness:
                out.status, out.job = "stale", None  # never trained
            else:
                self._buffer.append(out)
        if out.status != "completed":
            self._release(out.start_version)
            self._ended.append(out)
        # not past training.rounds: arrivals at the instant of the last aggregation stay
        # in the buffer (and end as not needed)
        if len(self._buffer) >= srv.buffer_size and not self._async_done():
            self._aggregate_buffer(t)

    def _aggregate_buffer(self, t: float) -> None:
        """Train the buffered updates from their start versions; a new global version."""
        cfg, srv = self.settings, self.settings.server
        buf = sorted(self._buffer, key=lambda o: o.round)  # start order: versions ascend
        self._buffer = []
        stal = [self._version - o.start_version for o in buf]
        losses: dict[int, float] = {}
        if self.backend is not None:
            agg = self.pipeline.buffered(self.state, self.backend.buffer_names)  # type: ignore[arg-type]
            i = 0
            while i < len(buf):  # one backend call per start version, in start order
                v = buf[i].start_version
                group = [o for o in buf[i:] if o.start_version == v]
                start = self._versions[v]
                w = staleness_weight(srv.staleness, self._version - v)
                jobs = [o.job for o in group]
                for o, res in zip(group, self.backend.train(start, jobs)):  # type: ignore[arg-type]
                    if not math.isfinite(res.loss_sum) or not agg.add(
                            o.round, res.update, start, w):  # type: ignore[arg-type]
                        o.status = "rejected"
                    else:
                        losses[o.round] = res.mean_loss
                    o.job = None
                i += len(group)
            self.state = self._apply(agg)
        for o in buf:
            self._release(o.start_version)
        self._version += 1
        self._versions[self._version] = self.state
        self._repeats = {}  # no job starts from an older version
        # the previous version stays only while some job still trains from it
        if self._version - 1 not in self._refs:
            self._versions.pop(self._version - 1, None)
        r = self._version - 1
        acc = loss = math.nan
        if self.backend is not None and (r % cfg.eval_every_rounds == 0 or self._async_done()):
            acc, loss = self.backend.evaluate(self.state)  # type: ignore[arg-type]
            self._last_eval = r
        outcomes = self._ended + buf
        done = [o for o in buf if o.status == "completed"]
        kept = [s for o, s in zip(buf, stal) if o.status == "completed"]
        row = self._row(r, self._t_last, t, outcomes, done, acc, loss, losses, kept)
        row["selected"] = self._started_since
        row.update(self.pipeline.figures())
        self.log.rounds.append(row)
        self.log.timeline.extend(sorted(outcomes, key=lambda o: o.round))
        self._ended = []
        self._started_since = 0
        self._t_last = t
        for cb in self.callbacks:
            cb.on_round_end(row)

    def _finish(self) -> None:
        """The run ends: jobs still training are cut back to now, and not needed."""
        now = self.env.now
        if self.settings.time_budget_s is not None:
            now = min(now, self.settings.time_budget_s)
        for out in sorted(self._in_flight.values(), key=lambda o: o.round):
            self._cut_back(out, now)
            out.status, out.t_end, out.job, out.plan = "not_needed", now, None, None
            self._ended.append(out)
        for o in self._buffer:  # arrived, but the buffer never filled again
            o.status, o.job = "not_needed", None
            self._ended.append(o)
        self._in_flight.clear()
        self._buffer = []
        self.log.timeline.extend(sorted(self._ended, key=lambda o: o.round))
        if self.backend is not None and self.log.rounds and \
                self._last_eval != len(self.log.rounds) - 1:
            acc, loss = self.backend.evaluate(self.state)  # type: ignore[arg-type]
            self.log.rounds[-1].update(accuracy=acc, loss=loss)

    # ------------------------------------------------------------------ one device

    def _schedule(self, out: DeviceRound, a: Assignment, cutoff: float,
                  deadline_s: float | None, record: bool, key: int | None = None) -> None:
        """Work out, at the round's start, how one device's round ends if nobody stops it.

        Download, training and upload depend only on the cost model, the network path and
        the device's trace, so the whole round of a device is known at once: ``out`` gets
        its fate (``status`` and ``t_end``: arrival, going offline, or the cutoff), the
        work done by then, and the job to train if it arrives. The server may still close
        the round earlier (over-commitment, or a time budget); :meth:`_close` then cuts
        the work back to that instant (``record``: keep the per-step times it needs).
        ``key`` names the job's random streams (default: its round).
        Deciding fates by times, not by the order in which SimPy handles events at one
        instant, makes "an arrival exactly at the deadline counts" a rule rather than an
        accident of event order.
        """
        fleet, costs = self.fleet, self.costs
        d, t_start = out.device, out.t_start
        if key is None:
            key = out.round
        if self.settings.local_epochs is not None and a.steps is None:
            # local_epochs: the device's own number of mini-batches, the last one short
            n_d = int(self.n_samples[d])
            a = dataclasses.replace(
                a, steps=epoch_steps(self.settings.local_epochs, n_d, self.settings.batch_size),
                samples=epoch_samples(self.settings.local_epochs, n_d))
        tr = fleet.trace(d)
        path = fleet.path(d)
        t_off = tr.next_offline(t_start)
        nbytes = costs.model_bytes(a.submodel)
        up_nbytes = self.pipeline.upload_bytes(nbytes)
        down_s, up_s = path.download_s(nbytes), path.upload_s(up_nbytes)
        lat = path.latency_s

        # download
        t = t_start + down_s
        plan = out.plan = _Plan(nbytes, lat, t_start, down_s, up_nbytes)
        # recorded from the start: a round can close while the device is still downloading
        work = plan.work = [] if record else None
        end, why = _phase_end(t, t_off, cutoff)
        out.bytes_down = _sent(nbytes, t_start, down_s, end, lat)
        if why:
            out.t_end, out.status = end, why
            return
        # train: decisions and step times are exact and need no events of their own
        peak = float(fleet.peak_macs_per_s[d])
        n = int(self.n_samples[d])
        batch = min(self.settings.batch_size, n)
        deadline_abs = t_start + deadline_s if deadline_s is not None else INF
        # local_epochs: the last planned mini-batch holds what is left of the samples
        short_at, short_b = -1, batch
        if a.samples is not None and a.steps is not None:
            short_at, short_b = a.steps - 1, a.samples - (a.steps - 1) * batch
        vec: tuple[float, ...] | None = None
        if self._fixed_work:
            # Hot path: policies that keep the base decide() train the assigned vector for
            # a fixed number of mini-batches; asking them would cost an observation, an
            # availability lookup and a seeded random stream per simulated mini-batch.
            # Their step count is explicit, so no cap applies. The same steps and the same
            # arithmetic as the general loop below, with a mini-batch's MACs and kept share
            # looked up once per device instead of once per mini-batch.
            fixed = a.submodel or self.policy.zero
            n_fixed = self.policy.steps_of(a)
            share = self._share(fixed)
            m_full = costs.step_macs(fixed, batch)
            m_short = costs.step_macs(fixed, short_b) if short_at >= 0 else m_full
            finish, partial = tr.finish_time, a.partial
            done = 0
            if not partial and short_at < 0 and work is None:
                # the common case, all steps alike and nothing recorded: the same steps
                # in one call (DeviceTrace.advance), without a Python call per step
                t_stop = min(t_off, cutoff)
                t, done, t_next = tr.advance(t, m_full / peak, n_fixed, t_stop)
                for _ in range(done):  # the same sums, in the same order, as step by step
                    out.macs += m_full
                    out.kept_share_sum += share
                if done < n_fixed:
                    self._stopped(out, tr, work, t, t_next, m_full, share, done, t_off,
                                  cutoff, peak)
                    return
            while done < n_fixed:
                macs = m_short if done == short_at else m_full
                t_next = finish(t, macs / peak)
                if partial and t_next + up_s > deadline_abs:
                    vec = fixed
                    break  # partial work: send what is done when time is up
                if t_next > t_off or t_next > cutoff or t_next == INF:
                    self._stopped(out, tr, work, t, t_next, macs, share, done, t_off, cutoff,
                                  peak)
                    return
                if work is not None:
                    work.append((t, t_next, macs, share))
                out.macs += macs
                out.kept_share_sum += share
                t = t_next
                done += 1
            vectors = {fixed: 0} if done else {}
            step_vec = [0] * done
        else:
            vectors, step_vec = {}, []
            rng = stream(self.settings.seed, "policy", key, d)
            cls = int(fleet.class_of[d])
            # A deciding policy that never says stop would hang the engine where nothing
            # else ends the round (the server waits for every device): that is the
            # policy's bug, so it is an error, never a silent truncation.
            cap = (MAX_STEPS_FACTOR * max(self.settings.local_steps,
                                          self.policy.steps_of(a))
                   if cutoff == INF else MAX_STEPS_HARD)
            name, n_groups = self.settings.policy_name, len(self.groups)
            while True:
                step = len(step_vec)
                if step >= cap:
                    raise UserError(
                        f"policy '{self.settings.policy_name}' did not stop: device {d} was "
                        f"still asked for mini-batch {step + 1} in round {out.round} (at "
                        f"most {cap} are allowed when nothing else ends the round). "
                        "Allowed: a policy whose decide() returns STOP, a deadline_s, or "
                        "policy.options.stragglers other than 'wait'.")
                vec = self.policy.decide(StepObservation(
                    d, cls, out.round, step, t, tr.availability_at(t),
                    deadline_abs - t - up_s, up_s, peak, batch, a, costs, rng, vec)).vector
                vec = check_vector(name, vec, n_groups)
                if vec is None:
                    break
                macs = costs.step_macs(vec, batch if step != short_at else short_b)
                t_next = tr.finish_time(t, macs / peak)
                if a.partial and t_next + up_s > deadline_abs:
                    break  # partial work: send what is done when time is up
                share = self._share(vec)
                if t_next > t_off or t_next > cutoff or t_next == INF:
                    self._stopped(out, tr, work, t, t_next, macs, share, step, t_off, cutoff,
                                  peak)
                    return
                step_vec.append(vectors.setdefault(vec, len(vectors)))
                if work is not None:
                    work.append((t, t_next, macs, share))
                out.macs += macs
                out.kept_share_sum += share
                t = t_next
        out.steps = len(step_vec)
        if not step_vec:
            # Could not fit one mini-batch (partial work, or a policy that stopped at once).
            # The device tells the server so at once (a message: latency only), and the
            # selectors hear how long one mini-batch and the upload would have taken, so
            # they learn it is slow ("dropped" would say it went offline, and hide that).
            if vec is None:  # the policy stopped: time the step it was assigned
                macs = costs.step_macs(a.submodel or self.policy.zero,
                                       batch if short_at != 0 else short_b)
                t_next = tr.finish_time(t, macs / peak)
            out.need_s = t_next + up_s - t_start
            end, why = _phase_end(t + lat, t_off, cutoff)
            out.t_end, out.status = end, why or "too_slow"
            return
        # upload
        end, why = _phase_end(t + up_s, t_off, cutoff)
        out.bytes_up = _sent(up_nbytes, t, up_s, end, lat)
        out.t_end = end
        plan.up_start, plan.up_s = t, up_s
        if why:
            out.status = why
            return
        out.status = "completed"
        # the trainer cuts the same mini-batches as timed here: the epoch's last one short,
        # full ones after it (distreal's work: fill), none short if the device stopped before
        samples = a.samples
        out.job = UpdateJob(d, key, float(n), tuple(vectors), tuple(step_vec), a.mode,
                            a.reselect, a.offset, self.train_spec.prox_mu, samples)

    @staticmethod
    def _stopped(out: DeviceRound, tr: Any, work: list[tuple[float, float, float, float]] | None,
                 t: float, t_next: float, macs: float, share: float, steps: int, t_off: float,
                 cutoff: float, peak: float) -> None:
        """The fate of a device whose mini-batch from ``t`` to ``t_next`` is cut short by
        going offline or by the cutoff (or never ends), after ``steps`` whole ones."""
        if work is not None:
            work.append((t, t_next, macs, share))
        out.steps = steps
        if min(t_off, cutoff) == INF:
            # the step never ends and nothing stops it: the fate is "for ever";
            # _check_server_can_close decides whether that is an error
            out.t_end, out.status = INF, "late"
            return
        end, why = _phase_end(t_next, t_off, cutoff)
        out.macs += _done_macs(tr, t, end, macs, peak)
        out.t_end, out.status = end, why

    def _checked(self, a: Assignment) -> Assignment:
        """``a`` with its sub-model vector checked (a policy is user code)."""
        if a.submodel is not None:
            v = check_vector(self.settings.policy_name, a.submodel, len(self.groups),
                             "assign().submodel")
            if v != a.submodel:
                a = dataclasses.replace(a, submodel=v)
        return a

    def _check_server_can_close(self, outcomes: list[DeviceRound], cutoff: float, keep: int,
                                select: int, r: int) -> None:
        """A server that would wait for ever for a device that never finishes is an error."""
        if cutoff < INF:
            return
        stuck = [o for o in outcomes if o.t_end == INF]
        if not stuck:
            return
        arrive = sum(1 for o in outcomes if o.status == "completed")
        if keep < select and arrive >= keep:
            return  # over-commitment: the first K arrivals close the round
        o = stuck[0]
        raise UserError(
            f"{self.settings.name}: round {r}: device {o.device} (class "
            f"'{self.fleet.class_name(o.device)}') can never finish its mini-batch started "
            f"at t={o.plan.work[-1][0] if o.plan and o.plan.work else o.t_start:g} s: its "
            "availability stays 0 "
            "for ever (its trace does not repeat) and it never goes offline, while the "
            "server waits for every selected device (training.deadline_s is null or "
            "policy.options.stragglers is 'wait'), so the run could never go on. Allowed: a "
            "deadline_s with stragglers 'discard' or 'overcommit', a training.time_budget_s, "
            "or traces with a period or with availability above 0 after their last "
            "breakpoint.")

    def _close(self, outcomes: list[DeviceRound], t_end: float, cutoff: float,
               keep: int) -> None:
        """Settle every device's status when the server stops waiting at ``t_end``.

        A fate at or before ``t_end`` stands (an arrival exactly at the deadline counts);
        of the arrivals, the first ``keep`` by time (then device id) are aggregated and the
        rest are not needed. A device still working is late if the cutoff has come, else
        not needed, and keeps only the work it did by ``t_end``.
        """
        arrived = sorted((o for o in outcomes if o.status == "completed" and o.t_end <= t_end),
                         key=lambda o: (o.t_end, o.device))
        kept = {o.device for o in arrived[:keep]}
        for o in outcomes:
            if o.t_end <= t_end:
                if o.status == "completed" and o.device not in kept:
                    o.status, o.job = "not_needed", None
            else:
                self._cut_back(o, t_end)
                o.status = "late" if t_end >= cutoff else "not_needed"
                o.t_end, o.job = t_end, None
            o.plan = None  # only needed until the round closes

    def _cut_back(self, o: DeviceRound, t: float) -> None:
        """Keep only the work a device did by ``t`` (the server stopped waiting then)."""
        p = o.plan
        assert p is not None and p.work is not None, "cut back without recorded work"
        o.bytes_up = 0
        if p.up_start is not None and p.up_start <= t:  # cut off during its upload
            o.bytes_up = _sent(p.up_nbytes, p.up_start, p.up_s, t, p.latency_s)
            return
        if p.t_start + p.down_s > t:  # cut off during its download
            o.bytes_down = _sent(p.nbytes, p.t_start, p.down_s, t, p.latency_s)
        steps, macs, share = 0, 0.0, 0.0
        for t0, t1, m, s in p.work:
            if t1 <= t:
                steps, macs, share = steps + 1, macs + m, share + s
                continue
            if t0 < t:
                macs += _done_macs(self.fleet.trace(o.device), t0, t, m,
                                   float(self.fleet.peak_macs_per_s[o.device]))
            break
        o.steps, o.macs, o.kept_share_sum = steps, macs, share

    def _share(self, vec: tuple[float, ...]) -> float:
        s = self._share_memo.get(vec)
        if s is None:
            s = keep_share(self.groups, vec)
            self._share_memo[vec] = s
        return s

    # ------------------------------------------------------------------ training

    def _aggregate(self, done: list[DeviceRound]) -> dict[int, float]:
        """Train the updates that arrived (in device order) and aggregate them."""
        if self.backend is None or not done:
            return {}
        by_id = {o.device: o for o in done}
        jobs = [by_id[d].job for d in sorted(by_id)]
        agg = self.pipeline.aggregator(self.train_spec.aggregator, self.state,  # type: ignore[arg-type]
                                       self.backend.buffer_names, done[0].round)
        losses = {}
        for res in self.backend.train(self.state, jobs):  # type: ignore[arg-type]
            d = res.update.device
            # A diverged update (non-finite loss or weights) is rejected and counted,
            # never averaged in: one such device would otherwise leave the global model
            # NaN for the rest of the run.
            if not math.isfinite(res.loss_sum) or not agg.add(res.update):
                by_id[d].status, by_id[d].job = "rejected", None
                continue
            losses[d] = res.mean_loss
        self.state = self._apply(agg)
        return losses

    def _apply(self, agg: Any) -> dict[str, torch.Tensor]:
        """The new global model: the aggregate, through the server optimizer if any."""
        new = agg.result()
        if self.server_opt is None:
            return new
        return self.server_opt.step(self.state, new, agg.trained())

    def _row(self, r: int, t_start: float, t_end: float, outcomes: list[DeviceRound],
             done: list[DeviceRound], acc: float, loss: float,
             losses: dict[int, float], staleness: Sequence[int] = ()) -> dict[str, Any]:
        count = {s: 0 for s in STATUS}
        for o in outcomes:
            count[o.status] += 1
        steps = sum(o.steps for o in done)
        return {
            "round": r, "t_start_s": t_start, "t_end_s": t_end, "selected": len(outcomes),
            "completed": count["completed"], "late": count["late"],
            "dropped": count["dropped"], "not_needed": count["not_needed"],
            "rejected": count["rejected"], "too_slow": count["too_slow"],
            "stale": count["stale"],
            "accuracy": acc, "loss": loss,
            "train_loss": float(np.mean(list(losses.values()))) if losses else math.nan,
            "mean_kept_share": (sum(o.kept_share_sum for o in done) / steps) if steps
            else math.nan,
            "steps": steps, "macs": sum(o.macs for o in done),
            "macs_wasted": sum(o.macs for o in outcomes if o.status != "completed"),
            "bytes_down": sum(o.bytes_down for o in outcomes),
            "bytes_up": sum(o.bytes_up for o in outcomes),
            "staleness_mean": float(np.mean(staleness)) if len(staleness) else 0.0,
            "staleness_max": int(max(staleness)) if len(staleness) else 0,
        }


def _close_time(outcomes: Sequence[DeviceRound], cutoff: float, keep: int | None) -> float:
    """When the server stops waiting: every fate, the cutoff or (over-commitment,
    ``keep``) the ``keep``-th arrival, whichever comes first."""
    t = min(max(o.t_end for o in outcomes), cutoff)
    if keep is not None:
        arrivals = sorted(o.t_end for o in outcomes if o.status == "completed")
        if len(arrivals) >= keep:
            t = min(t, arrivals[keep - 1])
    return t


def _phase_end(t_phase: float, t_off: float, cutoff: float) -> tuple[float, str | None]:
    """Where a phase that would end at ``t_phase`` ends: itself, going offline or the
    cutoff, whichever comes first. Going offline wins ties (offline at ``t`` means not
    reachable at ``t``); the phase wins a tie with the cutoff (an arrival exactly at the
    deadline counts)."""
    if t_off <= t_phase and t_off <= cutoff:
        return t_off, "dropped"
    if t_phase <= cutoff:
        return t_phase, None
    return cutoff, "late"


def _sent(nbytes: int, t0: float, phase_s: float, end: float, latency_s: float) -> int:
    """Bytes of a transfer of ``nbytes`` (started at ``t0``, ``phase_s`` long including
    ``latency_s``) that had crossed the link by ``end``."""
    if end >= t0 + phase_s:
        return nbytes
    wire_s = phase_s - latency_s
    if wire_s <= 0.0:
        return 0
    return int(nbytes * min(max((end - t0 - latency_s) / wire_s, 0.0), 1.0))


def _done_macs(tr: Any, t0: float, end: float, macs: float, peak: float) -> float:
    """MACs of a step of ``macs`` started at ``t0`` done by ``end``: the integral of the
    available compute, never more than the step itself."""
    return min(macs, peak * (tr.cumulative(end) - tr.cumulative(t0)))
