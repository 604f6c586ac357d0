"""The value a device's training hands to the server: one update.

It lives below both its producer (:mod:`fleetsim.training`) and its consumer
(:mod:`fleetsim.server.aggregation`), so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Update:
    """One device's contribution, as the aggregator sees it.

    Attributes
    ----------
    device : device id (updates must arrive in increasing order)
    weight : aggregation weight (sample count)
    state : the device's model after local training (parameters and float buffers)
    masks : per tensor, which elements it trained (missing name or None: all of them)
    steps : local mini-batches done (for FedNova)
    """

    device: int
    weight: float
    state: Mapping[str, Tensor]
    masks: Mapping[str, Tensor | None]
    steps: int
