"""CIFAR-style residual networks (He et al. 2016, section 4.2) with droppable groups.

Three stages of ``16, 32, 64`` channels (times ``width``), ``n`` basic blocks per stage
(``resnet8``: n=1, ``resnet20``: n=3), batch norm after every convolution, a 1x1
convolution + batch norm projection shortcut where a stage changes width and resolution
(option B of the paper), global average pooling and a dense classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from fleetsim.nn.base import DroppableNet, Group, ParamSpec
from fleetsim.nn.models import MODELS, BnStats, ModelOptions, add_bn, bn_stats_field

_STAGE_CHANNELS = (16, 32, 64)


@dataclass(frozen=True)
class _BlockPlan:
    """Where one basic block sits: its module name, groups and stride."""

    name: str  # module prefix, e.g. "blocks.3"
    inner: str  # group of the block's first convolution
    stage: str  # residual group of the block's stage (its output channels)
    stage_in: str  # residual group of the stream entering the block
    stride: int
    project: bool  # projection shortcut (stage change) instead of identity


class CifarResNet(DroppableNet):
    """A CIFAR ResNet with ``blocks_per_stage`` basic blocks per stage.

    Groups
    ------
    Channels added together by a residual connection must be dropped together, so each
    stage's *residual stream* is one group: the stem convolution's filters (stage 1), every
    block's second convolution, and the stage's projection shortcut write into it. Each
    block's first convolution is a group of its own. The order of the dropout vector is,
    stage by stage, the stage's residual group followed by its blocks' inner groups::

        stage1, stage1.block0, ..., stage2, stage2.block0, ..., stage3, stage3.block0, ...

    (``resnet8``: 6 groups; ``resnet20``: 12 groups.)

    Where ``drop`` is applied
    -------------------------
    ``drop`` is called on every tensor that *enters* a residual stream: the stem output,
    each block's second batch-norm output and each projection output, each just before the
    addition; and on each block's inner activation. The sum itself is never passed through
    ``drop``. Every term of a stream is therefore scaled by C/k exactly once, and the stream
    is scaled by C/k once, however many blocks it passes: calling ``drop`` on the block
    output instead would rescale the identity path again at every block (C/k to the power
    of the block count). Zeroing commutes with ReLU and addition, so in masked mode every
    stream tensor is zero on its dropped channels, and the masked full network equals the
    sliced sub-network exactly (the convolutions read those zeros where the sub-network
    has no input channel). In training, each batch norm normalises away the scale of its
    input, so the rescaling only affects what the streams and the classifier add up.
    """

    blocks_per_stage: ClassVar[int] = 1
    #: convolutions from the first layer on: build_model rejects flat samples
    images_only: ClassVar[bool] = True

    class Options(ModelOptions):
        width: float = Field(1.0, gt=0, description="multiplier of the stage widths 16/32/64")
        bn_stats: BnStats = bn_stats_field()

    def __init__(self, input_shape: tuple[int, ...], num_classes: int,
                 options: CifarResNet.Options | None = None) -> None:
        super().__init__()
        o = options or self.Options()
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.rescale = o.rescale
        self.bn_stats = o.bn_stats
        widths = [max(1, round(c * o.width)) for c in _STAGE_CHANNELS]
        self.specs = {}
        groups: list[Group] = []
        self.plans: list[_BlockPlan] = []
        self.blocks = nn.ModuleList()

        self._conv_bn("stem", input_shape[0], widths[0], 3, 1, out="stage1", inp=None)
        prev_stage, prev_c = "stage1", widths[0]
        for s, c in enumerate(widths, start=1):
            stage = f"stage{s}"
            groups.append(Group(stage, c))
            for b in range(self.blocks_per_stage):
                plan = _BlockPlan(name=f"blocks.{len(self.plans)}", inner=f"{stage}.block{b}",
                                  stage=stage, stage_in=prev_stage,
                                  stride=2 if (s > 1 and b == 0) else 1,
                                  project=prev_c != c or (s > 1 and b == 0))
                groups.append(Group(plan.inner, c))
                self.blocks.append(nn.Module())
                self._conv_bn(f"{plan.name}.conv1", prev_c, c, 3, plan.stride, out=plan.inner,
                              inp=plan.stage_in)
                self._conv_bn(f"{plan.name}.conv2", c, c, 3, 1, out=stage, inp=plan.inner)
                if plan.project:
                    self._conv_bn(f"{plan.name}.shortcut", prev_c, c, 1, plan.stride, out=stage,
                                  inp=plan.stage_in)
                self.plans.append(plan)
                prev_stage, prev_c = stage, c
        self.groups = tuple(groups)
        self.head = nn.Linear(prev_c, num_classes)
        self.specs["head.weight"] = ParamSpec(inp=prev_stage)
        self.specs["head.bias"] = ParamSpec()
        self._init_weights()
        self.finish_init()

    def _conv_bn(self, name: str, cin: int, cout: int, k: int, stride: int, *, out: str,
                 inp: str | None) -> None:
        """Add ``{name}``: a bias-free k x k conv at ``.conv``, its batch norm at ``.bn``."""
        parent: nn.Module = self
        *path, leaf = name.split(".")
        for part in path:
            parent = parent.get_submodule(part)
        unit = nn.Module()
        unit.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
        parent.add_module(leaf, unit)
        self.specs[f"{name}.conv.weight"] = ParamSpec(out=out, inp=inp)
        add_bn(self, unit, "bn", f"{name}.bn", cout, out)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _conv_bn_fwd(self, x: Tensor, name: str) -> Tensor:
        mod: nn.Conv2d = self.get_submodule(f"{name}.conv")  # type: ignore[assignment]
        y = self.conv(x, f"{name}.conv", stride=mod.stride, padding=mod.padding)
        return self.bn(y, f"{name}.bn")

    def functional(self, x: Tensor) -> Tensor:
        h = self.drop(F.relu(self._conv_bn_fwd(x, "stem")), "stage1")
        for plan in self.plans:
            t = self.drop(F.relu(self._conv_bn_fwd(h, f"{plan.name}.conv1")), plan.inner)
            t = self.drop(self._conv_bn_fwd(t, f"{plan.name}.conv2"), plan.stage)
            if plan.project:
                h = self.drop(self._conv_bn_fwd(h, f"{plan.name}.shortcut"), plan.stage)
            h = F.relu(t + h)  # never drop() the sum: its terms were each rescaled once
        return self.linear(h.mean((2, 3)), "head")


@MODELS.register("resnet8")
class ResNet8(CifarResNet):
    """ResNet-8 for CIFAR: one basic block per stage; groups ``stage1, stage1.block0,
    stage2, stage2.block0, stage3, stage3.block0`` (see :class:`CifarResNet`)."""

    arch = "resnet8"
    blocks_per_stage = 1


@MODELS.register("resnet20")
class ResNet20(CifarResNet):
    """ResNet-20 for CIFAR: three basic blocks per stage; groups ``stage1, stage1.block0..2,
    stage2, stage2.block0..2, stage3, stage3.block0..2`` (see :class:`CifarResNet`)."""

    arch = "resnet20"
    blocks_per_stage = 3
