"""DP-FedAvg's noise (its std) and the epsilon reported (the accountant library's own)."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from fleetsim.server.privacy import NoisyMean, epsilon
from fleetsim.updates import Update


def noisy(weights: list[float], z: float, clip: float, n: int = 200_000,
          masks: list[torch.Tensor | None] | None = None) -> tuple[NoisyMean, torch.Tensor]:
    g = {"w": torch.zeros(n)}
    agg = NoisyMean(g, (), z, clip, seed=0, key=3)
    plain = torch.zeros(n)
    for i, w in enumerate(weights):
        x = torch.full((n,), float(i))
        m = None if masks is None else masks[i]
        agg.add(Update(i, w, {"w": x}, {} if m is None else {"w": m}, 1))
        plain += w * x
    return agg, plain / sum(weights)


def test_noise_std_equal_weights_is_z_s_over_n() -> None:
    agg, mean = noisy([1.0] * 4, z=1.5, clip=2.0)
    out = agg.result()["w"]
    assert math.isclose(agg.sigma, 1.5 * 2.0 / 4)  # McMahan et al.: z S / n
    noise = out - mean
    assert abs(float(noise.std()) / agg.sigma - 1) < 0.01
    assert abs(float(noise.mean())) < 4 * agg.sigma / math.sqrt(noise.numel())


def test_noise_std_follows_the_largest_weight_share() -> None:
    agg, _ = noisy([1.0, 3.0], z=1.0, clip=1.0)
    agg.result()
    assert math.isclose(agg.sigma, 1.0 * 1.0 * 3.0 / 4.0)


def test_noise_std_with_sub_network_masks() -> None:
    # element e's denominator is the weight of its trainers: device 1 alone trains the
    # second half, so it can move those elements by its whole (clipped) change
    n = 1000
    half = torch.arange(n) < n // 2
    agg, _ = noisy([1.0, 1.0], z=1.0, clip=1.0, n=n, masks=[half, None])
    agg.result()
    assert math.isclose(agg.sigma, 1.0)


def test_noise_stream_is_keyed() -> None:
    a, _ = noisy([1.0, 1.0], 1.0, 1.0, n=100)
    b, _ = noisy([1.0, 1.0], 1.0, 1.0, n=100)
    assert torch.equal(a.result()["w"], b.result()["w"])


@pytest.mark.parametrize("z,q,steps,delta", [(1.1, 0.01, 1000, 1e-5), (0.8, 0.3, 4, 1e-3),
                                             (2.0, 0.1, 30, 1e-6)])
def test_epsilon_is_the_accountants_own(z: float, q: float, steps: int, delta: float) -> None:
    acc = RDPAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=z, sample_rate=q)
    assert epsilon(z, q, steps, delta) == pytest.approx(acc.get_epsilon(delta), rel=1e-12)
    # and the library's analysis functions, called directly
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    eps, _ = get_privacy_spent(orders=orders, rdp=compute_rdp(q=q, noise_multiplier=z,
                                                              steps=steps, orders=orders),
                               delta=delta)
    assert epsilon(z, q, steps, delta) == pytest.approx(float(eps), rel=1e-9)
    assert epsilon(z, q, 0, delta) == 0.0
