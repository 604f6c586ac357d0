"""The run's lifecycle (:class:`Engine`): one SimPy environment, one server process.

Which server runs is the scenario's ``server.mode``, looked up in :data:`SERVERS`. The
engine builds the device timer and the server, runs the environment to its end, and
tells the callbacks; the server owns the protocol, its state and the global model.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import simpy
import torch

from fleetsim.backends import Backend
from fleetsim.callbacks import Callback
from fleetsim.costs import CostModel
from fleetsim.engine.async_server import AsyncServer
from fleetsim.engine.rows import RunLog
from fleetsim.engine.server import Server
from fleetsim.engine.settings import EngineSettings
from fleetsim.engine.sync import SyncServer
from fleetsim.engine.timing import DeviceTimer
from fleetsim.errors import UserError
from fleetsim.fleet import Fleet
from fleetsim.pipeline import UpdatePipeline
from fleetsim.policies.base import Policy
from fleetsim.server.selection import Selector

#: ``server.mode`` -> the server that runs it
SERVERS: dict[str, type[Server]] = {"sync": SyncServer, "async": AsyncServer}


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
    server_opt : the server optimizer applied to every aggregate (None: FedAvg)
    pipeline : attacks, update transforms, the aggregation rule and DP noise (None: none)
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
        self.n_samples = n_samples
        self.callbacks = tuple(callbacks)
        self.server_opt = server_opt
        self.env = simpy.Environment()
        # attacks, update transforms, the aggregation rule, DP noise (default: none of them)
        self.pipeline = pipeline if pipeline is not None else UpdatePipeline()
        self.log = RunLog(attackers=self.pipeline.attackers)
        # only transforms change an upload's bytes (else the timer's path is untouched)
        self.timer = DeviceTimer(settings, fleet, costs, policy, n_samples,
                                 self.pipeline.upload_bytes if self.pipeline.chain else None)
        self.train_spec = self.timer.train_spec
        self.log.world = frozenset(
            {"bandwidth"} if self.timer.bandwidth else set()) | frozenset(
            {"energy"} if self.timer.power is not None else set()) | frozenset(
            {"sharing"} if fleet.sharing else set())
        self.server = SERVERS[settings.server.mode](
            settings, self.env, self.timer, fleet, policy, selector, backend, n_samples,
            self.callbacks, server_opt, self.log, self.pipeline)

    @property
    def backend(self) -> Backend | None:
        """Where training runs (the server's; None in timing-only mode)."""
        return self.server.backend

    @backend.setter
    def backend(self, backend: Backend | None) -> None:
        self.server.backend = backend  # a test may swap in an instrumented backend

    @property
    def state(self) -> dict[str, torch.Tensor] | None:
        """The global model (None in timing-only mode)."""
        return self.server.state

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoints(self) -> Any:
        """The checkpoint writer (:mod:`fleetsim.checkpoint`; None: off)."""
        return self.server.checkpoints

    @checkpoints.setter
    def checkpoints(self, writer: Any) -> None:
        if writer is not None and self.server.links is not None:
            raise UserError(
                f"{self.settings.name}: at 'output.checkpoint_every_rounds': checkpoints do "
                "not yet keep the shared links' transfers (fleet.network.sharing), so a "
                "resumed run could differ from an uninterrupted one. Allowed: "
                "checkpoint_every_rounds null (or 0) with shared links, or sharing 'off'.")
        self.server.checkpoints = writer

    def snapshot(self, position: dict[str, Any]) -> dict[str, Any]:
        """The run's state at ``position`` (see :meth:`Server.snapshot`)."""
        return self.server.snapshot(position)

    def restore(self, snap: dict[str, Any]) -> None:
        """Go on from ``snap`` when :meth:`run` is called: a new environment that starts
        at the saved simulated time, and the server's saved state."""
        self.env = self.server.env = simpy.Environment(initial_time=snap["now"])
        self.server.restore(snap)

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
            proc = self.env.process(self.server.process())
            self.env.run()
            if proc.is_alive:
                # nothing left to happen, and the server still waits: transfers stalled
                # at rate 0 for ever with no deadline (never silently a shorter run)
                raise UserError(
                    f"{self.settings.name}: the run stalled at t={self.env.now:g} s: every "
                    "transfer still running moves at rate 0 for ever and nothing else can "
                    "end the round. Allowed: links and bandwidth traces with rates above 0, "
                    "a training.deadline_s, or a training.time_budget_s.")
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
