"""The DSE's convergence proxy: how much a dropout vector slows training, measured against
the full network under common random numbers.

Every candidate and a reference with no dropout (d = 0) train ``budget_steps``
mini-batches from the same warm-started model, once per *repeat*. Within a repeat both
see the same mini-batches; repeats differ in their mini-batches and in the candidate's
channel draws. A repeat's value is the candidate's validation loss minus the reference's
(its *excess loss*, in nats): the noise that the batches put into both cancels, and the
d = 0 candidate's excess is exactly 0. The proxy is the mean over repeats, its spread
their standard deviation.

A candidate whose training diverges in any repeat (a loss that is not finite, or a
validation loss more than 10% above the untrained initial model's or a uniform guess's,
whichever is higher: the budget lost everything the warm-up learned and more) is
*infeasible*: the search keeps it off the front.

The validation samples are held out from the training split; the test set is never used
for design decisions. With ``bn_stats: static`` the batch-norm statistics are recomputed
on the DSE's training split before each validation loss, as the model's static mode does
before every evaluation of a run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fleetsim.config import DseConfig
from fleetsim.data import Dataset, Partition
from fleetsim.errors import UserError
from fleetsim.training import Trainer, TrainerSettings, UpdateJob

Vector = tuple[float, ...]

#: The round key of the warm-up's mini-batch stream; repeats use keys from 1 on.
WARMUP_STREAM = 0


@dataclass(frozen=True)
class ProxyResult:
    """One candidate's proxy.

    Attributes
    ----------
    excess : per repeat, validation loss of the candidate minus the d = 0 reference's (nan
        where the candidate diverged)
    diverged : whether training diverged in any repeat (the candidate is infeasible)
    """

    excess: tuple[float, ...]
    diverged: bool

    @property
    def mean(self) -> float:
        return math.nan if self.diverged else float(np.mean(self.excess))

    @property
    def spread(self) -> float:
        """Standard deviation of the excess over repeats (0 with one repeat)."""
        if self.diverged:
            return math.nan
        return float(np.std(self.excess, ddof=1)) if len(self.excess) > 1 else 0.0

    def to_json(self) -> dict[str, object]:
        return {"excess": [None if math.isnan(x) else x for x in self.excess],
                "diverged": self.diverged}

    @staticmethod
    def from_json(d: dict[str, object]) -> ProxyResult:
        ex = d["excess"]
        assert isinstance(ex, list)
        return ProxyResult(tuple(math.nan if x is None else float(x) for x in ex),
                           bool(d["diverged"]))


@dataclass(frozen=True)
class Reference:
    """What every candidate is compared with: the warm start and its d = 0 runs.

    Attributes
    ----------
    warm : the warm-started model state every run starts from
    warm_loss : its validation loss
    initial_loss : the untrained initial model's validation loss
    losses : per repeat, the d = 0 reference's validation loss after the budget
    streams : per repeat, the key of its mini-batch and channel streams
    num_classes : classes of the task (a uniform guess has loss ln C)
    """

    warm: dict[str, torch.Tensor]
    warm_loss: float
    initial_loss: float
    losses: tuple[float, ...]
    streams: tuple[int, ...]
    num_classes: int = 2

    @property
    def diverged_loss(self) -> float:
        """The divergence line: 10% above the worse of the untrained model and a uniform
        guess (ln C). A run beyond it lost all the warm-up taught and more; the margin
        keeps the first steps from an untrained start (no warm-up), which may wobble
        just above it, feasible."""
        return 1.1 * max(self.initial_loss, math.log(self.num_classes))


def default_streams(repeats: int) -> tuple[int, ...]:
    return tuple(range(WARMUP_STREAM + 1, WARMUP_STREAM + 1 + repeats))


class Evaluator:
    """Trains candidates from the warm start and measures their excess validation loss.

    Parameters
    ----------
    cfg : the DSE settings (seed, split, warm-up, budget)
    trainer : how candidates train (model, data, optimiser, batch size)
    streams : the repeats' stream keys (default 1 .. ``cfg.repeats``); two evaluators with
        disjoint keys measure the same candidates on independent repeats
    reference : the warm start and reference runs when already computed (pool workers
        get them from the main process)
    """

    def __init__(self, cfg: DseConfig, trainer: TrainerSettings,
                 streams: Sequence[int] | None = None,
                 reference: Reference | None = None) -> None:
        self.cfg = cfg
        streams = tuple(streams) if streams is not None else default_streams(cfg.repeats)
        if not streams or WARMUP_STREAM in streams or len(set(streams)) != len(streams):
            raise ValueError(f"repeat streams must be distinct keys other than "
                             f"{WARMUP_STREAM} (the warm-up's), not {streams}")
        # One "device" holding the DSE's training split: the trainer's machinery (sliced
        # sub-networks, per-step channel streams, masked SGD, static batch norm) is reused
        # unchanged. Candidates train from the DSE's own seed, not the run's: the front is
        # cached by the DSE's settings alone, so a front that depended on the run seed
        # would depend on which seed happened to search first.
        # The DSE's own validation samples go where evaluate() reads the "test" split (below),
        # whatever split the run itself evaluates on (a learning-rate sweep evaluates on
        # data.validation_fraction, which the DSE never sees: it is not in x_train).
        t = Trainer(dataclasses.replace(trainer, seed=cfg.seed, eval_split="test"))
        ds = t.data
        n = len(ds.y_train)
        perm = np.random.default_rng(cfg.seed).permutation(n)
        n_val = max(1, round(n * cfg.val_fraction))
        val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        if len(train) == 0:
            raise UserError(f"at 'dse.val_fraction': {cfg.val_fraction} leaves none of the "
                            f"{n} training samples to train candidates on. Allowed: a share "
                            "in (0, 1) that leaves at least one sample.")
        # the training split alone is the trainer's training set, so static batch norm
        # recomputes its statistics without the validation samples
        t.data = Dataset(ds.name, ds.x_train[train], ds.y_train[train], ds.x_train[val],
                         ds.y_train[val], ds.input_shape, ds.num_classes)
        t.partition = Partition(np.arange(len(train), dtype=np.int64),
                                np.array([0, len(train)]))
        self.trainer = t
        self.n_train = len(train)
        self.zero: Vector = (0.0,) * len(t.model.groups)
        self.reference = reference if reference is not None else self._reference(streams)
        if self.reference.streams != streams:
            raise ValueError("the reference was measured on other streams")

    # -- the common start -------------------------------------------------------------

    def _reference(self, streams: tuple[int, ...]) -> Reference:
        t = self.trainer
        init = t.initial_state()
        initial_loss = self.val_loss(init)
        warm = init
        if self.cfg.warmup_steps:
            job = UpdateJob(0, WARMUP_STREAM, 1.0, (self.zero,), (0,) * self.cfg.warmup_steps)
            warm = dict(t.train(init, job).update.state)
        warm_loss = self.val_loss(warm)
        if not math.isfinite(warm_loss):
            raise UserError(f"at 'dse.warmup_steps': the full network's {self.cfg.warmup_steps}"
                            f" warm-up mini-batches diverged (validation loss {warm_loss}) at "
                            f"learning rate {t.opt.lr}. Allowed: a learning rate "
                            "(training.optimizer.lr) at which the full network trains.")
        ref = Reference(warm, warm_loss, initial_loss, (), streams, t.data.num_classes)
        losses = []
        for s in streams:
            loss = self._run(ref, self.zero, s)
            if loss is None:
                raise UserError(f"at 'dse.budget_steps': the full network (d = 0), the "
                                f"reference of every candidate, diverged within "
                                f"{self.cfg.budget_steps} mini-batches from the warm start "
                                f"at learning rate {t.opt.lr}. Allowed: a learning rate "
                                "(training.optimizer.lr) at which the full network trains.")
            losses.append(loss)
        return dataclasses.replace(ref, losses=tuple(losses))

    # -- measurements -----------------------------------------------------------------

    def val_loss(self, state: dict[str, torch.Tensor]) -> float:
        """Mean validation loss of ``state`` (static batch norm recomputed first)."""
        return self.trainer.evaluate(state)[1]

    def _run(self, ref: Reference, vector: Vector, stream: int) -> float | None:
        """Validation loss after the budget with ``vector`` on ``stream``; None when the
        run diverged."""
        job = UpdateJob(0, stream, 1.0, (tuple(vector),), (0,) * self.cfg.budget_steps)
        res = self.trainer.train(ref.warm, job)
        if not math.isfinite(res.loss_sum):
            return None
        loss = self.val_loss(dict(res.update.state))
        if not math.isfinite(loss) or loss > ref.diverged_loss:
            return None
        return loss

    def proxy(self, vector: Vector) -> ProxyResult:
        """The candidate's excess validation loss over the reference, per repeat."""
        ref = self.reference
        excess: list[float] = []
        for s, base in zip(ref.streams, ref.losses):
            # d = 0 is trained too (not set to 0): on common streams it repeats the
            # reference's bits, which is what makes its excess exactly 0
            loss = self._run(ref, vector, s)
            if loss is None:
                # one diverged repeat makes the vector infeasible: the rest is not needed
                pad = len(ref.streams) - len(excess)
                return ProxyResult((*excess, *([math.nan] * pad)), True)
            excess.append(loss - base)
        return ProxyResult(tuple(excess), False)
