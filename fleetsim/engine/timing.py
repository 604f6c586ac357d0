"""The timing of one device's round: download, mini-batches with the policy's vectors,
upload -- pure Python, no SimPy.

Download, training and upload depend only on the cost model, the network path and the
device's trace, so the whole round of a device is known at its start
(:meth:`DeviceTimer.schedule`): its fate (arrival, going offline, or the cutoff), the work
done by then and the job to train if it arrives. Step times are exact integrals of the
availability trace (:mod:`fleetsim.traces`), found by search, never by ticking time. A
server that stops waiting earlier (over-commitment, a time budget, the end of an
asynchronous run) cuts the work back to that instant (:meth:`DeviceTimer.cut_back`).

Both servers use this one timer; neither repeats any of it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from fleetsim.costs import CostModel
from fleetsim.engine.power import Power
from fleetsim.engine.rows import DeviceRound, Plan
from fleetsim.engine.settings import EngineSettings
from fleetsim.errors import UserError
from fleetsim.fleet import Fleet
from fleetsim.nn.slicing import keep_share
from fleetsim.policies.base import Assignment, Policy, StepObservation, check_vector
from fleetsim.rng import stream
from fleetsim.training import UpdateJob, epoch_samples, epoch_steps

INF = math.inf
# Mini-batches a deciding policy may ask for in one round when nothing else ends it (the
# server waits for every device), as a multiple of the round's step count: more is taken
# as a policy that never says stop, and is an error.
MAX_STEPS_FACTOR = 100
# ... and at most, whatever ends the round (step times are positive, so a finite cutoff
# ends the loop; this only guards against a policy that chooses empty work for ever).
MAX_STEPS_HARD = 1_000_000


class DeviceTimer:
    """Times devices' rounds for one run.

    Parameters
    ----------
    settings : the run's rules (seed, local work, policy name)
    fleet, costs, policy : the parts
    n_samples : training samples per device
    upload_bytes : bytes on the wire of an upload of a model of n bytes (None: n)
    """

    def __init__(self, settings: EngineSettings, fleet: Fleet, costs: CostModel,
                 policy: Policy, n_samples: np.ndarray,
                 upload_bytes: Callable[[int], int] | None = None) -> None:
        self.settings = settings
        #: bytes of the upload of a model of n bytes (the update pipeline's transforms:
        #: top-k, QSGD); None: the model's own bytes
        self.upload_bytes = upload_bytes
        self.fleet = fleet
        self.costs = costs
        self.policy = policy
        self.n_samples = n_samples
        self.groups = costs.groups
        self._share_memo: dict[tuple[float, ...], float] = {}
        self.train_spec = policy.train_spec()
        # The base policy's decide() is a pure function of the assignment (its vector for
        # steps_of() mini-batches), so the timer may skip building an observation per
        # mini-batch for policies that keep it (FedAvg, FedProx, HeteroFL, ...).
        self._fixed_work = type(policy).decide is Policy.decide
        # bandwidth traces configured for some class (else every transfer takes the
        # constant-rate path, untouched)
        firsts = one_per_class(fleet)
        self.bandwidth = any(fleet.bandwidth(d) is not None for d in firsts)
        # energy models configured for some class: joules per device-round, and
        # batteries that end work (fleetsim.engine.power); else nothing changes
        self.power: Power | None = None
        if any(fleet.energy(d) is not None for d in firsts):
            self.power = Power(fleet)
        else:
            self.schedule = self._schedule  # type: ignore[method-assign]  # (no wrapper)
        # deciding policies see energy and bandwidth where they are modelled (else the
        # observation keeps its defaults, and nothing changes)
        self._observe = self.power is not None or self.bandwidth

    def schedule(self, out: DeviceRound, a: Assignment, cutoff: float,
                 deadline_s: float | None, record: bool, key: int | None = None) -> None:
        """:meth:`_schedule`, and with batteries, the battery's floor as an offline edge:
        the round worked out alone, then again with the device going offline at the
        instant its battery, spending that round's draw, reaches its floor."""
        self._schedule(out, a, cutoff, deadline_s, record, key)
        assert self.power is not None
        t_empty = self.power.empty_at(out)
        if t_empty == INF:
            return
        fresh = DeviceRound(out.device, out.round, out.t_start,
                            start_version=out.start_version)
        self._schedule(fresh, a, cutoff, deadline_s, record, key, t_off_cap=t_empty)
        for f in DeviceRound.__slots__:
            setattr(out, f, getattr(fresh, f))
        out.battery_ended = out.status == "dropped" and out.t_end == t_empty

    def _schedule(self, out: DeviceRound, a: Assignment, cutoff: float,
                  deadline_s: float | None, record: bool, key: int | None = None,
                  t_off_cap: float = INF, down_s_given: float | None = None,
                  stop_at_upload: bool = False) -> None:
        """Work out, at the round's start, how one device's round ends if nobody stops it.

        Download, training and upload depend only on the cost model, the network path and
        the device's trace, so the whole round of a device is known at once: ``out`` gets
        its fate (``status`` and ``t_end``: arrival, going offline, or the cutoff), the
        work done by then, and the job to train if it arrives. The server may still close
        the round earlier (over-commitment, or a time budget); the server's close then cuts
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
        if t_off_cap < t_off:  # its battery reaches its floor then
            t_off = t_off_cap
        nbytes = costs.model_bytes(a.submodel)
        up_nbytes = nbytes if self.upload_bytes is None else self.upload_bytes(nbytes)
        lat = path.latency_s
        bw = fleet.bandwidth(d) if self.bandwidth else None
        # (shared links: the download's duration comes from the network, and the device
        # stops before its upload, which the network carries: engine.shared)
        if bw is None:  # constant rates: the same expressions, the same bits, as ever
            down_s, up_s = path.download_s(nbytes), path.upload_s(up_nbytes)
            up_tr = down_tr = None
        else:
            # rates that vary over time: a transfer's bytes are the exact integral of its
            # rate from its start, so the upload's time depends on when it starts
            # (up_s below is for a start at t; up_at gives it at any other start)
            down_tr, up_tr = self._capped(d, bw)
            down_s = down_tr.transfer_s(t_start, nbytes, lat)
            up_s = up_tr.transfer_s(t_start, up_nbytes, lat)

        # download
        if down_s_given is not None:
            down_s = down_s_given
        t = t_start + down_s
        plan = out.plan = Plan(nbytes, lat, t_start, down_s, down_tr=down_tr, up_tr=up_tr,
                               up_nbytes=up_nbytes)
        if self.bandwidth:
            out.down_s = down_s
        # recorded from the start: a round can close while the device is still downloading
        work = plan.work = [] if record else None
        end, why = phase_end(t, t_off, cutoff)
        out.bytes_down = moved(nbytes, t_start, down_s, end, lat, down_tr)
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
            share = self.share(fixed)
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
                if partial and t_next + (up_s if up_tr is None else up_tr.transfer_s(
                        t_next, up_nbytes, lat)) > deadline_abs:
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
                if up_tr is not None:
                    up_s = up_tr.transfer_s(t, up_nbytes, lat)
                vec = self.policy.decide(StepObservation(
                    d, cls, out.round, step, t, tr.availability_at(t),
                    deadline_abs - t - up_s, up_s, peak, batch, a, costs, rng, vec,
                    **(self._seen(out, t, peak) if self._observe else {}))).vector
                vec = check_vector(name, vec, n_groups)
                if vec is None:
                    break
                macs = costs.step_macs(vec, batch if step != short_at else short_b)
                t_next = tr.finish_time(t, macs / peak)
                if a.partial and t_next + (up_s if up_tr is None else up_tr.transfer_s(
                        t_next, up_nbytes, lat)) > deadline_abs:
                    break  # partial work: send what is done when time is up
                share = self.share(vec)
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
            if up_tr is not None:
                up_s = up_tr.transfer_s(t_next, up_nbytes, lat)
            out.need_s = t_next + up_s - t_start
            end, why = phase_end(t + lat, t_off, cutoff)
            out.t_end, out.status = end, why or "too_slow"
            return
        # upload
        if stop_at_upload:
            plan.up_start = t
            out.t_end, out.status = t, "uploading"
            out.job = UpdateJob(d, key, float(n), tuple(vectors), tuple(step_vec), a.mode,
                                a.reselect, a.offset, self.train_spec.prox_mu, a.samples)
            return
        if up_tr is not None:
            up_s = up_tr.transfer_s(t, up_nbytes, lat)
            out.up_s = up_s
        end, why = phase_end(t + up_s, t_off, cutoff)
        out.bytes_up = moved(up_nbytes, t, up_s, end, lat, up_tr)
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

    def _seen(self, out: DeviceRound, t: float, peak: float) -> dict[str, float]:
        """What device ``out.device`` knows of its energy and bandwidth at ``t``, before a
        mini-batch (:class:`~fleetsim.policies.base.StepObservation`'s trailing fields;
        those of models its class lacks keep their defaults)."""
        d, seen = out.device, {}
        prof = self.fleet.energy(d) if self.power is not None else None
        if prof is not None:
            assert self.power is not None
            w = prof.compute_w(peak)
            # compute joules over idle so far: w times the seconds of work at full
            # availability (the exact integral of w * a(t) over the steps done)
            seen.update(compute_w=w, energy_used_j=w * out.macs / peak,
                        energy_left_j=self.power.left_j(out, t))
        bw = self.fleet.bandwidth(d) if self.bandwidth else None
        if bw is not None:
            seen.update(up_mbps=bw.up.rate_mbps_at(t), down_mbps=bw.down.rate_mbps_at(t))
        return seen

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
            # the server decides whether that is an error
            out.t_end, out.status = INF, "late"
            return
        end, why = phase_end(t_next, t_off, cutoff)
        out.macs += done_macs(tr, t, end, macs, peak)
        out.t_end, out.status = end, why

    def checked(self, a: Assignment) -> Assignment:
        """``a`` with its sub-model vector checked (a policy is user code)."""
        if a.submodel is not None:
            v = check_vector(self.settings.policy_name, a.submodel, len(self.groups),
                             "assign().submodel")
            if v != a.submodel:
                a = dataclasses.replace(a, submodel=v)
        return a

    def cut_back(self, o: DeviceRound, t: float) -> None:
        """Keep only the work a device did by ``t`` (the server stopped waiting then)."""
        p = o.plan
        assert p is not None and p.work is not None, "cut back without recorded work"
        o.bytes_up = 0
        if p.up_start is not None and p.up_start <= t:  # cut off during its upload
            o.bytes_up = moved(p.up_nbytes, p.up_start, p.up_s, t, p.latency_s, p.up_tr)
            return
        if p.t_start + p.down_s > t:  # cut off during its download
            o.bytes_down = moved(p.nbytes, p.t_start, p.down_s, t, p.latency_s, p.down_tr)
        steps, macs, share = 0, 0.0, 0.0
        for t0, t1, m, s in p.work:
            if t1 <= t:
                steps, macs, share = steps + 1, macs + m, share + s
                continue
            if t0 < t:
                macs += done_macs(self.fleet.trace(o.device), t0, t, m,
                                   float(self.fleet.peak_macs_per_s[o.device]))
            break
        o.steps, o.macs, o.kept_share_sum = steps, macs, share

    def _capped(self, d: int, bw: Any) -> tuple[Any, Any]:
        """The device's (down, up) bandwidth traces capped by its path's bottleneck (the
        traces fleet.transfer_s itself integrates)."""
        return self.fleet.capped_bandwidth(d, "down"), self.fleet.capped_bandwidth(d, "up")

    def share(self, vec: tuple[float, ...]) -> float:
        s = self._share_memo.get(vec)
        if s is None:
            s = keep_share(self.groups, vec)
            self._share_memo[vec] = s
        return s


def phase_end(t_phase: float, t_off: float, cutoff: float) -> tuple[float, str | None]:
    """Where a phase that would end at ``t_phase`` ends: itself, going offline or the
    cutoff, whichever comes first. Going offline wins ties (offline at ``t`` means not
    reachable at ``t``); the phase wins a tie with the cutoff (an arrival exactly at the
    deadline counts)."""
    if t_off <= t_phase and t_off <= cutoff:
        return t_off, "dropped"
    if t_phase <= cutoff:
        return t_phase, None
    return cutoff, "late"


def sent(nbytes: int, t0: float, phase_s: float, end: float, latency_s: float) -> int:
    """Bytes of a transfer of ``nbytes`` (started at ``t0``, ``phase_s`` long including
    ``latency_s``) that had crossed the link by ``end``."""
    if end >= t0 + phase_s:
        return nbytes
    wire_s = phase_s - latency_s
    if wire_s <= 0.0:
        return 0
    return int(nbytes * min(max((end - t0 - latency_s) / wire_s, 0.0), 1.0))


def moved(nbytes: int, t0: float, phase_s: float, end: float, latency_s: float,
          trace: Any) -> int:
    """:func:`sent` for a transfer whose rate follows ``trace`` (None: constant): the
    latency first, then the exact integral of the rate, whole bytes, at most ``nbytes``."""
    if trace is None:
        return sent(nbytes, t0, phase_s, end, latency_s)
    if end >= t0 + phase_s:
        return nbytes
    start = t0 + latency_s
    if end <= start:
        return 0
    return min(nbytes, int(trace.megabits(start, end) * 1e6 / 8.0))


def one_per_class(fleet: Fleet) -> list[int]:
    """One device of each class (their bandwidth models are per class)."""
    firsts: dict[int, int] = {}
    for k in np.unique(fleet.class_of).tolist():
        firsts[k] = int(np.flatnonzero(fleet.class_of == k)[0])
    return list(firsts.values())


def done_macs(tr: Any, t0: float, end: float, macs: float, peak: float) -> float:
    """MACs of a step of ``macs`` started at ``t0`` done by ``end``: the integral of the
    available compute, never more than the step itself."""
    return min(macs, peak * (tr.cumulative(end) - tr.cumulative(t0)))

