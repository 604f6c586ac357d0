"""Several full-model updates trained together: one vectorised step per mini-batch index.

FedAvg-like rounds train the same network on K devices, each on its own data. Trained one
after another (:meth:`fleetsim.training.Trainer.train`), each step is a small kernel launch
per layer, which leaves a GPU mostly idle. :func:`train_batched` stacks the K devices'
parameters along a new leading dimension and runs step j of all of them at once: the
mini-batches are concatenated along the sample dimension, every dense layer becomes one
batched matrix product (``torch.baddbmm``) and every convolution one grouped convolution
(``groups=K``), so each device's samples meet only that device's weights. The loss is the
sum of the per-device mean losses, whose gradient with respect to device i's parameters is
exactly device i's own gradient. Then each device takes its own SGD step.

What it supports, and checks (:func:`check_batchable`):

- jobs whose every mini-batch trains the full model (all dropout vectors zero);
- plain SGD with momentum and weight decay (the optimiser of ``training.optimizer``), and
  FedProx's proximal term (``prox_mu``);
- models built from :meth:`DroppableNet.conv`, :meth:`DroppableNet.linear` and
  :meth:`DroppableNet.bn` (mlp, cnn4 with or without ``norm: bn``, femnist_cnn,
  mcmahan_cnn, resnet8, resnet20). Batch norm keeps per-device statistics: the K devices'
  channels are laid side by side as K x C channels of one ``F.batch_norm`` call, so device
  i's samples are normalised by device i's own batch statistics, with device i's own
  weight and bias, and (``bn_stats: running``) update device i's own running mean and
  variance (K x C running buffers, the momentum and ``num_batches_tracked`` bookkeeping of
  :meth:`DroppableNet.bn`). ``bn_stats: batch`` and ``static`` use batch statistics and
  track nothing in training, as there. A batch-norm module called other than through
  :meth:`DroppableNet.bn` would mix the devices' statistics, and is refused.

Each device keeps its own batches (:func:`fleetsim.training.batch_indices` with its own
round and device keys, and its ``samples`` under ``local_epochs``). Jobs of different step
counts or mini-batch sizes (a device holding fewer samples than the batch size, a shorter
last mini-batch under ``local_epochs``) are trained in separate groups. The results are the
:class:`UpdateResult` objects :meth:`Trainer.train` gives (state on the CPU, masks None:
every element trained, loss summed over the mini-batches), in the order of the jobs; they
agree with the sequential path to float rounding (about 1e-6 after a few steps), not bit
for bit, which is why the batched path is never the default.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fleetsim.errors import UserError
from fleetsim.nn import DroppableNet
from fleetsim.training import Trainer, UpdateJob, UpdateResult, batch_indices
from fleetsim.updates import Update


def full_model_job(job: UpdateJob) -> bool:
    """Whether every mini-batch of ``job`` trains the full model (FedAvg-like)."""
    return not any(any(v) for v in job.vectors)


def check_batchable(trainer: Trainer, jobs: Sequence[UpdateJob]) -> None:
    """A UserError saying why ``jobs`` cannot be trained by :func:`train_batched`."""
    model = trainer.model
    why = getattr(model, "not_batchable", None)
    if why:  # e.g. a user network run as written, or with depthwise convolutions
        raise UserError(f"training.batched: {why}, which batched training does not "
                        "support. Allowed: training.batched: false.")
    other = sorted(set(trainer.float_buffers) - set(_bn_buffers(model)))
    if other:
        raise UserError(
            f"training.batched: the model has floating buffers other than batch-norm "
            f"statistics ({', '.join(other)}), which batched training does not support. "
            "Allowed: models whose state is their parameters and batch-norm statistics, "
            "or training.batched: false.")
    for job in jobs:
        if not full_model_job(job):
            raise UserError(
                f"training.batched: the update of device {job.device} trains sub-networks "
                f"(dropout vectors {list(job.vectors)}), which batched training does not "
                "support. Allowed: jobs whose dropout vectors are all zero (FedAvg-like "
                "policies), or training.batched: false.")


def _batch_norms(model: DroppableNet) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {k: m for k, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def _bn_buffers(model: DroppableNet) -> list[str]:
    """Names of the batch-norm running statistics of ``model``."""
    return [f"{k}.{b}" for k, m in _batch_norms(model).items() if m.running_mean is not None
            for b in ("running_mean", "running_var")]


def batched_in_order(trainer: Trainer, state: Mapping[str, Tensor],
                     jobs: Sequence[UpdateJob]) -> list[UpdateResult]:
    """``jobs``' results in their order: the full-model ones trained together (grouped by
    step count and batch size), the others (sub-networks) one by one by ``Trainer.train``.

    What ``training.batched: true`` runs in the in-process backend.
    """
    full = [i for i, job in enumerate(jobs) if full_model_job(job)]
    done = dict(zip(full, train_batched(trainer, state, [jobs[i] for i in full]),
                    strict=True)) if len(full) > 1 else {}
    return [done[i] if i in done else trainer.train(state, job) for i, job in enumerate(jobs)]


def train_batched(trainer: Trainer, state: Mapping[str, Tensor],
                  jobs: Sequence[UpdateJob]) -> list[UpdateResult]:
    """Train ``jobs`` from the global ``state`` together; results in the order of ``jobs``."""
    check_batchable(trainer, jobs)
    results: dict[int, UpdateResult] = {}
    batches = [batch_indices(trainer.partition, job.device, job.round, job.steps,
                             trainer.batch, trainer.seed, job.samples) for job in jobs]
    # stacked jobs need mini-batches of the same sizes, step by step
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, b in enumerate(batches):
        groups.setdefault(tuple(len(idx) for idx in b), []).append(i)
    for members in groups.values():
        for i, res in zip(members, _train_group(trainer, state, [jobs[i] for i in members],
                                                [batches[i] for i in members]), strict=True):
            results[i] = res
    return [results[i] for i in range(len(jobs))]


def _train_group(trainer: Trainer, state: Mapping[str, Tensor], jobs: Sequence[UpdateJob],
                 batches: Sequence[Sequence[np.ndarray]]) -> list[UpdateResult]:
    """Jobs whose mini-batches have the same sizes, step by step, stacked."""
    dev = trainer.device
    model = trainer.model
    n = len(jobs)
    steps = jobs[0].steps
    names = list(trainer.params)
    with torch.no_grad():
        stacked = {k: state[k].to(dev).unsqueeze(0).repeat(n, *([1] * state[k].dim()))
                   for k in names}
    for p in stacked.values():
        p.requires_grad_()
    lr, mom, wd = trainer.opt.lr, trainer.opt.momentum, trainer.opt.weight_decay
    bufs = {k: torch.zeros_like(p) for k, p in stacked.items()} if mom > 0 else None
    mus = [job.prox_mu for job in jobs]
    anchor = ({k: state[k].to(dev) for k in names} if any(mu > 0 for mu in mus) else None)
    mu = torch.tensor(mus, dtype=torch.float32, device=dev)
    x_all, y_all, _, _ = trainer.device_data()
    loss_sum = torch.zeros(n, device=dev)
    model.train()
    norms = _BatchNorms(model, state, n, dev)
    with _stacked_forward(model, stacked, n, norms):
        for j in range(steps):
            ti = torch.from_numpy(np.stack([b[j] for b in batches])).to(dev)  # (n, b)
            x = x_all[ti.flatten()]  # device i's samples are rows i*b .. i*b+b-1
            y = y_all[ti.flatten()]
            out = model(x)
            task = F.cross_entropy(out, y, reduction="none").view(n, -1).mean(1)  # (n,)
            loss = task.sum()
            if anchor is not None:
                prox = sum(((stacked[k] - anchor[k]) ** 2).flatten(1).sum(1) for k in names)
                loss = loss + (0.5 * mu * prox).sum()  # type: ignore[operator]
            for p in stacked.values():
                p.grad = None
            loss.backward()
            with torch.no_grad():
                for k, p in stacked.items():
                    g = p.grad
                    if g is None:
                        continue
                    if wd > 0:
                        g = g.add(p, alpha=wd)
                    if bufs is not None:
                        g = bufs[k].mul_(mom).add_(g)
                    p.add_(g, alpha=-lr)
            loss_sum = loss_sum + task.detach()
    cpu = {k: v.detach().to("cpu") for k, v in stacked.items()}
    losses = loss_sum.to("cpu")
    out_results = []
    cpu.update(norms.running_cpu())
    for i, job in enumerate(jobs):
        new = {k: cpu[k][i].clone() if k in cpu else state[k].detach().to("cpu", copy=True)
               for k in state}
        for k, v in norms.counts.items():  # num_batches_tracked: one per forward pass
            new[k] = new[k] + v
        # None: every element of the tensor trained (what Trainer.train's coverage gives)
        masks: dict[str, Tensor | None] = {k: None for k in trainer.mask_names}
        update = Update(job.device, job.weight, new, masks, job.steps)
        out_results.append(UpdateResult(update, float(losses[i]), job.steps))
    return out_results


class _BatchNorms:
    """The per-device batch-norm state of ``n`` stacked devices, and their forward pass.

    ``running``: per tracked batch norm, running mean and variance of shape (n, C), from
    the global ``state``; ``counts``: forward passes per ``num_batches_tracked`` buffer
    (every device makes the same number, from the same start value)."""

    def __init__(self, model: DroppableNet, state: Mapping[str, Tensor], n: int,
                 dev: torch.device) -> None:
        self.model, self.n = model, n
        self.mods = _batch_norms(model)
        # static batch norm (HeteroFL's sBN) trains on batch statistics and tracks nothing;
        # "batch" has no running buffers at all
        tracks = model.bn_stats != "static"
        self.running: dict[str, tuple[Tensor, Tensor]] = {}
        self.start: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        for k, m in self.mods.items():
            if m.running_mean is None or not tracks:
                continue
            self.running[k] = tuple(  # type: ignore[assignment]
                state[f"{k}.{b}"].to(dev).unsqueeze(0).repeat(n, 1).contiguous()
                for b in ("running_mean", "running_var"))
            if m.num_batches_tracked is not None:
                self.counts[f"{k}.num_batches_tracked"] = 0
                self.start[k] = state[f"{k}.num_batches_tracked"]

    def forward(self, x: Tensor, name: str, w: Tensor, b: Tensor) -> Tensor:
        """:meth:`DroppableNet.bn` (training, full network) for the ``n`` devices at once:
        ``x`` holds their mini-batches one after another, ``w`` and ``b`` are (n, C)."""
        mod, n = self.mods[name], self.n
        nb, c = x.shape[:2]
        bsz, rest = nb // n, x.shape[2:]
        # (n*b, C, ...) -> (b, n*C, ...): device i's channels are channels i*C .. i*C+C-1
        xg = x.reshape(n, bsz, c, *rest).transpose(0, 1).reshape(bsz, n * c, *rest)
        stats = self.running.get(name)
        if stats is None:
            y = F.batch_norm(xg, None, None, w.reshape(-1), b.reshape(-1), True, 0.0, mod.eps)
        else:
            momentum = mod.momentum
            key = f"{name}.num_batches_tracked"
            if key in self.counts:  # the bookkeeping of DroppableNet.bn, per device
                self.counts[key] += 1
                if momentum is None:  # cumulative moving average
                    momentum = 1.0 / float(self.start[name] + self.counts[key])
            momentum = 0.1 if momentum is None else momentum
            # the (n, C) buffers are contiguous: their flat views are updated in place
            y = F.batch_norm(xg, stats[0].view(-1), stats[1].view(-1), w.reshape(-1),
                             b.reshape(-1), True, momentum, mod.eps)
        return y.reshape(bsz, n, c, *rest).transpose(0, 1).reshape(nb, c, *rest)

    def running_cpu(self) -> dict[str, Tensor]:
        """Every device's running statistics, by buffer name, as (n, C) on the CPU."""
        return {f"{k}.{b}": t.detach().to("cpu")
                for k, pair in self.running.items()
                for b, t in zip(("running_mean", "running_var"), pair, strict=True)}


@contextmanager
def _stacked_forward(model: DroppableNet, stacked: Mapping[str, Tensor], n: int,
                     norms: _BatchNorms | None = None) -> Iterator[None]:
    """Make ``model``'s dense layers, convolutions and batch norms use the ``n`` stacked
    parameter sets (and the per-device batch-norm statistics of ``norms``).

    The input is the ``n`` mini-batches one after another along the sample dimension;
    element-wise layers (activations, pooling, ``drop`` without a sub-network, flatten)
    need no change. Any other use of a parameter (:meth:`DroppableNet.p` outside these
    two layers) is refused rather than silently given stacked weights.
    """

    def linear(x: Tensor, name: str) -> Tensor:
        w = stacked[f"{name}.weight"]  # (n, out, in)
        xb = x.reshape(n, -1, x.shape[-1])
        bias = stacked.get(f"{name}.bias") if f"{name}.bias" in model.specs else None
        if bias is None:
            y = torch.bmm(xb, w.transpose(1, 2))
        else:
            y = torch.baddbmm(bias.unsqueeze(1), xb, w.transpose(1, 2))
        return y.reshape(-1, y.shape[-1])

    def conv(x: Tensor, name: str, **kw: object) -> Tensor:
        w = stacked[f"{name}.weight"]  # (n, out, in, kh, kw)
        bias = stacked.get(f"{name}.bias") if f"{name}.bias" in model.specs else None
        nb, c, h, wd = x.shape
        b = nb // n
        # (n*b, C, H, W) -> (b, n*C, H, W): device i's channels are group i
        xg = x.reshape(n, b, c, h, wd).transpose(0, 1).reshape(b, n * c, h, wd)
        y = F.conv2d(xg, w.reshape(-1, *w.shape[2:]),
                     None if bias is None else bias.reshape(-1), groups=n, **kw)  # type: ignore[arg-type]
        o = w.shape[1]
        return y.reshape(b, n, o, *y.shape[2:]).transpose(0, 1).reshape(n * b, o,
                                                                         *y.shape[2:])

    def refuse(name: str) -> Tensor:
        raise UserError(
            f"training.batched: the model {model.arch or type(model).__name__} uses "
            f"parameter {name} outside DroppableNet.conv and DroppableNet.linear, which "
            "batched training does not support. Allowed: training.batched: false.")

    def bn(x: Tensor, name: str) -> Tensor:
        assert norms is not None
        return norms.forward(x, name, stacked[f"{name}.weight"], stacked[f"{name}.bias"])

    def direct(mod: nn.Module, args: object) -> None:
        raise UserError(
            f"training.batched: the model {model.arch or type(model).__name__} calls a "
            "batch-norm module directly (not through DroppableNet.bn), which would mix "
            "the devices' batch statistics; batched training does not support that. "
            "Allowed: training.batched: false.")

    patched = {"linear": linear, "conv": conv, "bn": bn, "p": refuse}
    hooks = [m.register_forward_pre_hook(direct) for m in _batch_norms(model).values()]
    for k, f in patched.items():
        object.__setattr__(model, k, f)  # instance attributes shadow the methods
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for k in patched:
            object.__delattr__(model, k)
