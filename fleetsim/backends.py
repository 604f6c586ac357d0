"""Where real training runs: in-process, a local worker pool, or Ray.

The engine decides *what* is trained (an :class:`~fleetsim.training.UpdateJob` per update
that reaches aggregation); a backend decides *where*. Every backend yields results in job
order (jobs come sorted by device id), so aggregation sums in the same order and a run
gives the same bits whichever backend trained it.

Evaluation of the global model is started with :meth:`Backend.start_evaluation` and its
result taken later: the worker pool shares it out among its workers, beside the next
round's training, in fixed slices (:func:`fleetsim.training.eval_slices`) whose outputs
are scored in order here, so its figures too are those of one process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from fleetsim.batched import batched_in_order
from fleetsim.data import Dataset, Partition
from fleetsim.errors import UserError
from fleetsim.registry import Registry
from fleetsim.training import Trainer, TrainerSettings, UpdateJob, UpdateResult, eval_slices, score


@dataclass(frozen=True)
class BackendSettings:
    """Where training runs: ``name`` (a registered backend), its worker processes or Ray
    actors, a Ray cluster address (None: a local Ray), and whether the in-process backend
    trains full-model updates of the same step count together (:mod:`fleetsim.batched`)."""

    name: str = "inprocess"
    workers: int = 1
    ray_address: str | None = None
    batched: bool = False


class Evaluation:
    """An evaluation of the global model, started; :meth:`result` waits for it.

    ``pending``: whether it may still be running while the caller goes on (a worker
    pool's); False when the figures were computed at the start (in this process)."""

    pending: ClassVar[bool] = False

    def __init__(self, figures: tuple[float, float]) -> None:
        self._figures = figures

    def result(self) -> tuple[float, float]:
        """Test accuracy and mean loss."""
        return self._figures


class Backend:
    """Base: owns a main-process :class:`Trainer` for the initial model and evaluation.

    Parameters
    ----------
    settings : what training needs (every worker builds its trainer from it)
    where : workers and addresses
    trainer : a main-process trainer already built from ``settings``
    """

    name: ClassVar[str] = ""

    def __init__(self, settings: TrainerSettings, where: BackendSettings | None = None,
                 trainer: Trainer | None = None) -> None:
        self.settings = settings
        self.where = where or BackendSettings(self.name)
        self.trainer = trainer or Trainer(settings)

    def initial_state(self) -> dict[str, Tensor]:
        return self.trainer.initial_state()

    @property
    def buffer_names(self) -> frozenset[str]:
        """Float buffers of the model (batch-norm statistics), for the aggregator."""
        return frozenset(self.trainer.float_buffers)

    def evaluate(self, state: Mapping[str, Tensor]) -> tuple[float, float]:
        """Test accuracy and mean loss of ``state``, now."""
        return self.trainer.evaluate(state)

    def start_evaluation(self, state: Mapping[str, Tensor]) -> Evaluation:
        """Start evaluating ``state`` (which must not change until the result is taken);
        by default it is evaluated at once, in this process."""
        return Evaluation(self.evaluate(state))

    def train(self, state: Mapping[str, Tensor], jobs: Sequence[UpdateJob]
              ) -> Iterator[UpdateResult]:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


BACKENDS: Registry[type[Backend]] = Registry("backend")


@BACKENDS.register("inprocess")
class InProcess(Backend):
    """One update after another in this process (the default)."""

    name = "inprocess"

    def train(self, state: Mapping[str, Tensor], jobs: Sequence[UpdateJob]
              ) -> Iterator[UpdateResult]:
        if self.where.batched:
            yield from batched_in_order(self.trainer, state, jobs)
            return
        for job in jobs:
            yield self.trainer.train(state, job)


# --------------------------------------------------------------------------- worker pool

_WORKER: dict[str, Any] = {}


Layout = list[tuple[str, torch.dtype, tuple[int, ...], int]]


def _layout(state: Mapping[str, Tensor]) -> tuple[Layout, int]:
    """Where each tensor of ``state`` lies in one flat byte buffer (8-byte aligned)."""
    out, off = [], 0
    for k, v in state.items():
        out.append((k, v.dtype, tuple(v.shape), off))
        off += -(-v.numel() * v.element_size() // 8) * 8
    return out, off


def _views(buf: Tensor, layout: Layout) -> dict[str, Tensor]:
    """The tensors of ``layout`` as views into ``buf``."""
    return {k: buf[off:off + math.prod(shape) * dtype.itemsize].view(dtype).view(shape)
            for k, dtype, shape, off in layout}


def _pool_init(settings: TrainerSettings, shared: dict[str, Tensor],
               data: tuple[Dataset, Partition], slots: list[Tensor], layout: Layout,
               free: Any) -> None:
    _WORKER["trainer"] = Trainer(settings, data)
    _WORKER["state"] = shared
    _WORKER["slots"] = [_views(b, layout) for b in slots]
    _WORKER["free"] = free


def _pool_train(item: tuple[int, UpdateJob]) -> tuple[int, int, UpdateResult]:
    """Train one job; its state goes back in a free result slot, the rest as a pickle."""
    i, job = item
    res = _WORKER["trainer"].train(_WORKER["state"], job)
    slot = _WORKER["free"].get()  # blocks only while the main process copies slots out
    with torch.no_grad():
        for k, v in _WORKER["slots"][slot].items():
            v.copy_(res.update.state[k])
    update = dataclasses.replace(res.update, state={})
    return i, slot, dataclasses.replace(res, update=update)


def _pool_eval(slices: list[tuple[int, int]]) -> list[np.ndarray]:
    # numpy arrays travel as plain bytes (outputs are small), not as shared-memory handles
    return [t.numpy() for t in _WORKER["trainer"].eval_logits(_WORKER["state"], slices)]


class _PoolEvaluation(Evaluation):
    """Evaluation slices under way in the pool; :meth:`result` scores them in order."""

    pending = True

    def __init__(self, backend: Pool, parts: Any) -> None:
        self.backend = backend
        self.parts = parts  # an AsyncResult: per task, the outputs of its slices
        self._figures: tuple[float, float] | None = None

    def result(self) -> tuple[float, float]:
        if self._figures is None:
            outs = [torch.from_numpy(a) for part in self.parts.get() for a in part]
            self.backend._readers.remove(self.parts)
            _, y = self.backend.trainer.eval_data()
            self._figures = score(outs, y, self.backend.settings.eval_batch_size)
        return self._figures


@BACKENDS.register("pool")
class Pool(Backend):
    """A pool of single-threaded worker processes that keep model and data loaded.

    The global model lives in shared memory: each round it is written once, and every
    worker reads it from there, so no copy travels per job; only the trained updates come
    back. The dataset is loaded once, here, and shared the same way: workers neither load
    nor hold their own copy.

    Evaluation runs in the workers too, one task per slice of the test set, queued at
    once: the workers evaluate round r while this process settles the round and the
    next one's jobs queue behind, so no worker waits for an evaluation in the main
    process. The model evaluated is the one the next round trains from, so both read the
    same shared copy; a different model is written only once the evaluations reading
    the old one are done (:meth:`_publish`).
    """

    name = "pool"

    def __init__(self, settings: TrainerSettings, where: BackendSettings | None = None,
                 trainer: Trainer | None = None) -> None:
        import torch.multiprocessing as mp

        from fleetsim import forkserver

        # forkserver: workers fork from a clean server process, not from this one, whose
        # torch thread pools must not be forked; the preload keeps start-up fast. Started
        # here if ``fleetsim run`` has not started it already, so that its imports at
        # least overlap with the data loading below.
        ctx = mp.get_context("forkserver")
        forkserver.start()
        super().__init__(settings, where, trainer)
        self.shared = {k: v.clone().share_memory_() for k, v in self.initial_state().items()}
        ds = self.trainer.data
        for t in (ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.x_val, ds.y_val):
            if t is not None:
                t.share_memory_()  # in place: pickling to a worker then sends a handle
        # Trained states come back through shared result slots, copied out here as each
        # arrives, not as pickles (6.6 MB a job for the McMahan CNN, which cost the main
        # process ~10 ms a job to receive): two per worker, so a worker seldom waits for one.
        # Each slot is one flat buffer: a worker starts with one file descriptor per
        # shared buffer, and the fork server sends at most 256.
        layout, nbytes = _layout(self.shared)
        bufs = [torch.zeros(nbytes, dtype=torch.uint8).share_memory_()
                for _ in range(2 * self.where.workers)]
        self.slots = [_views(b, layout) for b in bufs]
        self.free = ctx.SimpleQueue()
        for i in range(len(self.slots)):
            self.free.put(i)
        self.pool = ctx.Pool(self.where.workers, initializer=_pool_init,
                             initargs=(settings, self.shared, (ds, self.trainer.partition),
                                       bufs, layout, self.free))
        self._published: Mapping[str, Tensor] | None = None  # what ``shared`` holds
        self._readers: list[Any] = []  # evaluations under way, reading ``shared``

    def _publish(self, state: Mapping[str, Tensor]) -> None:
        """Make ``state`` the shared global model the workers read."""
        if self._readers and state is self._published:
            return  # evaluations under way read these very values: leave them be
        for r in self._readers:
            r.wait()  # never overwrite a model that an evaluation is still reading
        with torch.no_grad():
            for k, v in self.shared.items():
                v.copy_(state[k])
        self._published = state

    def train(self, state: Mapping[str, Tensor], jobs: Sequence[UpdateJob]
              ) -> Iterator[UpdateResult]:
        self._publish(state)
        # Results are taken as they arrive, so that their slots come free at once (in job
        # order, a worker could hold every slot with later jobs while this process waits
        # for an earlier one), and handed out in job order. Chunksize 1 balances uneven
        # jobs across workers.
        done: dict[int, UpdateResult] = {}
        nxt = 0
        arrivals = self.pool.imap_unordered(_pool_train, enumerate(jobs), chunksize=1)
        try:
            for i, slot, res in arrivals:
                state = {k: v.clone() for k, v in self.slots[slot].items()}
                self.free.put(slot)
                done[i] = dataclasses.replace(res, update=dataclasses.replace(res.update,
                                                                              state=state))
                while nxt in done:
                    yield done.pop(nxt)
                    nxt += 1
        finally:
            # Left early (an error here or in a job): the jobs still running must get
            # their slots back, or they would wait for them for ever (and so would close).
            with contextlib.suppress(Exception):
                for _, slot, _ in arrivals:
                    self.free.put(slot)

    def evaluate(self, state: Mapping[str, Tensor]) -> tuple[float, float]:
        return self.start_evaluation(state).result()

    def start_evaluation(self, state: Mapping[str, Tensor]) -> Evaluation:
        self._publish(state)
        slices = eval_slices(len(self.trainer.eval_data()[1]))
        # static batch-norm statistics (HeteroFL's sBN) are recomputed over the whole
        # training set by every task that evaluates: one task then, not one per slice
        static = self.trainer.model.bn_stats == "static"
        tasks = [slices] if static else [[s] for s in slices]
        # a few slices per message; the tasks are even, so this costs no balance
        per_msg = max(1, len(tasks) // (4 * self.where.workers))
        parts = self.pool.map_async(_pool_eval, tasks, chunksize=per_msg)
        self._readers.append(parts)
        return _PoolEvaluation(self, parts)

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


# --------------------------------------------------------------------------- Ray


@BACKENDS.register("ray")
class RayBackend(Backend):
    """Ray actors, each holding a trainer; local Ray by default or a cluster address.

    Install with ``pip install .[ray]``. The global state is put in Ray's object store
    once per round and shared by all actors.
    """

    name = "ray"

    def __init__(self, settings: TrainerSettings, where: BackendSettings | None = None,
                 trainer: Trainer | None = None) -> None:
        super().__init__(settings, where, trainer)
        try:
            import ray
        except ImportError:
            raise UserError("training.backend: 'ray' needs Ray, which is not installed. "
                            "Allowed: install it with `pip install .[ray]`, or use backend "
                            "inprocess or pool.") from None
        self.ray = ray
        if not ray.is_initialized():
            if self.where.ray_address:
                ray.init(address=self.where.ray_address, log_to_driver=False)
            else:
                ray.init(num_cpus=self.where.workers, include_dashboard=False,
                         log_to_driver=False)
        actor = ray.remote(num_cpus=1)(_RayTrainer)
        self.actors = [actor.remote(settings) for _ in range(self.where.workers)]
        #: the Ray node of each actor, and how many jobs each node trained (on a cluster
        #: of several machines, where the work went)
        self.nodes: list[str] = ray.get([a.node.remote() for a in self.actors])
        self.jobs_per_node: dict[str, int] = dict.fromkeys(self.nodes, 0)

    def train(self, state: Mapping[str, Tensor], jobs: Sequence[UpdateJob]
              ) -> Iterator[UpdateResult]:
        ref = self.ray.put(dict(state))
        refs = []
        for i, job in enumerate(jobs):
            a = i % len(self.actors)
            refs.append(self.actors[a].train.remote(ref, job))
            self.jobs_per_node[self.nodes[a]] += 1
        for r in refs:
            yield self.ray.get(r)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []


class _RayTrainer:
    def __init__(self, settings: TrainerSettings) -> None:
        self.trainer = Trainer(settings)

    def train(self, state: Mapping[str, Tensor], job: UpdateJob) -> UpdateResult:
        return self.trainer.train(state, job)

    def node(self) -> str:
        """The id of the Ray node this actor runs on."""
        import ray

        return str(ray.get_runtime_context().get_node_id())


def make_backend(settings: TrainerSettings, where: BackendSettings) -> Backend:
    return BACKENDS.get(where.name)(settings, where)
