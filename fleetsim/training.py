"""Real local training of one update, and evaluation of the global model.

A :class:`Trainer` holds the model and the data of one process (the main process, a pool
worker or a Ray actor) and keeps them between rounds. :meth:`Trainer.train` runs the
mini-batches that the engine scheduled for one device, each on the physically smaller
sub-network its dropout vector selects, and returns the device's new state together with
which elements it trained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fleetsim.config import DataConfig, ModelConfig, OptimizerConfig
from fleetsim.data import Dataset, Partition, load_dataset, make_partition, partition_sizes
from fleetsim.data.validation import hold_out_validation
from fleetsim.errors import allowed, input_error
from fleetsim.nn import DroppableNet, Keep, build_model, select_channels
from fleetsim.plugins import load_plugins
from fleetsim.rng import int_seed, stream, torch_generator
from fleetsim.updates import Update

Vector = tuple[float, ...]


@dataclass(frozen=True)
class UpdateJob:
    """Everything needed to train one device's update, decided by the engine.

    ``vectors`` lists the distinct dropout vectors used; ``step_vector[j]`` is the index of
    mini-batch j's vector. Channel choices and batches come from streams keyed by
    (seed, round, device[, step]), so any process trains the same bits.
    """

    device: int
    round: int
    weight: float
    vectors: tuple[Vector, ...]
    step_vector: tuple[int, ...]
    mode: str = "random"
    reselect: str = "step"
    offset: int = 0
    prox_mu: float = 0.0
    #: local_epochs' work: the mini-batches cover exactly this many samples (the last one
    #: shorter); None: every mini-batch is full (see :func:`batch_indices`)
    samples: int | None = None

    @property
    def steps(self) -> int:
        return len(self.step_vector)


@dataclass(frozen=True)
class UpdateResult:
    """A trained update plus its training loss (sum over mini-batches)."""

    update: Update
    loss_sum: float
    batches: int

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.batches if self.batches else math.nan


@dataclass(frozen=True)
class TrainerSettings:
    """What real training needs to know, and nothing else (picklable for workers).

    Attributes
    ----------
    seed : the run's seed (initial model, batches, channel choices)
    data : the dataset and its partition
    n_devices : devices the data is partitioned over
    model : architecture and options
    optimizer : local SGD settings
    batch_size : local mini-batch size
    eval_batch_size : mini-batch size of evaluation
    threads : torch threads in this process
    plugins : plugin files or modules to load in every process that trains
    device : where the model and data live while training: cpu, cuda or auto (cuda if
        available); states handed out (updates, initial state) are always on the CPU
    eval_split : what :meth:`Trainer.evaluate` measures: test or validation
    label_flip : devices that attack by training on flipped labels ``C - 1 - y``
        (:mod:`fleetsim.attacks`)
    """

    seed: int
    data: DataConfig
    n_devices: int
    model: ModelConfig
    optimizer: OptimizerConfig
    batch_size: int
    eval_batch_size: int = 1000
    threads: int = 1
    plugins: tuple[str, ...] = ()
    device: str = "cpu"
    eval_split: str = "test"
    label_flip: frozenset[int] = frozenset()


DEVICES = ("cpu", "cuda", "auto")


def resolve_device(name: str) -> torch.device:
    """The torch device of setting ``training.device`` (a UserError when not usable)."""
    if name not in DEVICES:
        raise input_error(None, "training.device", f"{name!r} is not a device fleetsim "
                          "trains on", allowed(DEVICES))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise input_error(None, "training.device", "cuda was asked for, but this PyTorch "
                          "sees no CUDA GPU (torch.cuda.is_available() is False)",
                          "cpu, or auto (cuda where a GPU is present, else cpu)")
    return torch.device(name)


def to_cpu(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A detached CPU copy of ``state`` (what the engine and aggregation receive)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def build_data(data: DataConfig, n_devices: int, seed: int) -> tuple[Dataset, Partition]:
    """The dataset and its partition over ``n_devices`` devices (deterministic)."""
    ds = load_dataset(data.dataset, data.options, data.test_fraction, data.split_seed)
    # before the partition: no device may train on a validation sample
    ds = hold_out_validation(ds, data.validation_fraction, data.split_seed)
    part = make_partition(data.partition.name, data.partition.options, ds.y_train.numpy(),
                          n_devices, stream(seed, "partition"), ds.groups)
    return ds, part


def build_data_sizes(data: DataConfig, n_devices: int, seed: int
                     ) -> tuple[Dataset, np.ndarray]:
    """The dataset and the samples per device of :func:`build_data`'s partition (what
    timing-only runs need), without dealing the samples where the sizes are known."""
    ds = load_dataset(data.dataset, data.options, data.test_fraction, data.split_seed)
    ds = hold_out_validation(ds, data.validation_fraction, data.split_seed)
    sizes = partition_sizes(data.partition.name, data.partition.options,
                            ds.y_train.numpy(), n_devices, stream(seed, "partition"),
                            ds.groups)
    return ds, sizes


def epoch_samples(epochs: float, n: int) -> int:
    """Samples that ``epochs`` passes over ``n`` samples visit: ceil(epochs * n).

    Rounded to 9 decimals first, so that float error (0.1 * 30 = 3.0000000000000004)
    does not add a sample."""
    return math.ceil(round(epochs * n, 9))


def epoch_steps(epochs: float, n: int, batch: int) -> int:
    """Mini-batches of ``local_epochs`` work: ceil(epochs * n / b), b = min(batch, n), at
    least 1 (FedAvg's u = E n / B, with a shorter last mini-batch)."""
    b = max(1, min(batch, n))
    return max(1, -(-epoch_samples(epochs, n) // b))


def batch_indices(part: Partition, device: int, round: int, steps: int, batch: int,
                  seed: int, samples: int | None = None) -> list[np.ndarray]:
    """Training-set indices of each mini-batch: passes over a fresh permutation per epoch.

    The mini-batches take consecutive runs of ``min(batch, n)`` entries of the stream of
    permutations. With ``samples`` (``local_epochs``: :func:`epoch_samples`), the epoch's
    work is ``ceil(samples / b)`` mini-batches and the last of them holds only what is left
    of ``samples`` (with one epoch, every sample of the device is in exactly one
    mini-batch). A device that trains on past that work (DISTREAL's ``work: fill``) goes on
    with full mini-batches from the next entries, as the engine timed them; one that stops
    before it never reaches the short one.
    """
    own = part.of(device)
    n = len(own)
    b = min(batch, n)
    rng = stream(seed, "batches", round, device)
    starts = [j * b for j in range(steps)]
    stops = [j * b + b for j in range(steps)]
    if samples is not None:
        if samples < 1:
            raise ValueError(f"an epoch's work must cover at least one sample, not {samples}")
        planned = -(-samples // b)
        if planned <= steps and samples % b:
            # the epoch's last mini-batch is short, and later ones start where it ends
            stops[planned - 1] = samples
            for j in range(planned, steps):
                starts[j], stops[j] = samples + (j - planned) * b, samples + (j - planned + 1) * b
    need = stops[-1] if steps else 0
    order = np.concatenate([rng.permutation(n) for _ in range(max(1, -(-need // n)))])
    return [own[order[lo:hi]] for lo, hi in zip(starts, stops)]


#: Evaluation runs the model on slices of at most this many test samples: a fixed size,
#: so that a backend may share the slices out among its workers and still give the bits
#: of one process (a slice is the unit of work; see :meth:`Trainer.eval_logits`).
EVAL_SLICE = 100


def eval_slices(n: int) -> list[tuple[int, int]]:
    """The ``(lo, hi)`` slices, in order, that evaluation runs ``n`` test samples in."""
    return [(lo, min(lo + EVAL_SLICE, n)) for lo in range(0, n, EVAL_SLICE)]


def score(logits: Sequence[Tensor], y: Tensor, batch: int) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of the concatenated ``logits`` against ``y``.

    The loss is summed per evaluation mini-batch of ``batch`` samples, in order, so the
    sum -- and its bits -- do not depend on how the logits were computed."""
    out = torch.cat(list(logits))
    y = y.to(out.device)
    if len(out) != len(y):
        raise ValueError(f"{len(out)} outputs for {len(y)} test samples")
    correct, loss = 0, 0.0
    for lo in range(0, len(y), batch):
        o, t = out[lo:lo + batch], y[lo:lo + batch]
        loss += float(F.cross_entropy(o, t, reduction="sum"))
        correct += int((o.argmax(1) == t).sum())
    return correct / len(y), loss / len(y)


class Trainer:
    """Model, data and optimiser settings of one process.

    Parameters
    ----------
    settings : what training needs
    data : the dataset and partition when already built (a pool worker gets them from the
        main process in shared memory instead of loading them again)
    """

    def __init__(self, settings: TrainerSettings,
                 data: tuple[Dataset, Partition] | None = None) -> None:
        s = settings
        torch.set_num_threads(s.threads)
        load_plugins(s.plugins)  # a worker process needs the user's models and datasets too
        self.settings = s
        self.seed = s.seed
        self.device = resolve_device(s.device)
        self.data, self.partition = data if data is not None else build_data(
            s.data, s.n_devices, s.seed)
        # PyTorch's default initialisation draws from the global generator: seed it from the
        # run's "init" stream so every process builds the same initial model. Nothing else
        # in training uses the global generator.
        torch.manual_seed(int_seed(s.seed, "init"))
        self.model: DroppableNet = build_model(s.model.arch, self.data.input_shape,
                                               self.data.num_classes, s.model.options)
        self.model.to(self.device)
        self._on_device: tuple[Dataset, tuple[Tensor, ...]] | None = None
        self._val_on_device: tuple[Dataset, tuple[Tensor, Tensor]] | None = None
        self.params = dict(self.model.named_parameters())
        self.float_buffers = {k: v for k, v in self.model.named_buffers() if v.is_floating_point()}
        self.mask_names = list(self.params) + list(self.float_buffers)
        self.opt = s.optimizer
        self.batch = s.batch_size

    def device_data(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x_train, y_train, x_test, y_test of ``data`` on the training device: copied once
        per dataset (on the CPU, the tensors themselves). ``data`` may be replaced after
        construction (the DSE does), so the copy is kept with the dataset it came from."""
        cached = self._on_device
        if cached is None or cached[0] is not self.data:
            d = self.data
            cached = self._on_device = (d, tuple(t.to(self.device) for t in (
                d.x_train, d.y_train, d.x_test, d.y_test)))
        x, y, xt, yt = cached[1]
        return x, y, xt, yt

    def eval_data(self) -> tuple[Tensor, Tensor]:
        """x, y of the split :meth:`evaluate` measures (``eval_split``), on the training
        device."""
        if self.settings.eval_split == "test":
            _, _, x, y = self.device_data()
            return x, y
        d = self.data
        if d.x_val is None or d.y_val is None:
            raise input_error(None, "eval.split", "validation was asked for, but the data "
                              "has no validation set", "eval.split: test, or "
                              "data.validation_fraction > 0")
        cached = self._val_on_device
        if cached is None or cached[0] is not d:
            cached = self._val_on_device = (d, (d.x_val.to(self.device),
                                                d.y_val.to(self.device)))
        return cached[1]

    def initial_state(self) -> dict[str, Tensor]:
        return to_cpu(self.model.state_dict())

    def load(self, state: Mapping[str, Tensor]) -> None:
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                v.copy_(state[k])

    def train(self, state: Mapping[str, Tensor], job: UpdateJob) -> UpdateResult:
        """Train ``job`` starting from the global ``state``."""
        self.load(state)
        model = self.model
        model.train()
        seed = self.seed
        batches = batch_indices(self.partition, job.device, job.round, job.steps, self.batch,
                                seed, job.samples)
        lr, mom, wd = self.opt.lr, self.opt.momentum, self.opt.weight_decay
        params = self.params
        bufs = {k: torch.zeros_like(p) for k, p in params.items()} if mom > 0 else None
        anchor = {k: p.detach().clone() for k, p in params.items()} if job.prox_mu > 0 else None
        masks: dict[str, Tensor | None] = {}
        all_full = False
        round_keep: Keep | None = None
        if job.reselect == "round":
            round_keep = self._keep(job, 0, torch_generator(seed, "channels", job.round,
                                                            job.device))
        loss_sum = torch.zeros((), device=self.device)
        x_all, y_all, _, _ = self.device_data()
        on_cpu = self.device.type == "cpu"
        flip = job.device in self.settings.label_flip
        last_class = self.data.num_classes - 1
        for j, idx in enumerate(batches):
            if job.reselect == "round":
                keep = round_keep
                if job.vectors[job.step_vector[j]] != job.vectors[job.step_vector[0]]:
                    keep = self._keep(job, j, torch_generator(seed, "channels", job.round,
                                                              job.device))
            else:
                keep = self._keep(job, j, None)
            # the channel choice is drawn on the CPU; the coverage masks stay there
            dkeep = keep if on_cpu or keep is None else {
                g: i.to(self.device) for g, i in keep.items()}
            ti = torch.from_numpy(idx).to(self.device)
            x, y = x_all[ti], y_all[ti]
            if flip:  # a label-flipping attacker (fleetsim.attacks)
                y = last_class - y
            # the sub-network's parameters as leaves of its own size (see DroppableNet.forward)
            leaves: dict[str, Tensor] = {}
            out = model(x, dkeep, leaves=leaves)
            task_loss = F.cross_entropy(out, y)
            loss = task_loss
            if anchor is not None:
                loss = loss + 0.5 * job.prox_mu * self._prox(anchor, dkeep, leaves)
            for p in params.values():
                p.grad = None
            loss.backward()
            sgd_update(model, params, dkeep, leaves, lr, mom, wd, bufs)
            if not all_full:
                all_full = self._cover(masks, keep)
            # the task loss alone: train_loss and Oort's utility measure the data, not how
            # far FedProx's penalty has let the weights move
            loss_sum = loss_sum + task_loss.detach()
        out_state = to_cpu(model.state_dict())
        update = Update(job.device, job.weight, out_state, masks, job.steps)
        return UpdateResult(update, float(loss_sum), job.steps)

    def _keep(self, job: UpdateJob, step: int, g: torch.Generator | None) -> Keep | None:
        vec = job.vectors[job.step_vector[step]]
        if not any(vec):
            return None
        if g is None:
            g = torch_generator(self.seed, "channels", job.round, job.device, step)
        return select_channels(self.model.groups, vec, job.mode, g, job.offset)

    def _prox(self, anchor: dict[str, Tensor], keep: Keep | None,
              leaves: dict[str, Tensor]) -> Tensor:
        """FedProx's ||w - w_global||^2 over the elements this step trains."""
        total = torch.zeros((), device=self.device)
        for k, p in self.params.items():
            leaf = leaves.get(k)
            if leaf is None:
                total = total + ((p - anchor[k]) ** 2).sum()
            else:
                total = total + ((leaf - self.model.cut(k, anchor[k], keep)) ** 2).sum()  # type: ignore[arg-type]
        return total

    def _cover(self, acc: dict[str, Tensor | None], keep: Keep | None) -> bool:
        """Mark in ``acc`` the elements this step's sub-network trained.

        Per tensor, None means "every element" and a missing name "none yet"; masks have
        the tensor's first one or two dims (channels), then singleton dims to broadcast.
        Returns True once every tensor is fully covered (the caller can stop tracking).
        """
        full = True
        for k in self.mask_names:
            if k in acc and acc[k] is None:
                continue
            spec = self.model.specs[k]
            if keep is None or not spec.cut_by(keep):
                acc[k] = None
                continue
            m = acc.get(k)
            if m is None:
                t = self.params[k] if k in self.params else self.float_buffers[k]
                dims = min(t.dim(), 2)
                m = acc[k] = torch.zeros(*t.shape[:dims], *([1] * (t.dim() - dims)),
                                         dtype=torch.bool)
            self.model.put(k, m, True, keep)
            full = False
        return full

    def evaluate(self, state: Mapping[str, Tensor]) -> tuple[float, float]:
        """Accuracy and mean loss of the global model on the ``eval_split`` (test or
        validation).

        With ``bn_stats: static`` the model's batch-norm statistics are first recomputed
        (:meth:`static_bn`); the global ``state`` itself is not changed.
        """
        _, y = self.eval_data()
        return score(self.eval_logits(state, eval_slices(len(y))), y,
                     self.settings.eval_batch_size)

    @torch.no_grad()
    def eval_logits(self, state: Mapping[str, Tensor],
                    slices: Sequence[tuple[int, int]]) -> list[Tensor]:
        """The model's outputs (on the CPU) on samples ``lo:hi`` of the ``eval_split``,
        per slice.

        The model always sees the same slices (:func:`eval_slices`), wherever and
        however they are shared out, so a split evaluation gives the same bits."""
        self.load(state)
        self.static_bn()
        self.model.eval()
        x, _ = self.eval_data()
        return [self.model(x[lo:hi]).to("cpu") for lo, hi in slices]

    def static_bn(self) -> None:
        """With ``bn_stats: static`` (HeteroFL's sBN), set the loaded model's batch-norm
        statistics from the full network over the whole training set: every training
        sample once, in index order, in mini-batches of ``eval_batch_size`` (the last one
        shorter), averaged cumulatively as HeteroFL's code does. Deterministic: no random
        draw, the same in every process. Does nothing for other models."""
        if self.model.bn_stats != "static":
            return
        x = self.data.x_train
        dev = next(iter(self.params.values())).device
        bs = self.settings.eval_batch_size
        self.model.recompute_bn_stats(x[lo:lo + bs].to(dev) for lo in range(0, len(x), bs))



@torch.no_grad()
def sgd_update(model: DroppableNet, params: Mapping[str, Tensor], keep: Keep | None,
               leaves: Mapping[str, Tensor], lr: float, momentum: float = 0.0,
               weight_decay: float = 0.0, bufs: Mapping[str, Tensor] | None = None) -> None:
    """SGD on the elements of one step's sub-network only.

    A parameter the sub-network cuts has its gradient on its leaf (of the sub-network's
    size, from ``model(x, keep, leaves=leaves)``): its kept elements, their momentum and
    weight decay are cut out, updated and written back, so untrained elements do not move
    and nothing full-size is touched. Other parameters take a plain SGD step.
    ``bufs`` (momentum buffers, full-size) is needed when ``momentum`` > 0.
    """
    for k, p in params.items():
        leaf = leaves.get(k)
        if leaf is None:
            g = p.grad
            if g is None:
                continue
            if weight_decay > 0:
                g = g.add(p, alpha=weight_decay)
            if bufs is not None:
                g = bufs[k].mul_(momentum).add_(g)
            p.add_(g, alpha=-lr)
            continue
        g = leaf.grad
        if g is None:
            continue
        w = leaf.detach()
        if weight_decay > 0:
            g = g + weight_decay * w
        if bufs is not None:
            g = model.cut(k, bufs[k], keep) * momentum + g  # type: ignore[arg-type]
            model.put(k, bufs[k], g, keep)  # type: ignore[arg-type]
        # the leaf is this step's own copy: update it in place, then write it back
        model.put(k, p, w.add_(g, alpha=-lr), keep)  # type: ignore[arg-type]
