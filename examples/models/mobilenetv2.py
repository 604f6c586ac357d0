"""A MobileNetV2-style CNN in plain PyTorch (Sandler et al., 2018): inverted residual
blocks of a 1x1 expansion, a 3x3 depthwise convolution and a linear 1x1 projection, with
an identity shortcut where a block keeps resolution and width.

Nothing here knows fleetsim: ``model: {arch: user, options: {factory:
"mobilenetv2.py:make_net"}}`` trains it, and dropout policies cut it into sub-networks
along the channel groups fleetsim derives from it.
"""

from __future__ import annotations

from torch import Tensor, nn


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                       nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),  # depthwise
            nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),  # linear bottleneck
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """``blocks``: (expansion t, output channels c, repeats n, first stride s) per stage,
    as in Table 2 of the paper; ``width`` scales every channel count."""

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0,
                 stem: int = 32, last: int = 1280,
                 blocks: tuple[tuple[int, int, int, int], ...] = (
                     (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                     (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))) -> None:
        super().__init__()

        def w(c: int) -> int:
            return max(1, round(c * width))

        cin = w(stem)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, cin, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(cin), nn.ReLU6(inplace=True)]
        for t, c, n, s in blocks:
            for i in range(n):
                layers.append(InvertedResidual(cin, w(c), s if i == 0 else 1, t))
                cin = w(c)
        layers += [nn.Conv2d(cin, w(last), 1, bias=False), nn.BatchNorm2d(w(last)),
                   nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(w(last), num_classes))

    def forward(self, x: Tensor) -> Tensor:
        h = self.pool(self.features(x))
        return self.classifier(h.view(h.size(0), -1))


def make_net(input_shape: tuple[int, ...], num_classes: int, **options: object) -> MobileNetV2:
    """The factory fleetsim calls: the dataset's shape and classes, plus the scenario's
    ``model.options.kwargs`` (width, stem, last, blocks)."""
    if "blocks" in options:  # YAML gives lists
        options["blocks"] = tuple(tuple(b) for b in options["blocks"])  # type: ignore[union-attr]
    return MobileNetV2(input_shape[0], num_classes, **options)  # type: ignore[arg-type]
