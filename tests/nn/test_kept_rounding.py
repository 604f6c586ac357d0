"""Kept channels: ``max(1, round((1 - d) * C))``, with Python's round (half to even).

Products like ``(1 - 0.8) * 20`` are not exact in binary (3.9999999999999996), so the
count must round, never truncate; and a .5 product goes to the even neighbour. The
numbers below are worked by hand; the model test follows them through slicing, the
parameter count on the wire and the MACs that time a step.
"""

from __future__ import annotations

import pytest

from fleetsim.costs import CostModel
from fleetsim.nn import build_model, select_channels
from fleetsim.nn.slicing import kept_count


@pytest.mark.parametrize(("channels", "d", "kept"), [
    (20, 0.8, 4),    # (1 - 0.8) * 20 = 3.9999999999999996: rounds to 4 (int() would keep 3)
    (10, 0.7, 3),    # (1 - 0.7) * 10 = 3.0000000000000004
    (5, 0.5, 2),     # 2.5: half to even -> 2 (round-half-up would keep 3)
    (7, 0.5, 4),     # 3.5: half to even -> 4 (truncation would keep 3)
    (3, 0.5, 2),     # 1.5 -> 2
    (4, 0.9, 1),     # 0.4 rounds to 0, but a group never vanishes
    (8, 0.0, 8),
])
def test_kept_count_by_hand(channels: int, d: float, kept: int) -> None:
    assert kept_count(channels, d) == kept


def test_twenty_channels_at_0_8_keep_four_through_slicing_bytes_and_macs() -> None:
    # digits MLP 64 -> 20 -> 10; keeping 4 hidden units:
    # params 64*4 + 4 + 4*10 + 10 = 310 (full: 1510); forward MACs 64*4 + 4*10 = 296
    m = build_model("mlp", (64,), 10, {"hidden": [20]})
    keep = select_channels(m.groups, (0.8,), "ordered")
    assert keep is not None and keep["h0"].tolist() == [0, 1, 2, 3]
    costs = CostModel(m)
    assert costs.params((0.8,)) == 310 and costs.params(None) == 1510
    assert costs.timed_forward_macs((0.8,)) == 296
    sub = select_channels(m.groups, (0.5,), "ordered")
    assert sub is not None and len(sub["h0"]) == 10
