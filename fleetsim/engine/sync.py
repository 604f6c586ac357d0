"""The synchronous server: rounds of K devices, a deadline, FedAvg-style aggregation.

Each round it selects devices among those online, has the timer work out each selected
device's whole round at once (:class:`~fleetsim.engine.timing.DeviceTimer`), and waits
with one SimPy timeout until every fate, the deadline, or (with over-commitment) the K-th
arrival. No device needs a process or an event of its own: devices do not interact, so
their rounds are computed alone, exactly and fast.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import simpy

from fleetsim.backends import Evaluation
from fleetsim.engine.rows import INF, DeviceRound, round_row
from fleetsim.engine.server import OnlineAt, Server
from fleetsim.engine.shared import device_round
from fleetsim.errors import UserError
from fleetsim.rng import stream


class SyncServer(Server):
    """Synchronous rounds (the default ``server.mode``)."""

    def process(self) -> Iterator[simpy.events.Event]:
        env, cfg = self.env, self.settings
        timer = self.timer
        k = cfg.clients_per_round
        deadline_s = cfg.deadline_s
        r = 0 if self.resumed is None else self.resumed["round"]
        pending: tuple[dict[str, Any], Evaluation | None] | None = None  # a row to finish
        while not self._done(r):
            t_start = env.now
            plan = self.policy.plan(r, k)
            selected = self.selector.select(r, t_start, plan.select,
                                            OnlineAt(self.fleet, t_start, None, self._alive),
                                            stream(cfg.seed, "select", r))
            if not selected:
                yield self._idle_wait()
                continue
            self._idle = 0
            selected = sorted(selected)
            cutoff = self._cutoff(t_start, None if plan.wait_all else deadline_s)
            rng_assign = stream(cfg.seed, "assign", r)
            outcomes = []
            self.fleet.prefetch(selected)
            procs = []
            busy0 = self.links.busy_s() if self.links is not None else 0.0
            for d in selected:
                a = self.policy.assign(r, d, int(self.fleet.class_of[d]), rng_assign)
                out = DeviceRound(d, r, t_start, start_version=r)
                if self.links is not None:  # devices interact: a process each
                    a = timer.checked(a)
                    nbytes = self.timer.costs.model_bytes(a.submodel)
                    procs.append(env.process(device_round(
                        env, self.links, timer, out, a, cutoff, deadline_s, nbytes,
                        nbytes if timer.upload_bytes is None else timer.upload_bytes(nbytes))))
                else:
                    timer.schedule(out, timer.checked(a), cutoff, deadline_s,
                                   record=plan.keep < plan.select)
                outcomes.append(out)
            if procs:
                yield env.all_of(procs)  # (a run that stalls is caught by the engine)
            self._check_can_close(outcomes, cutoff, plan.keep, plan.select, r)
            # Every fate is known now, so the server waits with one timeout for the
            # instant it stops waiting (every fate, the cutoff or the keep-th arrival),
            # not with a SimPy process per device: that was most of the engine's events
            # and ~10 us per selected device. SimPy reaches that instant as now + (t -
            # now), exactly where the first of per-device timeouts would have woken it
            # (the map is monotone), so the next round starts at the same time to the bit.
            # The close time itself is the fates' own, not env.now, which can land an ulp
            # short of t: a device that arrived must not look as if it were still working.
            t_end = close_time(outcomes, cutoff, plan.keep if plan.keep < plan.select
                               else None)
            yield env.timeout(max(t_end - env.now, 0.0))
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
                self._last_eval = r
            done = [o for o in outcomes if o.status == "completed"]  # without the rejected
            row = round_row(r, t_start, t_end, outcomes, done, losses,
                            world=self.log.world, link_busy_s=(
                                self.links.busy_s() - busy0 if self.links else 0.0))
            row.update(self.pipeline.figures())
            self.log.rounds.append(row)
            self.log.timeline.extend(outcomes)
            # Selectors learn from training losses and times, never from the evaluation,
            # so the next round's schedule need not wait for it.
            if self._learns:
                self.selector.feedback([self._report(o, r, losses.get(o.device, math.nan))
                                        for o in outcomes])
            pending = (row, evaluation)
            if evaluation is None or not evaluation.pending:
                self._settle(pending)  # nothing to wait for: tell the callbacks now
                pending = None
            r += 1
            if self.checkpoints is not None and not self._done(r) and self.checkpoints.due(r):
                self._settle(pending)  # the row is finished before it is saved
                pending = None
                self.checkpoints.save(self.snapshot({"round": r}))
        self._settle(pending)
        self._final_evaluation()

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

    def _check_can_close(self, outcomes: list[DeviceRound], cutoff: float, keep: int,
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
                self.timer.cut_back(o, t_end)
                o.status = "late" if t_end >= cutoff else "not_needed"
                o.t_end, o.job = t_end, None
            if self.power is not None:
                self.power.commit(o)  # its joules, and its battery spends them
            o.plan = None  # only needed until the round closes

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


def close_time(outcomes: Sequence[DeviceRound], cutoff: float, keep: int | None) -> float:
    """When the server stops waiting: every fate, the cutoff or (over-commitment,
    ``keep``) the ``keep``-th arrival, whichever comes first."""
    t = min(max(o.t_end for o in outcomes), cutoff)
    if keep is not None:
        arrivals = sorted(o.t_end for o in outcomes if o.status == "completed")
        if len(arrivals) >= keep:
            t = min(t, arrivals[keep - 1])
    return t
