"""Networks with droppable channel groups, trained as physically smaller sub-networks.

A *group* is a set of channels (conv filters or dense units) dropped together: channels
tied by a residual connection form one group. A dropout vector ``d`` gives, per group, the
share of channels left out of a mini-batch; :mod:`fleetsim.nn.slicing` turns it into the
kept channel indices (a :data:`Keep`).

The forward pass is functional over *sliced* weights: every parameter is cut (an
``index_select`` on the dimensions its :class:`ParamSpec` ties to groups) and the layers run
at their reduced size, so compute, activation memory and wall time really shrink.
The cut is differentiable: the gradient flows back onto exactly the kept elements of the
full parameters (zeros elsewhere). For training, ``forward(..., leaves={})`` goes one step
further: each cut parameter becomes a leaf tensor of the sub-network's size, so the
backward pass writes nothing full-size, and the optimiser updates just the kept elements
(:meth:`DroppableNet.cut` and :meth:`DroppableNet.put` move values between the full
tensors and the sub-network's).

An architecture subclasses :class:`DroppableNet`, declares its groups and param specs,
and writes :meth:`DroppableNet.functional` with the helpers ``conv``, ``linear``, ``bn``
and ``drop``. ``drop`` marks where a group's channels leave the computation: it slices
nothing (the weights already are), but applies the optional 1/(1-d) rescaling, or in
*masked* mode (the reference used by the tests) zeroes dropped channels of a full tensor.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

# Kept channel indices per group name (sorted LongTensors); None means the full network.
Keep = dict[str, Tensor]


class ShapeCounter:
    """Collects, during one forward pass, what the executed layers cost.

    ``macs`` counts multiply-accumulates of convolutions and dense layers per sample (what
    ``torch.utils.flop_counter`` counts, halved), ``params`` the parameters used,
    ``activations`` the elements of layer outputs kept for the backward pass, per sample.
    """

    def __init__(self) -> None:
        self.macs = 0
        self.params = 0
        self.activations = 0

    def add(self, y: Tensor, macs_per_output_sample: int) -> None:
        self.macs += macs_per_output_sample
        self.activations += y[0].numel()


@dataclass(frozen=True)
class Group:
    """A droppable group: ``channels`` channels dropped together."""

    name: str
    channels: int


@dataclass(frozen=True)
class ParamSpec:
    """Which groups index the dimensions of one parameter or buffer.

    ``out`` indexes dim 0, ``inp`` dim 1. ``inp_repeat`` > 1 when dim 1 is a flattened
    C x H x W feature map: kept channel c then keeps columns ``c*repeat .. c*repeat+repeat-1``.
    """

    out: str | None = None
    inp: str | None = None
    inp_repeat: int = 1
    #: instead of ``inp``: dim 1 reads a concatenation, ``(group or None, channels)`` per
    #: part in order (None: a part nothing drops); each channel owns ``inp_repeat`` columns
    inp_parts: tuple[tuple[str | None, int], ...] = ()

    def cut_by(self, keep: Keep) -> bool:
        """Whether sub-network ``keep`` cuts this tensor."""
        return (self.out in keep or self.inp in keep
                or any(g in keep for g, _ in self.inp_parts))

    def in_index(self, keep: Keep) -> Tensor | None:
        """Kept columns' channels of dim 1 (None: all), for sub-network ``keep``."""
        if not self.inp_parts:
            return keep.get(self.inp) if self.inp else None
        cut = [keep[g] for g, _ in self.inp_parts if g in keep]
        if not cut:
            return None
        pieces, offset = [], 0
        for g, c in self.inp_parts:
            idx = keep[g] if g in keep else torch.arange(c, device=cut[0].device)
            pieces.append(idx + offset)
            offset += c
        return torch.cat(pieces)


def _cut(t: Tensor, out_idx: Tensor | None, in_idx: Tensor | None, repeat: int) -> Tensor:
    """``t`` cut to rows ``out_idx`` (dim 0) and input channels ``in_idx`` (dim 1); a copy.

    Dim 1 is cut through a ``(O, C, rest)`` view, ``rest`` being all that one input channel
    owns (``inp_repeat`` columns of a flattened feature map, a filter's kh x kw), so whole
    contiguous blocks are copied rather than single elements. Cut on both dims, the kept
    (row, channel) blocks are gathered in one pass through an ``(O * C, rest)`` view: two
    chained ``index_select`` would copy an intermediate as large again (3.5x slower for a
    FEMNIST CNN dense layer at keep 0.5).
    """
    if in_idx is None:
        return t.index_select(0, out_idx)  # type: ignore[arg-type]
    o, c = t.shape[0], t.shape[1] // repeat
    if out_idx is None:
        v = t.reshape(o, c, -1).index_select(1, in_idx)
    else:
        v = t.reshape(o * c, -1).index_select(0, _blocks(out_idx, in_idx, c))
    return v.reshape(len(out_idx) if out_idx is not None else o, len(in_idx) * repeat,
                     *t.shape[2:])


_BLOCKS: list[tuple[Tensor, Tensor, int, int, int, Tensor]] = []
_BLOCKS_KEPT = 48  # > the (rows, channels) pairs of one step of any built-in model


def _blocks(out_idx: Tensor, in_idx: Tensor, channels: int) -> Tensor:
    """Row-major indices of the kept (row, channel) blocks in an ``(O * C, rest)`` view.

    A step asks for the same indices several times (the cut, the write-back, the coverage
    mask), so the last few are kept, matched by tensor identity and version: the cache
    holds the index tensors themselves, so an identity cannot be reused by another tensor
    while cached, and an index tensor changed in place has a new version.
    """
    vo, vi = out_idx._version, in_idx._version
    for o, i, c, ov, iv, blocks in _BLOCKS:
        if o is out_idx and i is in_idx and c == channels and ov == vo and iv == vi:
            return blocks
    blocks = (out_idx[:, None] * channels + in_idx).flatten()
    _BLOCKS.insert(0, (out_idx, in_idx, channels, vo, vi, blocks))
    del _BLOCKS[_BLOCKS_KEPT:]
    return blocks


def _put(t: Tensor, out_idx: Tensor | None, in_idx: Tensor | None, repeat: int,
         sub: Tensor) -> Tensor:
    """Write ``sub`` (shaped like ``_cut(t, ...)``) into the kept elements of ``t``, in place.

    Kept indices are distinct (``select_channels`` gives sorted unique ones), so one index
    write puts every element exactly once.
    """
    if in_idx is None:
        return t.index_copy_(0, out_idx, sub)  # type: ignore[arg-type]
    if not t.is_contiguous():  # e.g. channels_last: the flat views below need plain layout
        return t.copy_(_put(t.contiguous(), out_idx, in_idx, repeat, sub))
    o, c = t.shape[0], t.shape[1] // repeat
    if out_idx is None:
        t.view(o, c, -1).index_copy_(1, in_idx, sub.reshape(o, len(in_idx), -1))
    else:
        t.view(o * c, -1).index_copy_(0, _blocks(out_idx, in_idx, c),
                                      sub.reshape(len(out_idx) * len(in_idx), -1))
    return t


class _SliceParam(torch.autograd.Function):
    """:func:`_cut` as a differentiable operation.

    The backward writes the gradient into one zero tensor of the full shape with a single
    index write (:func:`_put`).

    Why not two chained ``index_select``: their backward builds two zero tensors (one of
    them full-size) and scatters twice, element by element along dim 1; for the dense
    layer after a flattened feature map that cost more than the layer's own matrix
    products in a sub-network's step. Kept indices are distinct (``select_channels`` gives
    sorted unique ones), so writing the gradient equals accumulating it.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, t: Tensor, out_idx: Tensor | None, in_idx: Tensor | None,
                repeat: int) -> Tensor:
        ctx.full_shape, ctx.repeat = t.shape, repeat  # type: ignore[attr-defined]
        ctx.save_for_backward(out_idx, in_idx)
        return _cut(t, out_idx, in_idx, repeat)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, g: Tensor) -> tuple[Tensor, None, None, None]:
        out_idx, in_idx = ctx.saved_tensors  # type: ignore[attr-defined]
        full = g.new_zeros(ctx.full_shape)  # type: ignore[attr-defined]
        return _put(full, out_idx, in_idx, ctx.repeat, g), None, None, None  # type: ignore[attr-defined]


class DroppableNet(nn.Module):
    """Base class of every model fleetsim trains.

    Subclasses set ``groups``, ``specs`` (for every parameter and floating buffer, by its
    ``named_parameters``/``named_buffers`` name), ``input_shape`` and ``num_classes``.
    """

    groups: tuple[Group, ...]
    specs: dict[str, ParamSpec]
    input_shape: tuple[int, ...]
    num_classes: int
    #: Whether ``drop`` rescales kept activations by C/k (inverted dropout). On by default,
    #: so the next layer sees activations of the same expected size in training (sub-network)
    #: and evaluation (full network).
    rescale: bool = True
    #: Batch-norm statistics (see :meth:`bn`): ``running``, ``batch`` or ``static``.
    bn_stats: str = "running"
    arch: ClassVar[str] = ""
    _keep: Keep | None = None
    _masked: bool = False
    _counter: ShapeCounter | None = None
    _leaves: dict[str, Tensor] | None = None
    _bn_recompute: bool = False

    # -- set-up ---------------------------------------------------------------------

    def finish_init(self) -> None:
        """Check the declarations; call at the end of a subclass ``__init__``."""
        names = {g.name for g in self.groups}
        self.group_index = {g.name: i for i, g in enumerate(self.groups)}
        self.group_channels = {g.name: g.channels for g in self.groups}
        tensors = dict(self.named_parameters()) | {
            k: v for k, v in self.named_buffers() if v.is_floating_point()}
        missing = set(tensors) - set(self.specs)
        if missing:
            raise TypeError(f"{type(self).__name__}: no ParamSpec for {sorted(missing)}")
        for name, spec in self.specs.items():
            t = tensors[name]
            for dim, g in ((0, spec.out), (1, spec.inp)):
                if g is None:
                    continue
                if g not in names:
                    raise TypeError(f"{name}: unknown group {g!r}")
                size = self.group_channels[g] * (spec.inp_repeat if dim == 1 else 1)
                if t.shape[dim] != size:
                    raise TypeError(f"{name}: dim {dim} has {t.shape[dim]}, group {g} needs {size}")
            if spec.inp_parts:
                bad = [g for g, c in spec.inp_parts if g is not None and (
                    g not in names or self.group_channels[g] != c)]
                size = sum(c for _, c in spec.inp_parts) * spec.inp_repeat
                if spec.inp is not None or bad or t.shape[1] != size:
                    raise TypeError(f"{name}: inp_parts {spec.inp_parts} (x{spec.inp_repeat}) "
                                    f"do not fit dim 1 of {t.shape[1]} (or inp is also set)")

    # -- forward ----------------------------------------------------------------------

    def forward(self, x: Tensor, keep: Keep | None = None, *, masked: bool = False,
                leaves: dict[str, Tensor] | None = None) -> Tensor:
        """Run the network; with ``keep``, the sub-network of the kept channels.

        ``masked=True`` runs the full-size network and zeroes dropped channels instead (the
        reference implementation the tests compare the sliced sub-network against).

        ``leaves``: a dict to fill, for training. Every parameter that ``keep`` cuts is then
        a fresh leaf tensor holding a copy of its kept elements, stored here by name: after
        ``backward()`` its ``.grad`` is the sub-network's gradient, of the sub-network's size,
        and the full parameter gets none. Write results back with :meth:`put`. Parameters
        that nothing cuts are used (and get gradients) as usual; so are all of them with
        ``masked=True`` or no ``keep`` (``leaves`` then stays empty).
        """
        self._keep = keep if keep else None
        self._masked = masked and self._keep is not None
        self._leaves = leaves if self._keep is not None and not self._masked else None
        try:
            return self.functional(x)
        finally:
            self._keep = None
            self._masked = False
            self._leaves = None

    def functional(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    # -- helpers for functional() -------------------------------------------------------

    def _idx(self, group: str | None) -> Tensor | None:
        if group is None or self._keep is None or self._masked:
            return None
        return self._keep.get(group)

    def p(self, name: str) -> Tensor:
        """Parameter ``name`` sliced to the kept channels of its groups."""
        t = self._slice(name, self.get_parameter(name))
        if self._counter is not None:
            self._counter.params += t.numel()
        return t

    def _slice(self, name: str, t: Tensor) -> Tensor:
        spec = self.specs[name]
        out_idx = self._idx(spec.out)
        in_idx = (None if self._keep is None or self._masked
                  else spec.in_index(self._keep))
        if out_idx is None and in_idx is None:
            return t
        if self._leaves is not None:
            leaf = self._leaves.get(name)  # a tied parameter used twice: one leaf, one grad
            if leaf is None:
                with torch.no_grad():
                    leaf = _cut(t, out_idx, in_idx, spec.inp_repeat)
                self._leaves[name] = leaf.requires_grad_()
            return leaf
        return _SliceParam.apply(t, out_idx, in_idx, spec.inp_repeat)  # type: ignore[no-any-return]

    def _indices(self, name: str, keep: Keep) -> tuple[Tensor | None, Tensor | None]:
        spec = self.specs[name]
        return keep.get(spec.out) if spec.out else None, spec.in_index(keep)

    def cut(self, name: str, t: Tensor, keep: Keep) -> Tensor:
        """The elements of ``t`` (shaped like tensor ``name``) that sub-network ``keep``
        contains, as a new tensor of the sub-network's shape (``t`` itself if all)."""
        out_idx, in_idx = self._indices(name, keep)
        if out_idx is None and in_idx is None:
            return t
        return _cut(t, out_idx, in_idx, self.specs[name].inp_repeat)

    def put(self, name: str, t: Tensor, sub: Tensor | float, keep: Keep) -> None:
        """Write ``sub`` (what :meth:`cut` gives, or one value for every kept element) into
        the kept elements of ``t``, in place."""
        out_idx, in_idx = self._indices(name, keep)
        if not isinstance(sub, Tensor):  # one value: expanded, nothing is allocated
            shape = list(t.shape)
            if out_idx is not None:
                shape[0] = len(out_idx)
            if in_idx is not None:
                shape[1] = len(in_idx) * self.specs[name].inp_repeat
            sub = torch.full((), sub, dtype=t.dtype).expand(shape)
        if out_idx is None and in_idx is None:
            t.copy_(sub)
        else:
            _put(t, out_idx, in_idx, self.specs[name].inp_repeat, sub)

    def conv(self, x: Tensor, name: str, **kw: object) -> Tensor:
        w = self.p(f"{name}.weight")
        b = self.p(f"{name}.bias") if f"{name}.bias" in self.specs else None
        y = F.conv2d(x, w, b, **kw)  # type: ignore[arg-type]
        if self._counter is not None:
            # each output element costs one MAC per weight of its filter (in/groups x kh x kw)
            self._counter.add(y, y[0].numel() * w[0].numel())
        return y

    def linear(self, x: Tensor, name: str) -> Tensor:
        w = self.p(f"{name}.weight")
        b = self.p(f"{name}.bias") if f"{name}.bias" in self.specs else None
        y = F.linear(x, w, b)
        if self._counter is not None:
            self._counter.add(y, w.numel())
        return y

    def bn(self, x: Tensor, name: str) -> Tensor:
        """Batch norm on the kept channels, with the statistics ``bn_stats`` asks for.

        ``running``: batch statistics in training, which update the running statistics
        (of the kept channels only); the running statistics at test. ``batch``: batch
        statistics in training and at test (the module tracks none). ``static``: batch
        statistics in training, nothing tracked; the running statistics at test, which
        :meth:`recompute_bn_stats` sets beforehand (HeteroFL's sBN).
        """
        mod: nn.BatchNorm2d = self.get_submodule(name)  # type: ignore[assignment]
        idx = self._idx(self.specs[f"{name}.weight"].out)
        w, b = self.p(f"{name}.weight"), self.p(f"{name}.bias")
        if self._counter is not None:
            self._counter.add(x, 0)
        if mod.running_mean is None or (self.training and self.bn_stats == "static"
                                        and not self._bn_recompute):
            # batch statistics only, nothing tracked (momentum is unused without buffers)
            return F.batch_norm(x, None, None, w, b, True, 0.0, mod.eps)
        momentum = mod.momentum
        if self.training and mod.num_batches_tracked is not None:
            # the bookkeeping nn.BatchNorm2d.forward does, so both paths leave the same state
            mod.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative moving average
                momentum = 1.0 / float(mod.num_batches_tracked)
        momentum = 0.1 if momentum is None else momentum
        if idx is None:
            return F.batch_norm(x, mod.running_mean, mod.running_var, w, b, self.training,
                                momentum, mod.eps)
        # a sub-network needs the statistics of its kept channels, in training and in
        # evaluation (measure() runs an eval-mode forward of the sub-network)
        rm = mod.running_mean.index_select(0, idx)
        rv = mod.running_var.index_select(0, idx)
        out = F.batch_norm(x, rm, rv, w, b, self.training, momentum, mod.eps)
        if self.training:
            with torch.no_grad():  # F.batch_norm updated the sliced copies: write them back
                mod.running_mean.index_copy_(0, idx, rm)
                mod.running_var.index_copy_(0, idx, rv)
        return out

    @torch.no_grad()
    def recompute_bn_stats(self, batches: Iterable[Tensor]) -> None:
        """Set every batch norm's running statistics from the full network's forward
        passes over ``batches`` (static batch norm, HeteroFL's sBN).

        As HeteroFL's code (``momentum=None``): the statistics are reset, then each
        batch's mean and unbiased variance enter a cumulative average, every batch
        weighing the same. Leaves the model in evaluation mode.
        """
        bns = [m for m in self.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        self._bn_recompute = True
        try:
            self.train()
            for x in batches:
                self(x)
        finally:
            self._bn_recompute = False
            for m, mom in zip(bns, saved):
                m.momentum = mom
            self.eval()

    def drop(self, h: Tensor, group: str) -> Tensor:
        """Where group ``group``'s channels (dim 1) leave: rescale, or zero in masked mode."""
        if self._keep is None or group not in self._keep:
            return h
        idx = self._keep[group]
        c = self.group_channels[group]
        k = len(idx)
        if self._masked:
            m = torch.zeros(c, dtype=h.dtype, device=h.device)
            m[idx] = c / k if self.rescale else 1.0
            return h * m.view(1, c, *([1] * (h.dim() - 2)))
        if self.rescale and k < c:
            return h * (c / k)
        return h

    # -- shapes -------------------------------------------------------------------------

    def kept_counts(self, keep: Keep | None) -> dict[str, int]:
        if keep is None:
            return dict(self.group_channels)
        return {g.name: len(keep[g.name]) if g.name in keep else g.channels
                for g in self.groups}

    @torch.no_grad()
    def measure(self, counts: dict[str, int] | None = None) -> ShapeCounter:
        """MACs, parameters and activations per sample of the sub-network with ``counts``
        kept channels per group (all channels if None), from a shape-only forward pass.

        The pass runs on PyTorch's ``meta`` device: shapes propagate, nothing is computed,
        and the costs come from the very code path that trains the sub-network.
        """
        meta = _meta_twin(self)
        keep = None
        if counts is not None:
            keep = {g: torch.arange(k, device="meta") for g, k in counts.items()
                    if k < meta.group_channels[g]}
        counter = ShapeCounter()
        meta._counter = counter
        try:
            meta.train(False)
            meta(torch.zeros((1, *self.input_shape), device="meta"), keep or None)
        finally:
            meta._counter = None
        return counter


_META_CACHE: dict[int, tuple[weakref.ref[DroppableNet], DroppableNet]] = {}


def _meta_twin(model: DroppableNet) -> DroppableNet:
    """A copy of ``model`` on the meta device (no storage), cached per model object.

    The cache holds a weak reference to the model it was made from: a bare ``id()`` key is
    reused by a new model once the old one is freed, which would hand out a twin of the
    wrong shape (same arch, other options).
    """
    import copy

    entry = _META_CACHE.get(id(model))
    if entry is not None and entry[0]() is model:
        return entry[1]
    twin = copy.deepcopy(model).to("meta")
    _META_CACHE.clear()  # one model per process at a time; keep memory flat
    _META_CACHE[id(model)] = (weakref.ref(model), twin)
    return twin
