"""Plain PyTorch networks for the user-model tests, loaded by file path as a user's would.

``cnn4`` and ``resnet`` are fleetsim's built-in ``cnn4`` and ``resnet8``/``resnet20``
written as ordinary modules, with the built-ins' parameter names, so that the groups the
tracer derives can be compared with the hand-written ones. The others hold constructs
the tracer must refuse.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CNN4(nn.Module):
    def __init__(self, cin: int, classes: int, channels: tuple[int, ...], side: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        prev = cin
        for c in channels:
            self.convs.append(nn.Conv2d(prev, c, 3, padding=1))
            self.bns.append(nn.BatchNorm2d(c))
            prev = c
        self.head = nn.Linear(prev * (side // 4) ** 2, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for i in range(4):
            h = F.relu(self.bns[i](self.convs[i](h)))
            if i % 2 == 1:
                h = F.max_pool2d(h, 2)
        return self.head(torch.flatten(h, 1))


def make_cnn4(input_shape: tuple[int, ...], num_classes: int,
              channels: tuple[int, ...] = (4, 6, 8, 8)) -> CNN4:
    return CNN4(input_shape[0], num_classes, tuple(channels), input_shape[1])


class ConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, project: bool) -> None:
        super().__init__()
        self.conv1 = ConvBN(cin, cout, 3, stride)
        self.conv2 = ConvBN(cout, cout, 3, 1)
        self.project = project
        if project:
            self.shortcut = ConvBN(cin, cout, 1, stride)

    def forward(self, h: Tensor) -> Tensor:
        t = self.conv2(F.relu(self.conv1(h)))
        return F.relu(t + (self.shortcut(h) if self.project else h))


class ResNet(nn.Module):
    """The CIFAR ResNet of fleetsim.nn.resnet, blocks in one flat list like there."""

    def __init__(self, cin: int, classes: int, widths: tuple[int, ...], per_stage: int) -> None:
        super().__init__()
        self.stem = ConvBN(cin, widths[0], 3, 1)
        self.blocks = nn.ModuleList()
        prev = widths[0]
        for s, c in enumerate(widths):
            for b in range(per_stage):
                first = s > 0 and b == 0
                self.blocks.append(Block(prev, c, 2 if first else 1, prev != c or first))
                prev = c
        self.head = nn.Linear(prev, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.stem(x))
        for blk in self.blocks:
            h = blk(h)
        return self.head(h.mean((2, 3)))


def make_resnet(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0,
                per_stage: int = 1) -> ResNet:
    widths = tuple(max(1, round(c * width)) for c in (16, 32, 64))
    return ResNet(input_shape[0], num_classes, widths, per_stage)


# -- constructs the tracer must refuse ---------------------------------------------------

class Shuffle(nn.Module):
    """ShuffleNet's channel shuffle between two convolutions."""

    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(x)
        n, c, hh, ww = h.shape
        h = h.view(n, 2, c // 2, hh, ww).transpose(1, 2).reshape(n, c, hh, ww)
        return self.fc(self.conv2(h).mean((2, 3)))


class Branchy(nn.Module):
    """Control flow on a tensor's value."""

    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, 4, 3, padding=1)
        self.fc = nn.Linear(4, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        if h.sum() > 0:
            h = F.relu(h)
        return self.fc(h.mean((2, 3)))


class Grouped(nn.Module):
    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv2(F.relu(self.conv1(x))).mean((2, 3)))


class ChannelMean(nn.Module):
    """A mean over channels: every output mixes all of conv1's channels."""

    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 8, 3, padding=1)
        self.fc = nn.Linear(1, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv1(x).mean((1, 2, 3)).unsqueeze(1))


class TrainingFlag(nn.Module):
    """F.dropout(training=self.training): fixed when traced."""

    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 8, 3, padding=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = F.dropout(F.relu(self.conv1(x)), 0.5, training=self.training)
        return self.fc(h.mean((2, 3)))


class Concat(nn.Module):
    """Two branches concatenated into one convolution (not supported yet)."""

    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(cin, 4, 3, padding=1)
        self.b = nn.Conv2d(cin, 6, 3, padding=1)
        self.conv = nn.Conv2d(10, 8, 3, padding=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], dim=1)
        return self.fc(self.conv(h).mean((2, 3)))


class ConcatAtOutput(nn.Module):
    """A concatenation that only the output reads: nothing to cut, so it is fine."""

    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(cin, 4, 3, padding=1)
        self.fc1 = nn.Linear(4, 2)
        self.fc2 = nn.Linear(4, classes - 2)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.a(x)).mean((2, 3))
        return torch.cat([self.fc1(h), self.fc2(h)], dim=1)


def make(input_shape: tuple[int, ...], num_classes: int, kind: str) -> nn.Module:
    return globals()[kind](input_shape[0], num_classes)  # type: ignore[no-any-return]


def not_a_module(input_shape: tuple[int, ...], num_classes: int) -> int:
    return 3


def wrong_output(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), 2))


def broken(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    raise RuntimeError("out of ideas")


class ModeBranch(nn.Module):
    """A Python branch on self.training: traced in training mode, fixed forever."""

    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 8, 3, padding=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv1(x))
        if self.training:
            h = h * 0.5
        return self.fc(h.mean((2, 3)))


class PlainCNN(nn.Module):
    """No batch norm, no buffers: what batched training accepts."""

    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        return self.fc(F.relu(self.conv2(h)).flatten(1))


class Depthwise(nn.Module):
    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.fc = nn.Linear(4, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.relu(self.dw(F.relu(self.conv1(x)))).mean((2, 3)))


class Shared(nn.Module):
    """One convolution applied twice (shared weights)."""

    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(F.relu(self.conv2(F.relu(self.conv1(x)))))
        return self.fc(h.mean((2, 3)))


class Dense(nn.Module):
    """DenseNet-style concatenations: into a convolution, and flattened into the head
    (without DenseNet's batch norm of the concatenation, which is refused)."""

    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(cin, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 6, 3, padding=1)
        self.c = nn.Conv2d(10, 5, 3, padding=1)
        self.fc = nn.Linear((4 + 6 + 5) * 4, classes)

    def forward(self, x: Tensor) -> Tensor:
        ha = F.relu(self.a(x))
        h = torch.cat([ha, F.relu(self.b(ha))], dim=1)
        z = torch.cat([h, F.relu(self.c(h))], 1)
        return self.fc(F.max_pool2d(z, 4).flatten(1))


class NormOfConcat(nn.Module):
    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(cin, 4, 3, padding=1)
        self.b = nn.Conv2d(cin, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn(torch.cat([self.a(x), self.b(x)], 1))
        return self.fc(F.relu(h).mean((2, 3)))
