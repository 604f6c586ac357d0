"""Built-in architectures with droppable groups, registered by name for ``model.arch``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field, ValidationError, model_validator
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from fleetsim.errors import input_error
from fleetsim.nn.base import DroppableNet, Group, ParamSpec
from fleetsim.numbers import StrictNumbers
from fleetsim.registry import Registry

MODELS: Registry[type[DroppableNet]] = Registry("model")

#: A layer width: a group of zero channels has nothing to keep or train (and once crashed
#: the channel selection with an IndexError).
Width = Annotated[int, Field(ge=1)]


class ModelOptions(StrictNumbers):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    rescale: bool = Field(True, description="scale kept activations by 1/(1-d) in training "
                          "(inverted dropout), so train and eval see the same expected "
                          "size; a method may bring its own default: docs/policies.md, "
                          "'Defaults of each method'")


BnStats = Literal["running", "batch", "static"]


def bn_stats_field() -> Any:
    return Field("running", description="batch-norm statistics: running (tracked in "
                 "training, used at test; PyTorch's default), batch (batch statistics in "
                 "training and at test, none tracked: SLT's track_running_stats=False), "
                 "static (batch statistics in training; before each evaluation recomputed "
                 "by the full model over the whole training set: HeteroFL's sBN); a method "
                 "may bring its own default: docs/policies.md, 'Defaults of each method'")


def add_bn(owner: DroppableNet, parent: nn.Module, attr: str, name: str, channels: int,
           group: str) -> None:
    """Add a batch norm of ``channels`` at ``parent.attr`` (full name ``name``) and its
    specs, tracking running statistics unless ``owner.bn_stats`` is ``batch``."""
    mod = nn.BatchNorm2d(channels, track_running_stats=owner.bn_stats != "batch")
    if isinstance(parent, nn.ModuleList):
        parent.append(mod)
    else:
        parent.add_module(attr, mod)
    tensors = ("weight", "bias") if owner.bn_stats == "batch" else (
        "weight", "bias", "running_mean", "running_var")
    for n in tensors:
        owner.specs[f"{name}.{n}"] = ParamSpec(out=group)


class _MaxPool2(torch.autograd.Function):
    """2x2 max-pooling with stride 2: the values and gradients of ``F.max_pool2d(x, 2)``,
    bit for bit (a tie goes to the first element in row-major order, as there).

    Why not ``F.max_pool2d``: its CPU kernel for NCHW tensors walks window by window and
    writes int64 indices; on this project's small single-threaded CNN steps it took a fifth
    of the step time and, since pooling scales with channels and not channels squared, it
    ate into the speedup of sub-networks. Two elementwise maxima over strided views
    vectorise, and the backward needs only two boolean masks: about 2.5x faster.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor) -> Tensor:
        h2, w2 = x.shape[-2] // 2, x.shape[-1] // 2
        v = x[..., : 2 * h2, : 2 * w2]  # floor, like max_pool2d: an odd last row/col is cut
        left, right = v[..., 0::2], v[..., 1::2]
        m = torch.maximum(left, right)
        top, bottom = m[..., 0::2, :], m[..., 1::2, :]
        ctx.save_for_backward(left >= right, top >= bottom)
        ctx.in_shape = x.shape  # type: ignore[attr-defined]
        return torch.maximum(top, bottom)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, g: Tensor) -> Tensor:
        take_left, take_top = ctx.saved_tensors  # type: ignore[attr-defined]
        in_shape = ctx.in_shape  # type: ignore[attr-defined]
        # g * mask and g - that (not torch.where, which is several times slower here) route
        # each output gradient to the row, then to the column, that won
        gm = g.new_empty(take_left.shape)
        top = torch.mul(g, take_top, out=gm[..., 0::2, :])
        torch.sub(g, top, out=gm[..., 1::2, :])
        h, w = take_left.shape[-2], take_left.shape[-1] * 2
        exact = tuple(in_shape[-2:]) == (h, w)
        gx = g.new_empty(in_shape) if exact else g.new_zeros(in_shape)
        left = torch.mul(gm, take_left, out=gx[..., :h, 0:w:2])
        torch.sub(gm, left, out=gx[..., :h, 1:w:2])
        return gx


def max_pool2(x: Tensor) -> Tensor:
    """2x2 max-pooling, stride 2 (same results as ``F.max_pool2d(x, 2)``, faster on CPU)."""
    return _MaxPool2.apply(x)  # type: ignore[no-any-return]


@MODELS.register("mlp")
class MLP(DroppableNet):
    """A small multi-layer perceptron (for tests and tiny studies); hidden layers droppable."""

    arch = "mlp"

    class Options(ModelOptions):
        hidden: tuple[Width, ...] = Field((200, 200), min_length=1, description="units of "
                                          "each hidden layer (each >= 1)")

    def __init__(self, input_shape: tuple[int, ...], num_classes: int,
                 options: MLP.Options | None = None) -> None:
        super().__init__()
        o = options or self.Options()
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.rescale = o.rescale
        d_in = 1
        for s in input_shape:
            d_in *= s
        self.groups = tuple(Group(f"h{i}", h) for i, h in enumerate(o.hidden))
        self.layers = nn.ModuleList()
        self.specs = {}
        prev, prev_g = d_in, None
        for i, h in enumerate(o.hidden):
            self.layers.append(nn.Linear(prev, h))
            self.specs[f"layers.{i}.weight"] = ParamSpec(out=f"h{i}", inp=prev_g)
            self.specs[f"layers.{i}.bias"] = ParamSpec(out=f"h{i}")
            prev, prev_g = h, f"h{i}"
        self.head = nn.Linear(prev, num_classes)
        self.specs["head.weight"] = ParamSpec(inp=prev_g)
        self.specs["head.bias"] = ParamSpec()
        self.finish_init()

    def functional(self, x: Tensor) -> Tensor:
        h = x.flatten(1)
        for i in range(len(self.layers)):
            h = self.drop(F.relu(self.linear(h, f"layers.{i}")), f"h{i}")
        return self.linear(h, "head")


@MODELS.register("cnn4")
class CNN4(DroppableNet):
    """Four 3x3 convolutions (two blocks of two, each followed by 2x2 max-pooling), then a
    dense classifier; every convolution's filters are a droppable group.

    ``width`` scales the filter counts (16, 32, 64, 64 at width 1); ``norm: bn`` adds batch
    norm after each convolution (off by default: running statistics averaged across
    non-IID clients hurt FedAvg).
    """

    arch = "cnn4"

    class Options(ModelOptions):
        channels: tuple[Width, Width, Width, Width] = Field(
            (16, 32, 64, 64), description="filters of the four convolutions (each >= 1)")
        norm: str = Field("none", pattern="^(none|bn)$")
        bn_stats: BnStats = bn_stats_field()

        @model_validator(mode="after")
        def _bn_only(self) -> CNN4.Options:
            if self.bn_stats != "running" and self.norm != "bn":
                raise ValueError("bn_stats applies to batch norm: give norm: bn too")
            return self

    def __init__(self, input_shape: tuple[int, ...], num_classes: int,
                 options: CNN4.Options | None = None) -> None:
        super().__init__()
        o = options or self.Options()
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.rescale = o.rescale
        cin, h, w = image_shape(self.arch, input_shape, 4)  # two 2x2 poolings
        self.use_bn = o.norm == "bn"
        self.bn_stats = o.bn_stats
        self.groups = tuple(Group(f"c{i}", c) for i, c in enumerate(o.channels))
        self.specs = {}
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        prev, prev_g = cin, None
        for i, c in enumerate(o.channels):
            self.convs.append(nn.Conv2d(prev, c, 3, padding=1))
            self.specs[f"convs.{i}.weight"] = ParamSpec(out=f"c{i}", inp=prev_g)
            self.specs[f"convs.{i}.bias"] = ParamSpec(out=f"c{i}")
            if self.use_bn:
                add_bn(self, self.bns, str(i), f"bns.{i}", c, f"c{i}")
            prev, prev_g = c, f"c{i}"
        hw = (h // 4) * (w // 4)
        self.head = nn.Linear(prev * hw, num_classes)
        self.specs["head.weight"] = ParamSpec(inp=prev_g, inp_repeat=hw)
        self.specs["head.bias"] = ParamSpec()
        self.finish_init()

    def functional(self, x: Tensor) -> Tensor:
        h = x
        for i in range(4):
            h = self.conv(h, f"convs.{i}", padding=1)
            if self.use_bn:
                h = self.bn(h, f"bns.{i}")
            # ReLU after pooling: both are monotone, so relu(pool(h)) == pool(relu(h)) bit
            # for bit (gradients too), and the ReLU touches 4x fewer elements. Likewise
            # drop() after pooling: it commutes with zeroing and with a positive scale.
            if i % 2 == 1:
                h = max_pool2(h)
            h = self.drop(F.relu(h), f"c{i}")
        return self.linear(h.flatten(1), "head")


class _TwoConvCNN(DroppableNet):
    """Two 5x5 convolutions (padding 2, each followed by ReLU and 2x2 max-pooling), one
    dense ReLU layer and a classifier.

    Groups, in order: ``conv1``, ``conv2`` (the filters of the convolutions) and ``fc1``
    (the dense units). The classifier's outputs are never dropped. ``drop`` sits after each
    group's pooling and ReLU (both commute with zeroing and with a positive scale, and the
    rescale then touches 4x fewer elements).
    """

    class Options(ModelOptions):
        channels: tuple[Width, Width] = Field((32, 64), description="filters of the two "
                                              "convolutions (each >= 1)")
        hidden: int = Field(2048, ge=1)

    def __init__(self, input_shape: tuple[int, ...], num_classes: int,
                 options: _TwoConvCNN.Options | None = None) -> None:
        super().__init__()
        o = options or self.Options()
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.rescale = o.rescale
        cin, h, w = image_shape(self.arch, input_shape, 4)  # two 2x2 poolings
        c1, c2 = o.channels
        self.groups = (Group("conv1", c1), Group("conv2", c2), Group("fc1", o.hidden))
        self.conv1 = nn.Conv2d(cin, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
        hw = (h // 2 // 2) * (w // 2 // 2)
        self.fc1 = nn.Linear(c2 * hw, o.hidden)
        self.head = nn.Linear(o.hidden, num_classes)
        self.specs = {
            "conv1.weight": ParamSpec(out="conv1"), "conv1.bias": ParamSpec(out="conv1"),
            "conv2.weight": ParamSpec(out="conv2", inp="conv1"),
            "conv2.bias": ParamSpec(out="conv2"),
            "fc1.weight": ParamSpec(out="fc1", inp="conv2", inp_repeat=hw),
            "fc1.bias": ParamSpec(out="fc1"),
            "head.weight": ParamSpec(inp="fc1"), "head.bias": ParamSpec(),
        }
        self.finish_init()

    def functional(self, x: Tensor) -> Tensor:
        # relu(pool(.)) == pool(relu(.)) exactly, and is cheaper (see CNN4.functional)
        h = self.drop(F.relu(max_pool2(self.conv(x, "conv1", padding=2))), "conv1")
        h = self.drop(F.relu(max_pool2(self.conv(h, "conv2", padding=2))), "conv2")
        h = self.drop(F.relu(self.linear(h.flatten(1), "fc1")), "fc1")
        return self.linear(h, "head")


@MODELS.register("femnist_cnn")
class FemnistCNN(_TwoConvCNN):
    """The LEAF FEMNIST CNN (Caldas et al. 2018): conv 5x5x32, pool, conv 5x5x64, pool,
    dense 2048, classifier (62 classes for FEMNIST; 6,603,710 parameters at 28x28).

    Groups, in order: ``conv1``, ``conv2``, ``fc1``.
    """

    arch = "femnist_cnn"

    class Options(_TwoConvCNN.Options):
        hidden: int = Field(2048, ge=1)


@MODELS.register("mcmahan_cnn")
class McMahanCNN(_TwoConvCNN):
    """The CNN of McMahan et al. 2017 (FedAvg): conv 5x5x32, pool, conv 5x5x64, pool,
    dense 512, classifier (1,663,370 parameters at 28x28 with 10 classes, as in the paper).

    Groups, in order: ``conv1``, ``conv2``, ``fc1``.
    """

    arch = "mcmahan_cnn"

    class Options(_TwoConvCNN.Options):
        hidden: int = Field(512, ge=1)


def image_shape(arch: str, input_shape: tuple[int, ...], min_side: int = 1
                ) -> tuple[int, int, int]:
    """``input_shape`` as (channels, height, width), or a :class:`UserError` saying that
    model ``arch`` does not fit the dataset's samples (flat vectors, or images smaller
    than ``min_side`` pixels on a side, which its poolings would shrink to nothing)."""
    if len(input_shape) != 3 or min(input_shape) < 1 or min(input_shape[1:]) < min_side:
        raise input_error(
            None, "model.arch", f"the model {arch} needs image samples (channels, height, "
            f"width) of at least {min_side}x{min_side} pixels, and the dataset's samples "
            f"have shape {tuple(input_shape)}", "a model that fits the dataset (mlp takes "
            "samples of any shape), or a dataset of images (data.dataset: mnist5k, digits, "
            "femnist, cifar10)")
    return input_shape[0], input_shape[1], input_shape[2]


def build_model(arch: str, input_shape: tuple[int, ...], num_classes: int,
                options: dict[str, Any] | None = None) -> DroppableNet:
    """Build a registered architecture.

    The scenario validates the options first, with its file and key path; this checks
    them again for direct callers, and the fit of model and data (``model.arch``) too.
    """
    cls = MODELS.get(arch, key_path="model.arch")
    try:
        opts = cls.Options(**(options or {}))  # type: ignore[attr-defined]
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in ("model", "options", *err["loc"]))
        raise input_error(None, key, f"{err.get('input')!r} is not allowed ({err['msg']})",
                          f"the options of model {arch} (see `fleetsim schema`)") from None
    if getattr(cls, "images_only", False):  # convolutions from the first layer on
        image_shape(arch, tuple(input_shape))
    if num_classes < 1:
        raise input_error(None, "model", f"{num_classes} classes is not allowed",
                          "a dataset with at least one class")
    return cls(tuple(input_shape), num_classes, opts)  # type: ignore[call-arg]
