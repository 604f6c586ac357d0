"""What both servers share: the parts, the global model, the rules for idle waits,
cutoffs and the final evaluation (:class:`Server`), and the selectors' view of the fleet
(:class:`OnlineAt`). The synchronous and asynchronous servers subclass it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import simpy
import torch

from fleetsim.backends import Backend
from fleetsim.callbacks import Callback
from fleetsim.engine.rows import DeviceRound, RunLog
from fleetsim.engine.settings import EngineSettings
from fleetsim.engine.shared import SharedLinks
from fleetsim.engine.timing import DeviceTimer, one_per_class
from fleetsim.errors import UserError
from fleetsim.fleet import Fleet
from fleetsim.pipeline import UpdatePipeline
from fleetsim.policies.base import Policy
from fleetsim.server.selection import DeviceReport, Selector

INF = math.inf
# Consecutive waits with no online (idle) device after which a run is declared stuck
# (with the default 60 s retry, about a week of simulated time with the whole fleet
# offline).
MAX_IDLE_WAITS = 10_000


class OnlineAt:
    """What a selector asks of the fleet at a round's start: whether a device is online
    then, and (``prefetch``) the devices it is about to ask about, whose traces a source
    with counter streams then makes together."""

    __slots__ = ("_alive", "_busy", "_fleet", "_t", "prefetch")

    def __init__(self, fleet: Fleet, t: float, busy: set[int] | None = None,
                 alive: Callable[[int, float], bool] | None = None) -> None:
        self._fleet, self._t, self._busy, self._alive = fleet, t, busy, alive
        self.prefetch = self._prefetch if fleet.batched else None

    def _prefetch(self, devices: Sequence[int]) -> None:
        self._fleet.prefetch(devices, online_only=True)

    def __call__(self, device: int) -> bool:
        """Online at the time (and, in asynchronous mode, not training already)."""
        if self._busy is not None and device in self._busy:
            return False
        if not self._fleet.online_at(device, self._t):
            return False
        # with batteries: one at its floor is off until charged back
        return self._alive is None or self._alive(device, self._t)


class Server:
    """A server of one run: owns the global model and the run's log; a subclass owns its
    protocol's state and its SimPy process (:meth:`process`).

    Parameters
    ----------
    settings : the run's rules
    env : the run's SimPy environment
    timer : times each device's round
    fleet, policy, selector, backend, n_samples, callbacks, server_opt : the parts
    log : where rows go
    pipeline : the update pipeline (attacks, transforms, aggregation rule, noise)
    """

    def __init__(self, settings: EngineSettings, env: simpy.Environment, timer: DeviceTimer,
                 fleet: Fleet, policy: Policy, selector: Selector, backend: Backend | None,
                 n_samples: np.ndarray, callbacks: Sequence[Callback], server_opt: Any,
                 log: RunLog, pipeline: UpdatePipeline | None = None) -> None:
        self.settings = settings
        self.env = env
        self.timer = timer
        self.fleet = fleet
        self.policy = policy
        self.selector = selector
        self.backend = backend
        self.n_samples = n_samples
        self.callbacks = callbacks
        # applied to every aggregate (None: the aggregate is the new model, FedAvg)
        self.server_opt = server_opt
        # attacks, update transforms, the aggregation rule, DP noise (default: none of them)
        self.pipeline = pipeline if pipeline is not None else UpdatePipeline()
        self.log = log
        self.train_spec = timer.train_spec
        # A selector that keeps the base feedback() learns nothing (random): a frozen
        # report per ended device-round would be built for nobody.
        self._learns = type(selector).feedback is not Selector.feedback
        self.state: dict[str, torch.Tensor] | None = (
            backend.initial_state() if backend is not None else None)
        self._idle = 0  # consecutive idle waits
        self.power = timer.power  # batteries and joules (None: no energy model)
        self._alive = self.power.alive if self.power is not None else None
        if self.power is not None and selector.fleet.battery_fraction is not None:
            # selectors see battery levels (build gives the view a placeholder the
            # engine's batteries replace)
            selector.fleet = dataclasses.replace(selector.fleet,
                                                 battery_fraction=self.power.fraction)
        #: shared links (fleet.network.sharing): transfers as SimPy events
        self.links = SharedLinks(env, fleet) if fleet.sharing else None
        if self.links is not None:
            self._refuse_with_sharing()
        self._last_eval = -1  # the last round (version) evaluated
        #: the checkpoint writer (:class:`fleetsim.checkpoint.Checkpoints`: ``due(n)``,
        #: ``save(snapshot)``; None: off), and where a resumed run goes on (set by
        #: :meth:`restore`)
        self.checkpoints: Any = None
        self.resumed: dict[str, Any] | None = None

    def _refuse_with_sharing(self) -> None:
        """What shared links are not combined with yet: an error, never a run that
        silently leaves one of them out."""
        cfg = self.settings
        why = []
        if cfg.server.mode == "async":
            why.append("server.mode is 'async' (shared links: sync rounds only, so far)")
        if self.policy.plan(0, cfg.clients_per_round).keep < \
                self.policy.plan(0, cfg.clients_per_round).select:
            why.append("policy.options.stragglers is 'overcommit'")
        for d in one_per_class(self.fleet):
            prof = self.fleet.energy(d)
            if self.fleet.battery(d) is not None and prof is not None and (
                    prof.joules_per_byte_up is not None
                    or prof.joules_per_byte_down is not None):
                # a shared transfer's airtime is known only when it ends, so its
                # per-byte radio power is not constant, and its battery's empty instant
                # not known while it runs
                why.append(f"class {int(self.fleet.class_of[d])} has a battery and radio "
                           "energy per byte (joules_per_byte_up/down)")
        if why:
            raise UserError(
                f"{cfg.name}: at 'fleet.network.sharing': shared links are simulated in "
                f"synchronous rounds without over-commitment, with batteries where the "
                f"radio draws a power (tx_w, rx_w), and {'; '.join(why)}. Allowed: sharing "
                "'off' with these, or sync rounds with stragglers 'discard' or 'wait' and "
                "radio powers tx_w / rx_w on classes with batteries.")

    def process(self) -> Iterator[simpy.events.Event]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ checkpoints

    #: the attributes of a server that cross rounds, which a checkpoint keeps (a
    #: subclass adds its protocol's own)
    STATE: ClassVar[tuple[str, ...]] = ("_last_eval", "_idle")

    def snapshot(self, position: dict[str, Any]) -> dict[str, Any]:
        """Everything the run needs to go on from ``position`` (a round's end in sync
        mode, an aggregation in async mode): simulated time, global model, rows so far,
        the selector's, policy's and server optimizer's state, the batteries, and the
        server's own state (:data:`STATE`: in async mode the jobs in flight, the buffer and
        the model versions they train from). The schedule needs nothing else: it depends
        only on the traces and on streams keyed by purpose. Written to a file by
        :mod:`fleetsim.checkpoint`."""
        return {
            "position": {**position, "server": {k: getattr(self, k) for k in self.STATE}},
            "now": self.env.now, "state": self.state,
            "rounds": self.log.rounds, "timeline": self.log.timeline,
            # (its fleet view is built from the scenario, and may hold the batteries' view)
            "selector": {k: v for k, v in vars(self.selector).items() if k != "fleet"},
            # the policy's context is built from the scenario; the rest may be its state
            "policy": {k: v for k, v in vars(self.policy).items() if k != "ctx"},
            "server_opt": None if self.server_opt is None else vars(self.server_opt),
            "batteries": None if self.power is None else self.power.states,
            "pipeline": self.pipeline.state()}

    def restore(self, snap: dict[str, Any]) -> None:
        """Go on from ``snap`` (what :meth:`snapshot` gave) when the process starts (the
        engine has given the server an environment that starts at ``snap["now"]``)."""
        self.state = snap["state"]
        self.log.rounds, self.log.timeline = snap["rounds"], snap["timeline"]
        vars(self.selector).update(snap["selector"])
        vars(self.policy).update(snap["policy"])
        if self.server_opt is not None:
            vars(self.server_opt).update(snap["server_opt"])
        if self.power is not None:
            self.power.states = snap["batteries"]
        self.pipeline.load_state(snap["pipeline"])
        for k, v in snap["position"]["server"].items():
            setattr(self, k, v)
        self.resumed = snap["position"]

    # ------------------------------------------------------------------ shared rules

    def _cutoff(self, t_start: float, deadline_s: float | None) -> float:
        """When work started at ``t_start`` stops at the latest: its deadline, or the time
        budget (no result of a run lies past its budget; the budget closes the work
        running then, as a deadline does)."""
        cutoff = t_start + deadline_s if deadline_s is not None else INF
        budget_s = self.settings.time_budget_s
        if budget_s is not None:
            cutoff = min(cutoff, budget_s)
        return cutoff

    def _idle_wait(self) -> simpy.events.Timeout:
        """Wait ``idle_wait_s`` because no device could start; a run that waits
        :data:`MAX_IDLE_WAITS` times in a row cannot go on, and is an error."""
        self._count_idle()
        return self.env.timeout(self.settings.idle_wait_s)

    def _count_idle(self) -> None:
        """One more wait in a row in which no work could start; too many is an error."""
        cfg = self.settings
        self._idle += 1
        if self._idle > MAX_IDLE_WAITS:
            n = self._idle - 1
            raise UserError(
                f"{cfg.name}: no device was online for {n} server retries in a row "
                f"({n * cfg.idle_wait_s:g} simulated seconds from "
                f"t={self.env.now - n * cfg.idle_wait_s:g} s), so the run cannot go on. "
                "Allowed: traces in which devices come online (check with `fleetsim "
                "traces show`), or a time_budget_s.")

    def _done(self, n: int) -> bool:
        """The run is over after ``n`` rounds (aggregations), or at its time budget."""
        tr = self.settings
        if tr.rounds is not None and n >= tr.rounds:
            return True
        return tr.time_budget_s is not None and self.env.now >= tr.time_budget_s

    def _apply(self, agg: Any) -> dict[str, torch.Tensor]:
        """The new global model: the aggregate, through the server optimizer if any."""
        new = agg.result()
        if self.server_opt is None:
            return new
        return self.server_opt.step(self.state, new, agg.trained())

    def _report(self, o: DeviceRound, r: int, loss: float = math.nan) -> DeviceReport:
        """What a selector hears of a device-round that ended."""
        return DeviceReport(o.device, r, o.status,
                            o.need_s if o.status == "too_slow" else o.t_end - o.t_start,
                            loss, o.steps, int(self.n_samples[o.device]))

    def _final_evaluation(self) -> None:
        """The run ended by its time budget (or its last aggregation) after a round that
        was not evaluated: evaluate the final model into the last row."""
        if self.backend is not None and self.log.rounds and \
                self._last_eval != len(self.log.rounds) - 1:
            acc, loss = self.backend.evaluate(self.state)  # type: ignore[arg-type]
            self.log.rounds[-1].update(accuracy=acc, loss=loss)
