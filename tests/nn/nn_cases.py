"""Tiny instances of every registered architecture, and their plain (module) forwards.

Shared by the tests of this folder (imported as a plain module: pytest puts this folder
on ``sys.path``).

The plain forwards call the ``nn`` modules directly, the way a textbook PyTorch model
would: they are the independent reference for the functional full-network path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fleetsim.nn import MODELS, DroppableNet, build_model

# arch -> (input shape, classes, options); small enough for a fast CPU run, yet every
# group has several channels so that all selection modes drop something
TINY: dict[str, tuple[tuple[int, ...], int, dict[str, Any]]] = {
    "mlp": ((1, 6, 6), 5, {"hidden": (8, 6)}),
    "cnn4": ((1, 8, 8), 5, {"channels": (4, 6, 8, 8), "norm": "bn"}),
    "femnist_cnn": ((1, 8, 8), 7, {"channels": (4, 6), "hidden": 10}),
    "mcmahan_cnn": ((1, 12, 12), 4, {"channels": (5, 6), "hidden": 9}),
    "resnet8": ((3, 8, 8), 5, {"width": 0.5}),
    "resnet20": ((3, 8, 8), 3, {"width": 0.25}),
}
# extra variants that exercise other code paths (no BN, no rescale)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "cnn4-nobn": ("cnn4", {"channels": (4, 6, 8, 8), "norm": "none"}),
    "resnet8-norescale": ("resnet8", {"width": 0.5, "rescale": False}),
    "femnist-norescale": ("femnist_cnn", {"channels": (4, 6), "hidden": 10, "rescale": False}),
}
ALL_CASES = sorted(TINY) + sorted(VARIANTS)


def make(case: str, seed: int = 0) -> DroppableNet:
    """A freshly initialised tiny model, in training mode."""
    arch, opts = VARIANTS.get(case, (case, TINY.get(case, (None, None, {}))[2]))
    shape, classes, base_opts = TINY[arch]
    torch.manual_seed(seed)
    model = build_model(arch, shape, classes, {**base_opts, **opts})
    return model.train()


def batch(model: DroppableNet, n: int = 4, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *model.input_shape), generator=g)
    y = torch.randint(0, model.num_classes, (n,), generator=g)
    return x, y


# -- plain forwards: the nn modules called directly ------------------------------------------

def _plain_mlp(m: Any, x: Tensor) -> Tensor:
    h = x.flatten(1)
    for layer in m.layers:
        h = F.relu(layer(h))
    return m.head(h)


def _plain_cnn4(m: Any, x: Tensor) -> Tensor:
    h = x
    for i, conv in enumerate(m.convs):
        h = conv(h)
        if m.use_bn:
            h = m.bns[i](h)
        h = F.relu(h)
        if i % 2 == 1:
            h = F.max_pool2d(h, 2)
    return m.head(h.flatten(1))


def _plain_two_conv(m: Any, x: Tensor) -> Tensor:
    h = F.max_pool2d(F.relu(m.conv1(x)), 2)
    h = F.max_pool2d(F.relu(m.conv2(h)), 2)
    return m.head(F.relu(m.fc1(h.flatten(1))))


def _plain_resnet(m: Any, x: Tensor) -> Tensor:
    h = F.relu(m.stem.bn(m.stem.conv(x)))
    for plan, blk in zip(m.plans, m.blocks):
        t = F.relu(blk.conv1.bn(blk.conv1.conv(h)))
        t = blk.conv2.bn(blk.conv2.conv(t))
        if plan.project:
            h = blk.shortcut.bn(blk.shortcut.conv(h))
        h = F.relu(t + h)
    return m.head(h.mean((2, 3)))


PLAIN: dict[str, Callable[[Any, Tensor], Tensor]] = {
    "mlp": _plain_mlp, "cnn4": _plain_cnn4, "femnist_cnn": _plain_two_conv,
    "mcmahan_cnn": _plain_two_conv, "resnet8": _plain_resnet, "resnet20": _plain_resnet,
}


def registered() -> list[str]:
    # 'user' wraps the user's own network: its cases are the plain networks of
    # user_nets.py and examples/models/ (tests/nn/test_user.py, tests/nn/test_trace.py)
    return [n for n in MODELS.names() if n != "user"]
