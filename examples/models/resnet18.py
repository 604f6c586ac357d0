"""A ResNet-18-style network in plain PyTorch (He et al., 2016): a 3x3 stem (the CIFAR
variant: no 7x7 convolution, no max-pooling), four stages of two basic blocks, each
block two 3x3 convolutions with batch norm and an identity shortcut, or a 1x1
convolution + batch norm where a stage changes width and resolution.

Nothing here knows fleetsim: fleetsim derives the droppable groups (each stage's
residual stream is one group, as the additions tie its channels; each block's inner
convolution is another) by tracing it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNet18(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0,
                 blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        widths = [max(1, round(c * width)) for c in (64, 128, 256, 512)][:len(blocks)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, cin = [], widths[0]
        for i, (c, n) in enumerate(zip(widths, blocks)):
            layer = []
            for b in range(n):
                layer.append(BasicBlock(cin, c, 2 if (i > 0 and b == 0) else 1))
                cin = c
            stages.append(nn.Sequential(*layer))
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1)
        return self.fc(out.flatten(1))


def make_net(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0,
             blocks: tuple[int, ...] = (2, 2, 2, 2)) -> ResNet18:
    """The factory fleetsim calls (``model.options.kwargs``: width, blocks)."""
    return ResNet18(input_shape[0], num_classes, width, tuple(blocks))
