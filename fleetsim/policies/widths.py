"""Widths per device class, shared by the sub-model policies (HeteroFL, FedRolex, FjORD).

A *width* ``r`` in (0, 1] keeps the share ``r`` of the channels of every droppable group,
i.e. ``r * C`` of a group's ``C`` channels, rounded by the policy's ``rounding``:
``ceil`` (HeteroFL's, FedRolex's and FjORD's code), ``floor`` or ``nearest``; never fewer
than one. The dropout vector then holds, per group, ``1 - k / C`` for the ``k`` kept, so
:func:`fleetsim.nn.slicing.kept_count` (which rounds ``(1 - d) * C`` to the nearest) keeps
exactly ``k`` and the cost model times exactly those channels. ``nearest`` is the uniform
vector ``(1 - r, ..., 1 - r)`` itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import Field

from fleetsim.errors import UserError
from fleetsim.policies.base import PolicyContext, Vector

#: a width option: the share of channels kept, in (0, 1]
Width = Annotated[float, Field(gt=0.0, le=1.0)]
#: how ``width * channels`` becomes a count of kept channels
Rounding = Literal["ceil", "floor", "nearest"]


def rounding_field(default: Rounding, source: str) -> Any:
    return Field(default, description="kept channels of a group of C at width r: ceil(r C), "
                 f"floor(r C) or nearest (at least 1); the default is {source}")


def kept_of(channels: int, width: float, rounding: Rounding) -> int:
    """Channels kept of ``channels`` at ``width`` under ``rounding`` (at least one)."""
    x = width * channels
    # the tolerances keep float error from moving a count: 0.3 * 10 = 3.0000000000000004
    # is 3 channels under ceil, and 0.7 * 10 = 6.999999999999999 is 7 under floor
    k = {"ceil": math.ceil(x - 1e-9), "floor": math.floor(x + 1e-9),
         "nearest": round(x)}[rounding]
    return max(1, min(channels, k))


def drop_vector(groups: Sequence[tuple[str, int]], width: float,
                rounding: Rounding = "nearest") -> Vector | None:
    """The dropout vector of a uniform width; None for the full model (width 1).

    ``groups`` are (name, channels) pairs (:attr:`PolicyContext.groups`).
    """
    if width >= 1.0:
        return None
    if rounding == "nearest":  # the historical vector, bit for bit
        return (1.0 - width,) * len(groups)
    return tuple(1.0 - kept_of(c, width, rounding) / c for _, c in groups)


def step_share(ctx: PolicyContext, width: float, rounding: Rounding = "nearest") -> float:
    """MACs of one mini-batch at ``width``, relative to the full model (overhead included)."""
    zero = (0.0,) * len(ctx.groups)
    full = ctx.costs.step_macs(zero, ctx.batch_size)
    vec = drop_vector(ctx.groups, width, rounding) or zero
    return ctx.costs.step_macs(vec, ctx.batch_size) / full


def fitting_width(ctx: PolicyContext, device_class: int, levels: Sequence[float],
                  rounding: Rounding = "nearest") -> float:
    """The largest of ``levels`` that a class can train in the fastest class's time.

    A fleetsim choice (the papers give widths per client by hand): a class whose peak is
    ``s`` times the fastest class's gets the largest level whose per-mini-batch MACs are at
    most ``s`` times the full model's, so every class does its local steps in about the
    time the fastest one needs for the full model. If none fits, the smallest level.
    """
    speed = ctx.class_peaks[device_class] / max(ctx.class_peaks)
    fits = [w for w in levels if step_share(ctx, w, rounding) <= speed * (1.0 + 1e-9)]
    return max(fits) if fits else min(levels)


def class_widths(ctx: PolicyContext, given: Mapping[str, float] | None,
                 levels: Sequence[float], key_path: str,
                 rounding: Rounding = "nearest") -> tuple[float, ...]:
    """Width of every device class: ``given[name]``, else :func:`fitting_width`.

    Raises
    ------
    UserError
        when ``given`` names a class the fleet does not have
    """
    given = dict(given or {})
    unknown = sorted(set(given) - set(ctx.class_names))
    if unknown:
        raise UserError(f"at '{key_path}': unknown device class {unknown[0]!r}. Allowed: the "
                        f"fleet's class names: {', '.join(ctx.class_names)}.")
    return tuple(given[name] if name in given else fitting_width(ctx, k, levels, rounding)
                 for k, name in enumerate(ctx.class_names))
