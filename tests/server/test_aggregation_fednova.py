"""FedNova's normalised averaging on an example worked by hand.

Wang et al., NeurIPS 2020 (arXiv:2007.07481), eq. (6)-(7): with sample shares p_i over
the devices that trained an element, local steps tau_i and changes d_i = x_i - x,
``x' = x + tau_eff * sum_i p_i d_i / tau_i`` where ``tau_eff = sum_i p_i tau_i``.
Float buffers (batch-norm statistics) are plain weighted averages.
"""

from __future__ import annotations

import torch

from fleetsim.server.aggregation import FedNovaAggregator
from fleetsim.updates import Update


def test_tau_eff_by_hand_with_masks_and_a_buffer() -> None:
    g = {"w": torch.tensor([1.0, 0.0, 2.0, 7.0]), "bn.running_mean": torch.tensor([0.0]),
         "bn.num_batches_tracked": torch.tensor(3)}
    agg = FedNovaAggregator(g, buffers=["bn.running_mean"])
    # device: weight (samples), steps tau, values, trained elements
    agg.add(Update(0, 1.0, {"w": torch.tensor([3.0, 9.0, 2.0, 9.0]),
                            "bn.running_mean": torch.tensor([1.0]),
                            "bn.num_batches_tracked": torch.tensor(0)},
                   {"w": torch.tensor([True, False, True, False])}, steps=1))
    agg.add(Update(1, 2.0, {"w": torch.tensor([-3.0, 8.0, 9.0, 9.0]),
                            "bn.running_mean": torch.tensor([4.0]),
                            "bn.num_batches_tracked": torch.tensor(0)},
                   {"w": torch.tensor([True, True, False, False])}, steps=4))
    agg.add(Update(2, 1.0, {"w": torch.tensor([5.0, 9.0, 6.0, 9.0]),
                            "bn.running_mean": torch.tensor([2.0]),
                            "bn.num_batches_tracked": torch.tensor(0)},
                   {"w": torch.tensor([True, False, True, False])}, steps=2))
    out = agg.result()
    # element 0, devices 0, 1, 2: p = (1/4, 2/4, 1/4); d/tau = (2/1, -4/4, 4/2) = (2, -1, 2)
    #   sum p d/tau = 0.5 - 0.5 + 0.5 = 0.5; tau_eff = 1/4 + 2/4*4 + 1/4*2 = 2.75
    #   x' = 1 + 2.75 * 0.5 = 2.375 (FedAvg: (3 - 6 + 5)/4 = 0.5)
    # element 1, device 1 alone: tau_eff = 4, d/tau = 8/4 -> x' = 0 + 4 * 2 = 8
    # element 2, devices 0 and 2: p = (1/2, 1/2); d/tau = (0, 4/2); tau_eff = 1.5
    #   x' = 2 + 1.5 * 1 = 3.5 (FedAvg: 4)
    # element 3: nobody trained it -> 7
    torch.testing.assert_close(out["w"], torch.tensor([2.375, 8.0, 3.5, 7.0]),
                               rtol=0, atol=1e-6)
    # the buffer: (1*1 + 2*4 + 1*2) / 4 = 2.75; integer buffers are not averaged
    torch.testing.assert_close(out["bn.running_mean"], torch.tensor([2.75]), rtol=0, atol=1e-6)
    assert int(out["bn.num_batches_tracked"]) == 3
