"""Device-side transforms against hand computations and their documented statistics."""

from __future__ import annotations

import math

import numpy as np
import torch

from fleetsim.pipeline import UpdatePipeline
from fleetsim.rng import torch_generator
from fleetsim.transforms import QSGD, Chain, Clip, TopK, qsgd, qsgd_bits
from fleetsim.updates import Update


def topk_chain(ratio: float = 0.4) -> Chain:
    return Chain([TopK(TopK.Options(ratio=ratio))], seed=0)


def test_topk_with_error_feedback_three_rounds_by_hand() -> None:
    chain = topk_chain()  # n = 5 entries: k = ceil(0.4 * 5) = 2
    d1 = torch.tensor([0.5, -2.0, 0.125, 1.0, -0.25])
    d2 = torch.tensor([0.25, 0.125, 0.0, -0.125, -0.5])
    d3 = torch.tensor([0.0, 0.125, 0.0, 0.25, 0.0])
    # round 1: the two largest |d1| are -2 (index 1) and 1 (index 3); the rest stays
    assert chain.apply(d1, device=7, key=0).tolist() == [0.0, -2.0, 0.0, 1.0, 0.0]
    assert chain.states.residual[(0, 7)].tolist() == [0.5, 0.0, 0.125, 0.0, -0.25]
    # round 2: d2 + e = [0.75, 0.125, 0.125, -0.125, -0.75] -> indices 0 and 4
    assert chain.apply(d2, device=7, key=1).tolist() == [0.75, 0.0, 0.0, 0.0, -0.75]
    assert chain.states.residual[(0, 7)].tolist() == [0.0, 0.125, 0.125, -0.125, 0.0]
    # round 3: d3 + e = [0, 0.25, 0.125, 0.125, 0] -> index 1, then a tie between 2 and
    # 3 that goes to the lower index
    assert chain.apply(d3, device=7, key=2).tolist() == [0.0, 0.25, 0.125, 0.0, 0.0]
    assert chain.states.residual[(0, 7)].tolist() == [0.0, 0.0, 0.0, 0.125, 0.0]
    # bytes: 2 values of 4 bytes and 2 indices of 4 bytes, against 5 * 4 uncompressed
    assert chain.upload_bytes(20, 4) == 16


def test_topk_residual_is_per_device_and_off_without_error_feedback() -> None:
    chain = topk_chain()
    chain.apply(torch.tensor([0.5, -2.0, 0.125, 1.0, -0.25]), device=1, key=0)
    # device 2's first round sees no residual of device 1
    out = chain.apply(torch.tensor([0.25, 0.125, 0.0, -0.125, -0.5]), device=2, key=0)
    assert out.tolist() == [0.25, 0.0, 0.0, 0.0, -0.5]
    plain = Chain([TopK(TopK.Options(ratio=0.4, error_feedback=False))], seed=0)
    plain.apply(torch.tensor([0.5, -2.0, 0.125, 1.0, -0.25]), device=1, key=0)
    out = plain.apply(torch.tensor([0.25, 0.125, 0.0, -0.125, -0.5]), device=1, key=1)
    assert out.tolist() == [0.25, 0.0, 0.0, 0.0, -0.5] and not plain.states.residual


def test_topk_in_the_pipeline_carries_the_residual_across_rounds() -> None:
    pipe = UpdatePipeline(chain=topk_chain())
    start = {"a": torch.zeros(2), "b": torch.zeros(3)}
    sent = []
    for r, d in enumerate([[0.5, -2.0, 0.125, 1.0, -0.25], [0.25, 0.125, 0.0, -0.125, -0.5],
                           [0.0, 0.125, 0.0, 0.25, 0.0]]):
        x = torch.tensor(d)
        u = Update(3, 1.0, {"a": x[:2], "b": x[2:]}, {}, 1)
        out = pipe.process(u, start, ["a", "b"], r)
        sent.append(torch.cat([out.state["a"], out.state["b"]]).tolist())
    assert sent == [[0.0, -2.0, 0.0, 1.0, 0.0], [0.75, 0.0, 0.0, 0.0, -0.75],
                    [0.0, 0.25, 0.125, 0.0, 0.0]]
    assert pipe.upload_bytes(20) == 16


def test_topk_bytes_fall_with_the_ratio() -> None:
    n = 1_000_000
    chain = topk_chain(0.01)  # 10,000 values + 10,000 indices of 4 bytes
    assert chain.upload_bytes(4 * n, 4) == 80_000
    assert 4 * n / chain.upload_bytes(4 * n, 4) == 50.0


def test_qsgd_is_unbiased_within_its_variance_bound() -> None:
    d, s, draws = 64, 2, 20_000
    v = torch.from_numpy(np.random.default_rng(5).normal(size=d))
    g = torch_generator(0, "test-qsgd")
    qs = torch.stack([qsgd(v, s, d, g) for _ in range(draws)])
    norm = float(torch.linalg.vector_norm(v))
    # every entry is on the grid ||v|| * {-s..s} / s
    levels = qs.abs() * s / norm
    assert torch.allclose(levels, levels.round(), atol=1e-9)
    # unbiased: per entry, z = (mean - v) / (sd / sqrt(draws)) with the exact per-entry
    # variance (||v|| / s)^2 p (1 - p), p = r - floor(r), r = |v_i| s / ||v||
    r = v.abs() * s / norm
    p = r - torch.floor(r)
    sd = (norm / s) * torch.sqrt(p * (1 - p))
    z = (qs.mean(0) - v) / (sd / math.sqrt(draws)).clamp_min(1e-12)
    assert float(z.abs().max()) < 5.0
    # the variance bound (Alistarh et al., Lemma 3.1)
    mse = float(((qs - v) ** 2).sum(1).mean())
    bound = min(d / s**2, math.sqrt(d) / s) * norm**2
    assert 0 < mse <= bound


def test_qsgd_bytes_and_streams() -> None:
    chain = Chain([QSGD(QSGD.Options(levels=7, bucket=100))], seed=3)
    # 1,000 entries: 4 bits each (sign + 3 for levels 0..7) and 10 norms of 4 bytes
    assert qsgd_bits(7) == 4 and qsgd_bits(1) == 2 and qsgd_bits(8) == 5
    assert chain.upload_bytes(4000, 4) == 500 + 40
    d = torch.linspace(-1, 1, 1000)
    a = chain.apply(d, device=1, key=0)
    assert torch.equal(a, chain.apply(d, device=1, key=0))  # keyed: the same draw
    assert not torch.equal(a, chain.apply(d, device=2, key=0))
    assert not torch.equal(a, chain.apply(d, device=1, key=1))


def test_clip_has_the_documented_norm() -> None:
    clip = Chain([Clip(Clip.Options(max_norm=2.0))], seed=0)
    big = torch.tensor([3.0, 4.0])  # norm 5 -> scaled to norm 2
    out = clip.apply(big, 0, 0)
    assert math.isclose(float(torch.linalg.vector_norm(out)), 2.0, rel_tol=1e-6)
    assert torch.allclose(out, big * 0.4)
    small = torch.tensor([0.6, 0.8])  # norm 1: unchanged
    assert torch.equal(clip.apply(small, 0, 0), small)
    assert clip.upload_bytes(8, 4) == 8  # clipping does not change the size


def test_chain_bytes_compose() -> None:
    # top-k 10% then QSGD (3 levels: 3 bits): 100 of 1,000 values, 100 indices, one norm
    chain = Chain([TopK(TopK.Options(ratio=0.1)), QSGD(QSGD.Options(levels=3, bucket=512))], 0)
    assert chain.upload_bytes(4000, 4) == math.ceil(100 * 3 / 8) + 400 + 4
