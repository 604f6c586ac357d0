"""The asynchronous server: FedBuff (FedAsync with a buffer of one), ``concurrency``
devices training at once.

A job's whole course is known when it starts (the timer, with the job's own deadline in
place of a round's), so the server keeps the jobs in flight in a heap by (fate time, job
id) and waits for the earliest: jobs ending at one instant are handled in start order, by
rule rather than by SimPy's event order. On an arrival it buffers the update (or drops it
as stale, untrained), and every ``buffer_size`` arrivals it trains the buffered updates --
each from the global model of its start version, kept while referenced -- and aggregates
them into a new version. Every job that ends is replaced at once by a new one on an idle
online device. See ``docs/async.md``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from typing import Any

import simpy
import torch

from fleetsim.engine.rows import INF, DeviceRound, round_row
from fleetsim.engine.server import OnlineAt, Server
from fleetsim.errors import UserError
from fleetsim.rng import LazyStream, stream
from fleetsim.server.buffered import staleness_weight

# A device's second job from one model version gets streams of its own, keyed
# version + repeat * this (version alone for the first, as in synchronous rounds).
ASYNC_REPEAT_STRIDE = 1 << 32


class AsyncServer(Server):
    """FedBuff / FedAsync (``server.mode: async``); owns the versions, the jobs in flight
    and the buffer."""

    #: what a checkpoint keeps: the versions, the jobs in flight and the buffer
    STATE = (*Server.STATE, "_versions", "_refs", "_version", "_busy", "_jobs", "_repeats",
             "_buffer", "_ended", "_in_flight", "_heap", "_started_since", "_t_last",
             "_t_online")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: global models by version, kept while a job in flight or buffered started from it
        self._versions: dict[int, dict[str, torch.Tensor] | None] = {0: self.state}
        self._refs: dict[int, int] = {}  # version -> jobs referencing it
        self._version = 0
        self._busy: set[int] = set()  # devices training now
        self._jobs = 0  # jobs started so far (the next job's id)
        self._repeats: dict[int, int] = {}  # per device, jobs from the current version
        self._buffer: list[DeviceRound] = []  # arrived, waiting for aggregation
        self._ended: list[DeviceRound] = []  # ended otherwise since the last aggregation
        self._in_flight: dict[int, DeviceRound] = {}  # job id -> its round
        self._heap: list[tuple[float, int]] = []  # (fate time, job id)
        self._started_since = 0  # jobs started since the last aggregation
        self._t_last = 0.0  # time of the last aggregation
        self._job_deadline: float | None = None
        #: while fewer jobs run than the concurrency: the first instant an idle device
        #: comes online (None: not watched, the concurrency is full)
        self._t_online: float | None = None
        self._check_rules()
        srv = self.settings.server
        #: FedAsync (Xie et al.) mixes an arrival with the current model; FedBuff
        #: (Nguyen et al.) adds its change from its own start version
        self._fedasync = srv.rule == "fedasync" or (srv.rule == "auto"
                                                   and srv.buffer_size == 1)

    def _check_rules(self) -> None:
        """Refuse what the asynchronous server does not define (exit 2, one paragraph)."""
        cfg, srv = self.settings, self.settings.server
        agg = self.train_spec.aggregator
        if agg != "fedavg":
            raise UserError(
                f"{cfg.name}: at 'policy.name': policy '{cfg.policy_name}' aggregates with "
                f"'{agg}', which is defined for synchronous rounds (FedNova normalises each "
                "update by the local steps of the devices of one round); the asynchronous "
                "server aggregates with FedBuff's or FedAsync's rule and would silently "
                "ignore it. Allowed: server.mode 'sync' with this policy, or in async mode a "
                "policy that aggregates with FedAvg's rule (fedavg, fedprox, heterofl, "
                "fedrolex, fjord, federated_dropout, distreal); see docs/async.md.")
        fedasync = srv.rule == "fedasync" or (srv.rule == "auto" and srv.buffer_size == 1)
        if not fedasync:
            return
        pipe = self.pipeline
        if pipe.rule is not None or pipe.chain is not None or pipe.device_side:
            raise UserError(
                f"{cfg.name}: at 'server.rule': FedAsync's rule mixes each arrival with the "
                "current model, and the update pipeline (server.aggregator other than "
                "'mean', training.update_transforms, or an attacking class) acts on a "
                "device's change from its own start version, so the two are not defined "
                "together. Allowed: server.rule 'fedbuff' (or 'auto' with buffer_size "
                "above 1) with the pipeline, or FedAsync without it; see docs/async.md.")
        opt = srv.optimizer
        why = []
        if srv.buffer_size != 1:
            why.append(f"server.buffer_size is {srv.buffer_size} (FedAsync mixes every "
                       "arrival at once: 1)")
        if opt.name != "sgd":
            why.append(f"server.optimizer.name is '{opt.name}' (the mixing weight is the "
                       "sgd learning rate: 'sgd')")
        if not opt.lr <= 1.0:
            why.append(f"server.optimizer.lr is {opt.lr!r} (the mixing weight alpha: at "
                       "most 1)")
        if why:
            raise UserError(
                f"{cfg.name}: at 'server.rule': FedAsync's rule (Xie et al., Algorithm 1: "
                "x = (1 - a_t) x + a_t x_new, a_t = alpha * w(staleness)) is chosen "
                f"({'explicitly' if srv.rule == 'fedasync' else 'auto: buffer_size 1'}) "
                f"but {'; '.join(why)}. Allowed: server.rule 'fedbuff' (or 'auto' with "
                "buffer_size above 1), or buffer_size 1 with optimizer {name: sgd, lr: "
                "alpha} and 0 < alpha <= 1; see docs/async.md.")

    def process(self) -> Iterator[simpy.events.Event]:
        env = self.env
        plan = self.policy.plan(0, self.settings.server.concurrency)
        self._job_deadline = self.settings.deadline_s if not plan.wait_all else None
        if self.resumed is None:  # else the restored server goes on where it was
            self._fill()
        while not self._done(self._version):
            version = self._version
            t_job = self._heap[0][0] if self._heap else INF
            # fewer jobs than the concurrency: every idle device is offline now, so the
            # server also wakes at the first instant one of them comes online
            t_online = self._t_online if self._t_online is not None else INF
            t = min(t_job, t_online)
            if t == INF:  # nobody trains and no idle device ever comes online
                yield self._idle_wait()
            else:
                yield env.timeout(max(t - env.now, 0.0))
                # every job ending at this instant, in start order, before any new start:
                # simultaneous arrivals fill the buffer together (so FedBuff with equal
                # devices is synchronous FedAvg), and replacements start from the newest
                # version
                while self._heap and self._heap[0][0] == t:
                    _, jid = heapq.heappop(self._heap)
                    self._job_ended(self._in_flight.pop(jid), t)
                if t_job == t:
                    self._idle = 0
                else:  # woken by devices coming online alone: not progress yet
                    self._count_idle()
                if t_online <= t:
                    self._t_online = None  # that device may start now: look again
            if not self._done(self._version):
                self._fill()
                if self.checkpoints is not None and any(  # several can happen at one instant
                        self.checkpoints.due(v) for v in range(version + 1, self._version + 1)):
                    # after an aggregation: the loop goes on from its top
                    self.checkpoints.save(self.snapshot({"version": self._version}))
        self._finish()

    def _next_online(self, t: float) -> float:
        """The first instant after ``t`` at which an idle device is online (every idle
        device is offline at ``t``: the last fill took all the online ones)."""
        best = INF
        busy = self._busy
        for d in range(self.fleet.n):
            if d not in busy:
                e = self.fleet.trace(d).next_online(t)
                if t < e < best:  # (one online now was not picked: the selector's choice)
                    best = e
        return best

    def _fill(self) -> None:
        """Start jobs on idle online devices until ``concurrency`` are training."""
        cfg = self.settings
        want = cfg.server.concurrency - len(self._in_flight)
        if want <= 0:
            return
        t = self.env.now
        picked = self.selector.select_idle(self._version, t, want,
                                           OnlineAt(self.fleet, t, self._busy, self._alive),
                                           stream(cfg.seed, "select", self._jobs))
        self.fleet.prefetch(picked)
        for d in sorted(picked):
            self._start_job(d)
        if len(picked) >= want:
            self._t_online = None  # full: no need to watch idle devices
        elif self._t_online is None:
            self._t_online = self._next_online(t)

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
        # the policy's round is the model version (FedRolex's window moves per version,
        # not per repeat); the streams keep the job's own key
        a = self.policy.assign(v, d, int(self.fleet.class_of[d]),
                               LazyStream(cfg.seed, "assign", jid))  # type: ignore[arg-type]
        out = DeviceRound(d, jid, t, start_version=v)
        deadline_s = self._job_deadline
        cutoff = self._cutoff(t, deadline_s)
        self.timer.schedule(out, self.timer.checked(a), cutoff, deadline_s, record=True,
                            key=key)
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
        if self.power is not None:
            self.power.commit(out)
        if self._t_online is not None and not self.fleet.online_at(out.device, t):
            # watching idle devices: this one joins them, offline (its next online edge)
            self._t_online = min(self._t_online,
                                 self.fleet.trace(out.device).next_online(t))
        out.plan = None
        if self._learns:
            self.selector.feedback([self._report(out, self._version)])
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
        # in the buffer (and end as not needed). The time budget does not stop it: an
        # arrival exactly at time_budget_s counts, as in a synchronous round
        rounds = self.settings.rounds
        if len(self._buffer) >= srv.buffer_size and (rounds is None or self._version < rounds):
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
                    # FedAsync: x_t = x_{t-1} + a_t (x_new - x_{t-1}), the change from
                    # the current model; FedBuff: the change from the update's own start
                    base = self.state if self._fedasync else start
                    if not math.isfinite(res.loss_sum) or not agg.add(
                            o.round, res.update, base, w):  # type: ignore[arg-type]
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
        if self.backend is not None and (r % cfg.eval_every_rounds == 0
                                         or self._done(self._version)):
            acc, loss = self.backend.evaluate(self.state)  # type: ignore[arg-type]
            self._last_eval = r
        outcomes = self._ended + buf
        done = [o for o in buf if o.status == "completed"]
        kept = [s for o, s in zip(buf, stal) if o.status == "completed"]
        row = round_row(r, self._t_last, t, outcomes, done, losses, kept,
                        selected=self._started_since, acc=acc, loss=loss,
                        world=self.log.world)
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
        now = min(self.env.now, self._cutoff(self.env.now, None))
        for out in sorted(self._in_flight.values(), key=lambda o: o.round):
            self.timer.cut_back(out, now)
            out.status, out.t_end, out.job = "not_needed", now, None
            if self.power is not None:
                self.power.commit(out)
            out.plan = None
            self._ended.append(out)
        for o in self._buffer:  # arrived, but the buffer never filled again
            o.status, o.job = "not_needed", None
            self._ended.append(o)
        self._in_flight.clear()
        self._buffer = []
        self.log.timeline.extend(sorted(self._ended, key=lambda o: o.round))
        self._final_evaluation()
