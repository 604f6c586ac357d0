"""Droppable groups of a plain PyTorch network, found by tracing it with ``torch.fx``.

The tracer follows every tensor's *channels* (dim 1) from the input to the output:

- a convolution (``groups=1``) or a dense layer creates a new set of channels, its output
  filters; a depthwise convolution (``groups == in == out``) and a batch norm keep their
  input's set, tying their filters to it;
- channel-wise operations (activations, pooling, dropout) keep the set; flattening a
  ``C x H x W`` map keeps it, each channel now owning ``H * W`` consecutive features;
  a reduction over spatial dims (``x.mean((2, 3))``) keeps it too;
- an elementwise sum, difference or product of two tensors (a residual addition) ties
  their sets into one: their channels must be dropped together;
- a concatenation along dim 1 lines the sets up one after the other (a layer reading it
  is cut by each part's group: :attr:`ParamSpec.inp_parts`).

Sets reaching the network's input or output are never dropped (the classifier's outputs
stay). Every other set that some layer writes is a droppable :class:`Group`, named after
the first module that writes it. Anything else (a ``view`` that is not a flatten, a
transpose, a channel shuffle, indexing, a module type not listed here, a parameter used
outside its module, data-dependent control flow) is a :class:`UntraceableModel` naming the
graph node, its module and the source line: a construct the tracer cannot follow must
never yield a wrong sub-network.

Why a tracer of our own rather than Torch-Pruning's ``DependencyGraph``: that one follows
the autograd graph of an example pass and treats operations it does not know as
elementwise, so a channel shuffle (``view``, ``transpose``, ``reshape``) comes out as one
group of c1's filters and c2's input channels, index for index: a wrong sub-network, and
no error. Here, only what is listed is followed, and the result is a plain description
(:class:`ParamSpec` per tensor and a step plan) that the functional forward of
:class:`fleetsim.nn.user.UserNet` runs over sliced weights.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from fleetsim.errors import UserError
from fleetsim.nn.base import Group, ParamSpec


class UntraceableModel(UserError):
    """A construct of the user's network that the group tracer cannot follow."""


@dataclass(frozen=True)
class Seg:
    """A run of channels on dim 1: ``channels`` of set ``set_id``, each owning ``repeat``
    consecutive entries (``H * W`` after a flatten, else 1)."""

    set_id: int
    channels: int
    repeat: int = 1


Layout = tuple[Seg, ...]


@dataclass(frozen=True)
class Ref:
    """A reference to an earlier step's value in a :class:`Step`'s arguments."""

    name: str


@dataclass(frozen=True)
class Step:
    """One node of the traced graph, as the functional forward runs it.

    ``kind``: ``input``, ``output``, ``conv``, ``depthwise``, ``linear``, ``bn``,
    ``flatten`` (any flatten-like reshape, run as ``flatten(1)`` so that it holds for
    every sub-network width) or ``call`` (run as traced: ``op`` and ``target``).
    ``drop_in``: the group whose channels the layer's input carries and which it sums
    over (the place of the inverted-dropout rescale), with that input's repeat; for a
    concatenation ``drop_parts`` instead, ``(group or None, channels)`` per part.
    """

    name: str
    kind: str
    op: str
    target: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    drop_in: str | None = None
    repeat: int = 1
    drop_parts: tuple[tuple[str | None, int], ...] = ()


@dataclass
class TraceResult:
    """What :func:`trace_groups` finds: groups in order, a spec per parameter and
    floating buffer (by the user module's own names), and the step plan."""

    groups: tuple[Group, ...]
    specs: dict[str, ParamSpec]
    steps: tuple[Step, ...]


# channel-wise modules and functions: output channel c depends on input channel c only
_PASS_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
# (not F.dropout: its training= argument would be fixed when traced; nn.Dropout follows
# the module's mode)
_PASS_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset({
    F.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.hardswish, F.hardsigmoid,
    F.mish, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d, torch.relu, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh})
_PASS_METHODS = frozenset({"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone"})
_ELEMENTWISE = frozenset({operator.add, operator.sub, operator.mul, torch.add, torch.sub,
                          torch.mul})
_ELEMENTWISE_METHODS = frozenset({"add", "sub", "mul"})
_REDUCE_METHODS = frozenset({"mean", "sum", "amax"})
_REDUCE_FUNCTIONS = frozenset({torch.mean, torch.sum, torch.amax})
_FLATTEN_METHODS = frozenset({"flatten", "view", "reshape"})
_SIZES = frozenset({"size", "dim"})


@dataclass
class _Tracer:
    """Union-find over channel sets, and the layouts of the graph's tensors."""

    module: nn.Module
    shapes: dict[str, Any]
    tensors: set[str]  # nodes whose value is a tensor (the others: sizes, numbers)
    parent: dict[int, int] = field(default_factory=dict)
    channels: dict[int, int] = field(default_factory=dict)
    layouts: dict[str, Layout | None] = field(default_factory=dict)
    pinned: set[int] = field(default_factory=set)  # sets tied to the input or output
    writers: dict[int, str] = field(default_factory=dict)  # set -> first module writing it
    # (param name, dim 0 set, dim 1 segment) per weight tensor
    # (param name, dim 0 set, the layout dim 1 reads: summing layers' weights only)
    uses: list[tuple[str, int | None, Layout | None]] = field(default_factory=list)
    summed: dict[str, Layout] = field(default_factory=dict)  # step -> input it sums over
    steps: list[Step] = field(default_factory=list)
    called: set[str] = field(default_factory=set)  # modules with weights, seen once
    #: id of every parameter and buffer of a called module -> its name (module.attr)
    owners: dict[int, str] = field(default_factory=dict)

    def new_set(self, channels: int, writer: str | None) -> int:
        s = len(self.parent)
        self.parent[s], self.channels[s] = s, channels
        if writer is not None:
            self.writers[s] = writer
        return s

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        lo, hi = min(ra, rb), max(ra, rb)  # the older set stays the root: stable names
        self.parent[hi] = lo
        if hi in self.writers and lo not in self.writers:
            self.writers[lo] = self.writers[hi]
        if hi in self.pinned:
            self.pinned.add(lo)


def _where(node: fx.Node, module: nn.Module) -> str:
    """``node 'name' (what it calls), in module 'path' (Type), at file:line: code``."""
    stack = list(node.meta.get("nn_module_stack", {}).values())
    if node.op == "call_module":
        sub = module.get_submodule(str(node.target))
        what = f"calls module {node.target!r} ({type(sub).__name__})"
        stack = stack[:-1]  # the module itself is the last entry: name its owner
    elif node.op == "call_method":
        what = f"calls the tensor method .{node.target}()"
    elif node.op == "get_attr":
        what = f"reads {node.target!r} directly"
    else:
        what = f"calls {getattr(node.target, '__name__', node.target)}()"
    if stack:
        path, cls = stack[-1]
        cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
        owner = f", in module {path!r} ({cls_name.rsplit('.', 1)[-1]})"
    else:
        owner = f", in the top module ({type(module).__name__})"
    return f"graph node {node.name!r} {what}{owner}{_source_line(node.stack_trace)}"


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in \S+\n\s*(.*)')


def _source_line(stack_trace: str | None) -> str:
    """The user's own frame in a node's recorded stack (not torch's)."""
    frames = [m for m in _FRAME.finditer(stack_trace or "")
              if f"{'/'}torch{'/'}" not in m.group(1).replace("\\", "/")]
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {f.group(1)}, line {f.group(2)}: {f.group(3).strip()})"


def _fail(node: fx.Node, module: nn.Module, why: str) -> UntraceableModel:
    return UntraceableModel(
        f"the network's droppable channel groups cannot be derived: {_where(node, module)}, "
        f"and {why}. Allowed: convolutions (groups=1 or depthwise), dense layers, batch "
        "norm, channel-wise activations, pooling, nn.Dropout, flatten, spatial mean/sum, "
        "residual additions and products of equal channel sets, concatenation along dim "
        "1 (see docs/extending.md); or model.options.groups: none (fixed-work policies only)")


def symbolic_graph(module: nn.Module) -> fx.Graph:
    """``torch.fx`` graph of ``module``; data-dependent control flow is a UserError."""
    tracer = fx.Tracer()
    tracer.record_stack_traces = True
    try:
        return tracer.trace(module)
    except Exception as exc:  # fx raises TraceError, TypeError, ... on Python it cannot trace
        import traceback

        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if f"{'/'}torch{'/'}" not in f.filename.replace("\\", "/")]
        at = f" (at {frames[-1].filename}, line {frames[-1].lineno}: {frames[-1].line})" \
            if frames else ""
        raise UntraceableModel(
            f"the network {type(module).__name__} cannot be traced by torch.fx{at}: "
            f"{type(exc).__name__}: {exc}. Allowed: a forward whose operations do not "
            "depend on tensor values (no `if x.sum() > 0`, no loops over tensor values); "
            "or model.options.groups: none (fixed-work policies only)") from None


def _shapes(module: nn.Module, graph: fx.Graph, example: Tensor
            ) -> tuple[dict[str, Any], set[str]]:
    """The value (a tensor's shape, or a plain value) of every node for ``example``, and
    the names of the nodes whose value is a tensor."""
    gm = fx.GraphModule(module, graph)
    out: dict[str, Any] = {}
    tensors: set[str] = set()

    class _Record(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            v = super().run_node(n)
            if isinstance(v, Tensor):
                out[n.name] = tuple(v.shape)
                tensors.add(n.name)
            else:
                out[n.name] = v
            return v

    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            _Record(gm).run(example)
    finally:
        module.train(was)
    return out, tensors


def trace_groups(module: nn.Module, input_shape: tuple[int, ...]) -> TraceResult:
    """Droppable groups, param specs and step plan of ``module`` for samples of
    ``input_shape``; a construct it cannot follow is an :class:`UntraceableModel`."""
    graph = symbolic_graph(module)
    shapes, tensors = _shapes(module, graph, torch.zeros((2, *input_shape)))
    t = _Tracer(module, shapes, tensors)
    for node in graph.nodes:
        _visit(t, node)
    return _finish(t)


def _arg_layout(t: _Tracer, a: Any) -> Layout | None:
    return t.layouts.get(a.name) if isinstance(a, fx.Node) else None


def _refs(value: Any) -> Any:
    """``value`` with every graph node replaced by a :class:`Ref`, in plain containers."""
    if isinstance(value, fx.Node):
        return Ref(value.name)
    if isinstance(value, tuple):
        return tuple(_refs(v) for v in value)
    if isinstance(value, list):
        return [_refs(v) for v in value]
    if isinstance(value, dict):
        return {k: _refs(v) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(_refs(value.start), _refs(value.stop), _refs(value.step))
    return value


def _add_step(t: _Tracer, node: fx.Node, kind: str, **extra: Any) -> None:
    t.steps.append(Step(node.name, kind, node.op, node.target, _refs(node.args),
                        _refs(node.kwargs), **extra))


def _single(t: _Tracer, node: fx.Node, layout: Layout | None, what: str) -> Seg:
    if layout is None or len(layout) != 1:
        kind = "not a feature map" if layout is None else "a concatenation"
        raise _fail(node, t.module, f"its input is {kind} ({what} needs the channels of "
                    "one layer on dim 1)")
    return layout[0]


def _visit(t: _Tracer, node: fx.Node) -> None:
    m = t.module
    if node.op == "placeholder":
        if any(st.kind == "input" for st in t.steps):
            raise _fail(node, m, "the network takes more than one input")
        s = t.new_set(t.shapes[node.name][1] if len(t.shapes[node.name]) > 1 else 1, None)
        t.pinned.add(s)
        t.layouts[node.name] = (Seg(s, t.channels[s]),)
        _add_step(t, node, "input")
        return
    if node.op == "output":
        out = _arg_layout(t, node.args[0])
        if out is None:
            raise _fail(node, m, "the network must return one tensor")
        for seg in out:
            t.pinned.add(t.find(seg.set_id))
        _add_step(t, node, "output")
        return
    if node.op == "get_attr":
        raise _fail(node, m, "a parameter or buffer is used outside the module that owns "
                    "it, so its channels cannot be cut with that module's")
    if node.op == "call_module":
        layouts = [t.layouts.get(a.name) for a in node.all_input_nodes]
        _visit_module(t, node, m.get_submodule(str(node.target)), layouts)
        return
    target = node.target
    first = _arg_layout(t, node.args[0]) if node.args else None
    sizes = (node.op == "call_method" and target in _SIZES) or (
        node.op == "call_function" and target is getattr and node.args[1] == "shape")
    if sizes or (node.name not in t.tensors
                 and not any(a.name in t.tensors for a in node.all_input_nodes)):
        # a size, a shape, or arithmetic on them (c // 2): no channels to follow
        t.layouts[node.name] = None
        _add_step(t, node, "call")
        return
    if (node.op == "call_function" and target in _PASS_FUNCTIONS) or (
            node.op == "call_method" and target in _PASS_METHODS):
        t.layouts[node.name] = _single_or_any(t, node, first)
        _add_step(t, node, "call")
        return
    if (node.op == "call_function" and target in _ELEMENTWISE) or (
            node.op == "call_method" and target in _ELEMENTWISE_METHODS):
        _visit_elementwise(t, node)
        return
    if (node.op == "call_method" and target in _REDUCE_METHODS) or (
            node.op == "call_function" and target in _REDUCE_FUNCTIONS):
        _visit_reduce(t, node, first)
        return
    if (node.op == "call_method" and target in _FLATTEN_METHODS) or (
            node.op == "call_function" and target in (torch.flatten, torch.reshape)):
        _visit_flatten(t, node, first)
        return
    if node.op == "call_function" and target is torch.cat:
        _visit_cat(t, node)
        return
    raise _fail(node, m, "the tracer does not know how this operation maps channels")


def _single_or_any(t: _Tracer, node: fx.Node, layout: Layout | None) -> Layout:
    if layout is None:
        raise _fail(node, t.module, "its input is not a tensor the tracer follows")
    return layout


def _visit_module(t: _Tracer, node: fx.Node, sub: nn.Module, layouts: list[Layout | None]
                  ) -> None:
    name = str(node.target)
    first = layouts[0] if layouts else None
    if len(node.args) != 1 or node.kwargs:
        raise _fail(node, t.module, "the module is called with more than one input")
    if any(True for _ in sub.parameters(recurse=False)) or any(
            b is not None for b in sub.buffers(recurse=False)):
        if name in t.called:
            raise _fail(node, t.module, "the module is called a second time: its weights "
                        "would be cut by two channel sets at once (shared weights are not "
                        "supported)")
        t.called.add(name)
        for attr, p in [*sub.named_parameters(recurse=False),
                        *sub.named_buffers(recurse=False)]:
            if p is None:
                continue
            other = t.owners.setdefault(id(p), f"{name}.{attr}")
            if other != f"{name}.{attr}":
                raise _fail(node, t.module, f"its {attr!r} is the same tensor as {other!r} "
                            "(tied weights): it would be cut by two channel sets at once "
                            "(shared weights are not supported)")
    if isinstance(sub, _PASS_MODULES):
        t.layouts[node.name] = _single_or_any(t, node, first)
        _add_step(t, node, "call")
        return
    if isinstance(sub, nn.Flatten):
        if sub.start_dim != 1 or sub.end_dim != -1:
            raise _fail(node, t.module, "only Flatten(start_dim=1) keeps channels on dim 1")
        _visit_flatten(t, node, first)
        return
    if isinstance(sub, nn.Conv2d):
        if sub.padding_mode != "zeros":
            raise _fail(node, t.module, f"padding_mode {sub.padding_mode!r} is not supported "
                        "(only 'zeros')")
        if sub.groups == 1:
            _summing_layer(t, node, first, name, sub.out_channels, sub.bias is not None, "conv")
            return
        if sub.groups == sub.in_channels == sub.out_channels:
            seg = _single(t, node, first, "a depthwise convolution")
            # depthwise: output channel c reads input channel c only, so both are one set
            t.uses.append((f"{name}.weight", seg.set_id, None))
            if sub.bias is not None:
                t.uses.append((f"{name}.bias", seg.set_id, None))
            t.layouts[node.name] = (Seg(seg.set_id, seg.channels),)
            _add_step(t, node, "depthwise")
            return
        raise _fail(node, t.module, f"a grouped convolution (groups={sub.groups} of "
                    f"{sub.in_channels} input channels) ties channels in blocks; only "
                    "groups=1 and depthwise (groups == in == out channels) are supported")
    if isinstance(sub, nn.Linear):
        shape = t.shapes[node.args[0].name]  # type: ignore[union-attr]
        if len(shape) != 2:
            raise _fail(node, t.module, f"a dense layer on a {len(shape)}-d tensor reads its "
                        "features from the last dim, not the channels on dim 1; flatten first")
        _summing_layer(t, node, first, name, sub.out_features, sub.bias is not None, "linear")
        return
    if isinstance(sub, (nn.BatchNorm1d, nn.BatchNorm2d)):
        seg = _single(t, node, first, "a batch norm")
        if not sub.affine:
            raise _fail(node, t.module, "batch norm without affine parameters is not "
                        "supported (give affine=True)")
        if seg.repeat != 1:
            raise _fail(node, t.module, "batch norm of a flattened feature map normalises "
                        "each feature, not each channel")
        for n in ("weight", "bias", "running_mean", "running_var"):
            if getattr(sub, n) is not None:
                t.uses.append((f"{name}.{n}", seg.set_id, None))
        t.layouts[node.name] = first  # type: ignore[assignment]
        _add_step(t, node, "bn")
        return
    raise _fail(node, t.module, f"modules of type {type(sub).__name__} are not supported")


def _summing_layer(t: _Tracer, node: fx.Node, layout: Layout | None, name: str,
                   n_out: int, has_bias: bool, kind: str) -> None:
    """A convolution (groups 1) or dense layer: it sums over the channels it reads (its
    weight's input dim follows ``layout``) and writes a new set of ``n_out`` channels."""
    lay = _summed(t, node, layout)
    out = t.new_set(n_out, name)
    t.uses.append((f"{name}.weight", out, lay))
    if has_bias:
        t.uses.append((f"{name}.bias", out, None))
    t.layouts[node.name] = (Seg(out, n_out),)
    _add_step(t, node, kind)


def _summed(t: _Tracer, node: fx.Node, layout: Layout | None) -> Layout:
    """The input layout a summing layer (convolution, dense) reads, recorded."""
    if layout is None:
        raise _fail(node, t.module, "its input is not a feature map the tracer follows")
    if len({s.repeat for s in layout}) > 1:
        raise _fail(node, t.module, "it reads a concatenation of flattened parts of "
                    "different sizes (each channel of a part must own as many features)")
    t.summed[node.name] = layout
    return layout


def _visit_elementwise(t: _Tracer, node: fx.Node) -> None:
    tensors = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]
    lays = [t.layouts.get(a.name) for a in tensors]
    if not tensors or any(lay is None for lay in lays):
        raise _fail(node, t.module, "an operand is not a tensor the tracer follows")
    base = lays[0]
    assert base is not None
    shape = t.shapes[node.name]
    for a, lay in zip(tensors[1:], lays[1:]):
        assert lay is not None
        if t.shapes[a.name] != shape or t.shapes[tensors[0].name] != shape:
            raise _fail(node, t.module, f"its operands have shapes {t.shapes[tensors[0].name]} "
                        f"and {t.shapes[a.name]}: broadcasting mixes channel layouts")
        if [(s.channels, s.repeat) for s in lay] != [(s.channels, s.repeat) for s in base]:
            raise _fail(node, t.module, "its operands' channels come from layers laid out "
                        "differently (a concatenation on one side only)")
        for s, b in zip(lay, base):
            t.union(s.set_id, b.set_id)  # a residual addition: one set of channels
    t.layouts[node.name] = base
    _add_step(t, node, "call")


def _dims(node: fx.Node) -> Any:
    if "dim" in node.kwargs:
        return node.kwargs["dim"]
    return node.args[1] if len(node.args) > 1 else None


def _visit_reduce(t: _Tracer, node: fx.Node, first: Layout | None) -> None:
    dims = _dims(node)
    shape = t.shapes[node.args[0].name]  # type: ignore[union-attr]
    if first is None or dims is None:
        raise _fail(node, t.module, "a reduction over every dim (or of a non-feature "
                    "tensor) mixes channels")
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    norm = {d % len(shape) for d in dims}
    if 0 in norm or 1 in norm:
        raise _fail(node, t.module, "a reduction over the batch or channel dim mixes "
                    "channels")
    if any(s.repeat != 1 for s in first):
        raise _fail(node, t.module, "a reduction of a flattened feature map")
    t.layouts[node.name] = first
    _add_step(t, node, "call")


def _visit_flatten(t: _Tracer, node: fx.Node, first: Layout | None) -> None:
    src = node.args[0]
    assert isinstance(src, fx.Node)
    before, after = t.shapes[src.name], t.shapes[node.name]
    if first is None or len(before) < 2:
        raise _fail(node, t.module, "its input is not a feature map")
    if not (len(after) == 2 and after[0] == before[0]
            and after[1] == math.prod(before[1:])):
        raise _fail(node, t.module, f"it reshapes {before} to {after}: only a flatten to "
                    "(batch, features) keeps each channel's entries together (a view that "
                    "splits or reorders channels, such as a channel shuffle, does not)")
    if node.op == "call_function" and node.target is torch.flatten:
        start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
        if start not in (1, -len(before) + 1) and len(before) > 1:
            raise _fail(node, t.module, "only flatten(x, 1) keeps the batch dim")
    rest = math.prod(before[2:])
    t.layouts[node.name] = tuple(Seg(s.set_id, s.channels, s.repeat * rest) for s in first)
    _add_step(t, node, "flatten")


def _visit_cat(t: _Tracer, node: fx.Node) -> None:
    parts = node.args[0]
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    shape = t.shapes[node.name]
    if not isinstance(parts, (list, tuple)) or dim % len(shape) != 1:
        raise _fail(node, t.module, "only a concatenation along dim 1 (channels) is "
                    "followed")
    lays = [_arg_layout(t, p) for p in parts]
    if any(lay is None for lay in lays):
        raise _fail(node, t.module, "a concatenated part is not a tensor the tracer follows")
    t.layouts[node.name] = tuple(s for lay in lays for s in lay)  # type: ignore[union-attr]
    _add_step(t, node, "call")


def _finish(t: _Tracer) -> TraceResult:
    """Name the droppable sets and give every tensor its spec."""
    roots: dict[int, str] = {}
    used: set[str] = set()
    for s in sorted({t.find(s) for s in t.writers}):
        if s in t.pinned or t.find(s) != s or s not in t.writers:
            continue
        name = t.writers[s]
        while name in used:  # cannot happen with module paths, but names must be unique
            name += "_"
        used.add(name)
        roots[s] = name

    def group(set_id: int | None) -> str | None:
        return None if set_id is None else roots.get(t.find(set_id))

    def parts(layout: Layout) -> tuple[tuple[str | None, int], ...]:
        """A concatenation's parts, () when nothing in it is dropped."""
        found = tuple((group(s.set_id), s.channels) for s in layout)
        return found if len(found) > 1 and any(g for g, _ in found) else ()

    specs: dict[str, ParamSpec] = {}
    for pname, out, lay in t.uses:
        if lay is None:
            specs[pname] = ParamSpec(out=group(out))
        elif parts(lay):  # dim 1 reads several groups side by side
            specs[pname] = ParamSpec(out=group(out), inp_repeat=lay[0].repeat,
                                     inp_parts=parts(lay))
        else:
            inp = group(lay[0].set_id) if len(lay) == 1 else None
            specs[pname] = ParamSpec(out=group(out), inp=inp,
                                     inp_repeat=lay[0].repeat if inp is not None else 1)
    order = sorted(roots, key=lambda s: min(
        i for i, st in enumerate(t.steps) if st.kind in ("conv", "linear")
        and t.find(_step_out_set(t, st)) == s))
    groups = tuple(Group(roots[s], t.channels[s]) for s in order)
    steps = tuple(_with_drop(st, t.summed.get(st.name), group, parts) for st in t.steps)
    return TraceResult(groups, specs, steps)


def _with_drop(st: Step, layout: Layout | None, group: Callable[[int], str | None],
               parts: Callable[[Layout], tuple[tuple[str | None, int], ...]]) -> Step:
    """``st`` with where its input's groups are rescaled (summing layers only)."""
    if layout is None:
        return st
    if len(layout) == 1:
        return dataclasses.replace(st, drop_in=group(layout[0].set_id),
                                   repeat=layout[0].repeat)
    return dataclasses.replace(st, drop_parts=parts(layout), repeat=layout[0].repeat)


def _step_out_set(t: _Tracer, st: Step) -> int:
    lay = t.layouts[st.name]
    assert lay is not None
    return lay[0].set_id
