"""The user's own PyTorch network as a fleetsim model (``model.arch: user``).

``model.options.factory`` names a function (or class) in a Python file or module that
returns a plain ``nn.Module``; ``kwargs`` are passed to it, and so are ``input_shape`` and
``num_classes`` (the dataset's) where its signature takes them. The network trains
unchanged under fixed-work policies. With ``groups: auto`` (the default) its droppable
groups are derived by :mod:`fleetsim.nn.trace`, and :class:`UserNet` runs its graph
functionally over sliced weights, like the built-in models: sub-networks are physically
smaller, and dropout policies work on it.

Where the inverted-dropout rescale goes: every layer that *sums over* a cut group's
channels (a convolution with ``groups=1`` or a dense layer) multiplies its input by
``C / k``, so it sees inputs of the same expected size as the full network does. For the
built-in models this is exactly where their ``drop`` calls sit (after each group's
activation, on each term of a residual stream): ReLU, pooling and addition commute with
a positive scale. A depthwise convolution sums over no channels and is not rescaled.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from fleetsim.errors import UserError
from fleetsim.nn.base import DroppableNet, ParamSpec
from fleetsim.nn.models import MODELS, ModelOptions
from fleetsim.nn.slicing import select_channels
from fleetsim.nn.trace import Ref, Step, UntraceableModel, trace_groups

_KEY = "model.options.factory"


def make_network(factory: str, kwargs: dict[str, Any], input_shape: tuple[int, ...],
                 num_classes: int) -> nn.Module:
    """Call the user's factory; every mistake is a :class:`UserError` naming ``factory``."""
    from fleetsim.plugins import load_object

    at = f"at '{_KEY}'"
    fn = load_object(factory, at)
    if not callable(fn):
        raise UserError(f"{at}: {factory!r} is a {type(fn).__name__}, not a function or "
                        "class. Allowed: a callable that returns an nn.Module.")
    kw = dict(kwargs)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}  # a builtin without a signature: pass only the kwargs
    for name, value in (("input_shape", tuple(input_shape)), ("num_classes", num_classes)):
        if name in params and name not in kw:
            kw[name] = value
    try:
        net = fn(**kw)
    except Exception as exc:  # user code: anything can come
        from fleetsim.plugins import _plugin_error

        err = _plugin_error(at, factory.rpartition(":")[0], exc)
        raise UserError(str(err).replace("failed while being imported", "failed when "
                                         f"called with {sorted(kw)}")) from None
    if not isinstance(net, nn.Module):
        raise UserError(f"{at}: {factory!r} returned a {type(net).__name__}. Allowed: a "
                        "factory that returns a torch.nn.Module.")
    return net


def model_source_digest(arch: str, options: dict[str, Any]) -> str | None:
    """Digest of a user network's source file (None for other models, or a module
    reference): part of what cached DSE results depend on, so that editing the network
    never reuses a front measured on the old one."""
    factory = options.get("factory") if arch == "user" else None
    if not isinstance(factory, str):
        return None
    import hashlib
    from pathlib import Path

    where = factory.rpartition(":")[0]
    try:
        return hashlib.sha256(Path(where).read_bytes()).hexdigest()[:16]
    except OSError:  # a module name, not a file: its version is the user's to pin
        return None


@MODELS.register("user")
class UserNet(DroppableNet):
    """Your own PyTorch network (``options.factory``), its droppable groups derived by
    tracing it; the module itself is at ``self.net``.

    Groups are named after the first module writing their channels (``layer1.0.conv1``)
    and ordered by where that module runs; see :mod:`fleetsim.nn.trace`.
    """

    arch = "user"

    class Options(ModelOptions):
        factory: str = Field(description="the network: 'path/to/file.py:make_net' "
                             "(relative to the scenario) or 'package.module:make_net', a "
                             "function or class returning a torch.nn.Module")
        kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword "
                                       "arguments of the factory (input_shape and "
                                       "num_classes are passed too where it takes them)")
        groups: Literal["auto", "none"] = Field(
            "auto", description="auto: droppable channel groups derived by tracing the "
            "network (torch.fx), for every policy; none: no groups, the network runs as "
            "written (any network, fixed-work policies only)")

        @field_validator("factory")
        @classmethod
        def _ref(cls, ref: str) -> str:
            where, sep, name = ref.rpartition(":")
            if not sep or not where or not name.isidentifier():
                raise ValueError("give 'path/to/file.py:name' or 'package.module:name'")
            from pathlib import Path

            if where.endswith(".py") and not Path(where).is_file():
                raise ValueError(f"the file {where} does not exist")
            return ref

    def __init__(self, input_shape: tuple[int, ...], num_classes: int,
                 options: UserNet.Options) -> None:
        super().__init__()
        o = options
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.rescale = o.rescale
        self.net = make_network(o.factory, o.kwargs, self.input_shape, num_classes)
        self._steps: tuple[Step, ...] | None = None
        self.specs = {}
        self.groups = ()
        if o.groups == "auto":
            found = trace_groups(self.net, self.input_shape)
            self._steps = found.steps
            self.groups = found.groups
            self.specs = {f"net.{k}": v for k, v in found.specs.items()}
        #: why fleetsim.batched cannot train it (None: it can): batched training swaps
        #: the conv and linear helpers for stacked ones, which the network as written
        #: never calls, and its grouped convolution has no room for a depthwise one's
        self.not_batchable: str | None = None
        if self._steps is None:
            self.not_batchable = "the user network runs as written (groups: none)"
        elif any(st.kind == "depthwise" for st in self._steps):
            self.not_batchable = "the user network has depthwise convolutions"
        tensors = [n for n, _ in self.named_parameters()] + [
            n for n, b in self.named_buffers() if b.is_floating_point()]
        for name in tensors:  # in no traced layer (unused): never cut
            self.specs.setdefault(name, ParamSpec())
        self.finish_init()
        self._check()

    # -- forward ----------------------------------------------------------------------

    def functional(self, x: Tensor) -> Tensor:
        if self._steps is None:
            return self._plain(x)
        env: dict[str, Any] = {}
        for st in self._steps:
            self._at = st.name
            args, kwargs = _resolve(st.args, env), _resolve(st.kwargs, env)
            run = _KINDS.get(st.kind)
            if run is not None:
                env[st.name] = run(self, st, args[0])
            elif st.kind == "output":
                return args[0]  # type: ignore[no-any-return]
            elif st.kind == "input":
                env[st.name] = x
            elif st.op == "call_module":
                env[st.name] = self.net.get_submodule(st.target)(*args, **kwargs)
            elif st.op == "call_function":
                env[st.name] = st.target(*args, **kwargs)
            else:
                env[st.name] = getattr(args[0], st.target)(*args[1:], **kwargs)
        raise AssertionError("the traced graph has no output")

    def _plain(self, x: Tensor) -> Tensor:
        """The network as written (``groups: none``); costs from PyTorch's flop counter."""
        if self._counter is None:
            return self.net(x)  # type: ignore[no-any-return]
        from torch.utils.flop_counter import FlopCounterMode

        sizes: list[int] = []
        hooks = [m.register_forward_hook(lambda _m, _i, y: sizes.append(y[0].numel()))
                 for m in self.net.modules() if not list(m.children())]
        try:
            with FlopCounterMode(display=False) as fc:
                y = self.net(x)
        finally:
            for h in hooks:
                h.remove()
        self._counter.macs += fc.get_total_flops() // 2 // x.shape[0]
        self._counter.params += sum(p.numel() for p in self.net.parameters())
        self._counter.activations += sum(sizes)
        return y  # type: ignore[no-any-return]

    def _rescaled(self, h: Tensor, group: str | None, repeat: int,
                  parts: tuple[tuple[str | None, int], ...] = ()) -> Tensor:
        """A summing layer's input carrying ``group`` (or a concatenation of ``parts``):
        rescaled by C/k (inverted dropout); in masked mode also zeroed on the dropped
        channels."""
        if parts:
            return self._rescaled_parts(h, parts, repeat)
        if group is None or self._keep is None or group not in self._keep:
            return h
        idx = self._keep[group]
        c, k = self.group_channels[group], len(idx)
        scale = c / k if self.rescale else 1.0
        if self._masked:
            m = torch.zeros(c, dtype=h.dtype, device=h.device)
            m[idx] = scale
            return h * m.repeat_interleave(repeat).view(1, -1, *([1] * (h.dim() - 2)))
        return h * scale if scale != 1.0 else h

    def _rescaled_parts(self, h: Tensor, parts: tuple[tuple[str | None, int], ...],
                        repeat: int) -> Tensor:
        """Each part of a concatenated input scaled by its own group's C/k."""
        keep = self._keep
        if keep is None or not any(g in keep for g, _ in parts):
            return h
        scales = []
        for g, c in parts:
            k = len(keep[g]) if g in keep else c
            s = c / k if self.rescale else 1.0
            if self._masked:
                m = torch.zeros(c, dtype=h.dtype, device=h.device)
                m[keep[g] if g in keep else slice(None)] = s
            else:  # the sliced input holds the k kept channels of the part
                m = torch.full((k,), s, dtype=h.dtype, device=h.device)
            scales.append(m)
        m = torch.cat(scales).repeat_interleave(repeat)
        return h * m.view(1, -1, *([1] * (h.dim() - 2)))

    # -- checks -----------------------------------------------------------------------

    @torch.no_grad()
    def _check(self) -> None:
        """The traced forward must equal the network's own, and every sub-network must
        run: found now, with the node to blame, rather than in the middle of a run."""
        was = self.training
        self.eval()  # running statistics and modules' eval behaviour: nothing changes
        try:
            g = torch.Generator().manual_seed(0)
            x = torch.randn((2, *self.input_shape), generator=g)
            y = self._run(x, None, "the full network")
            if tuple(y.shape) != (2, self.num_classes):
                raise UserError(
                    f"at '{_KEY}': the network returns shape {tuple(y.shape)} for a batch of 2 "
                    f"samples of shape {self.input_shape}. Allowed: a network returning "
                    f"(batch, {self.num_classes}) logits, one per class of the dataset.")
            if self._steps is None:
                return
            ref = self.net(x)
            if not torch.allclose(y, ref, rtol=1e-4, atol=1e-5):
                raise UntraceableModel(
                    f"at '{_KEY}': the traced graph of the network computes something other "
                    "than its forward (in evaluation mode), so sub-networks cut from it "
                    "would be wrong; the forward probably branches on a Python value fixed "
                    "when traced (such as self.training or F.dropout(training=...)). "
                    "Allowed: modules for mode-dependent behaviour (nn.Dropout), or "
                    "model.options.groups: none (fixed-work policies only).")
            if self.groups:
                keep = select_channels(self.groups, [0.5] * len(self.groups), "ordered")
                y = self._run(x, keep, "a half-width sub-network")
                if tuple(y.shape) != (2, self.num_classes):
                    raise UntraceableModel(f"at '{_KEY}': a half-width sub-network returns "
                                           f"shape {tuple(y.shape)}. Allowed: a network whose "
                                           "output does not depend on kept channel counts.")
        finally:
            self.train(was)

    def _run(self, x: Tensor, keep: Any, what: str) -> Tensor:
        self._at = ""
        try:
            return self(x, keep)
        except UserError:
            raise
        except Exception as exc:  # user modules and functions: anything can come
            node = f" at graph node {self._at!r}" if self._at else ""
            raise UserError(f"at '{_KEY}': {what} of the network fails{node}: "
                            f"{type(exc).__name__}: {exc}. Allowed: a network the tracer "
                            "can cut (see docs/extending.md), or model.options.groups: "
                            "none (fixed-work policies only).") from None


def _conv(net: UserNet, st: Step, x: Tensor) -> Tensor:
    mod: nn.Conv2d = net.net.get_submodule(st.target)  # type: ignore[assignment]
    x = net._rescaled(x, st.drop_in, 1, st.drop_parts)
    return net.conv(x, f"net.{st.target}", stride=mod.stride, padding=mod.padding,
                    dilation=mod.dilation)


def _depthwise(net: UserNet, st: Step, x: Tensor) -> Tensor:
    mod: nn.Conv2d = net.net.get_submodule(st.target)  # type: ignore[assignment]
    # as many groups as channels come in: the sub-network's kept ones
    return net.conv(x, f"net.{st.target}", stride=mod.stride, padding=mod.padding,
                    dilation=mod.dilation, groups=x.shape[1])


def _linear(net: UserNet, st: Step, x: Tensor) -> Tensor:
    return net.linear(net._rescaled(x, st.drop_in, st.repeat, st.drop_parts),
                      f"net.{st.target}")


def _bn(net: UserNet, st: Step, x: Tensor) -> Tensor:
    return net.bn(x, f"net.{st.target}")


def _flatten(net: UserNet, st: Step, x: Tensor) -> Tensor:
    # whatever reshape the network wrote (view(n, -1), view(n, 512), flatten): the
    # sub-network's feature count differs, so run it as the flatten the tracer checked
    return x.flatten(1)


_KINDS = {"conv": _conv, "depthwise": _depthwise, "linear": _linear, "bn": _bn,
          "flatten": _flatten}


def _resolve(value: Any, env: dict[str, Any]) -> Any:
    if isinstance(value, Ref):
        return env[value.name]
    if isinstance(value, tuple):
        return tuple(_resolve(v, env) for v in value)
    if isinstance(value, list):
        return [_resolve(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, env) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(_resolve(value.start, env), _resolve(value.stop, env),
                     _resolve(value.step, env))
    return value
