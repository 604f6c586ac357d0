"""Robust aggregation rules against independent numpy implementations (issue 25).

The updates are hand-made: masked sub-network updates (an element's rule runs over the
devices that trained it), ties, and an element nobody trained. The references below are
written from the papers' definitions in plain numpy, element by element, not through
fleetsim's code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fleetsim.server.robust import (
    RULES,
    CollectingAggregator,
    CollectingBuffered,
    Krum,
    MultiKrum,
)
from fleetsim.updates import Update

G = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
     "b": torch.tensor([0.5, -0.5, 0.0]), "n": torch.tensor(3)}
# six devices; w's masks cover rows (channels), b's elements; what a device did not train
# holds other values (99, 7, 8) that no rule may use
XS = [  # (values, w's row masks, b's masks) per device
    ({"w": [[2.0, 2.0], [3.0, 9.0], [5.0, 6.0]], "b": [1.0, 1.0, 0.0]},
     [[1], [1], [0]], [1, 1, 0]),
    ({"w": [[4.0, 0.0], [1.0, 4.0], [5.0, 6.0]], "b": [1.0, 2.0, 0.0]},
     [[1], [1], [0]], [1, 1, 0]),
    ({"w": [[2.0, 7.0], [99.0, -99.0], [5.0, 6.0]], "b": [3.0, 1.0, 0.0]},
     [[1], [0], [0]], [1, 0, 0]),
    ({"w": [[-9.0, 2.0], [8.0, 8.0], [5.0, 6.0]], "b": [1.0, 5.0, 0.0]},
     [[1], [1], [0]], [1, 1, 0]),
    ({"w": [[2.0, 2.0], [0.0, 1.0], [5.0, 6.0]], "b": [7.0, -3.0, 0.0]},
     [[1], [1], [0]], [1, 1, 0]),
    ({"w": [[50.0, 50.0], [3.0, 4.0], [7.0, 7.0]], "b": [9.0, 1.0, 8.0]},
     [[1], [0], [0]], [1, 0, 0]),
]
WEIGHTS = [1.0, 2.0, 1.0, 3.0, 1.0, 2.0]


def updates() -> list[Update]:
    out = []
    for i, ((st, mw, mb), w) in enumerate(zip(XS, WEIGHTS)):
        out.append(Update(i, w, {"w": torch.tensor(st["w"]), "b": torch.tensor(st["b"]),
                                 "n": torch.tensor(0)},
                          {"w": torch.tensor(mw, dtype=torch.bool),
                           "b": torch.tensor(mb, dtype=torch.bool)}, 5))
    return out


def numpy_points() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per tensor: values (n, *shape) and full-shape masks, in numpy."""
    vals = {k: np.array([np.array(st[k], dtype=np.float64) for st, _, _ in XS]) for k in "wb"}
    masks = {"w": np.array([np.broadcast_to(np.array(mw, bool), (3, 2)) for _, mw, _ in XS]),
             "b": np.array([np.array(mb, bool) for _, _, mb in XS])}
    return vals, masks


def run_rule(name: str, **opts: object) -> dict[str, torch.Tensor]:
    cls = RULES.get(name)
    agg = CollectingAggregator(cls(cls.Options(**opts)), G)
    for u in updates():
        assert agg.add(u)
    return agg.result()


def per_element(fn) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    vals, masks = numpy_points()
    out = {}
    for k in "wb":
        g = G[k].numpy().astype(np.float64)
        res = g.copy()
        for idx in np.ndindex(g.shape):
            trained = [vals[k][(i, *idx)] for i in range(len(XS)) if masks[k][(i, *idx)]]
            if trained:
                res[idx] = fn(trained)
        out[k] = res
    return out


def close(got: dict[str, torch.Tensor], want: dict[str, np.ndarray]) -> None:
    for k in "wb":
        np.testing.assert_allclose(got[k].numpy(), want[k], rtol=1e-6, atol=1e-6)
    assert int(got["n"]) == 3  # integer tensors are never aggregated


def test_median_matches_numpy_over_trainers_only() -> None:
    want = per_element(lambda v: float(np.median(v)))
    # by hand, w[0,0]: trained by all six -> values 2,4,2,-9,2,50 -> sorted -9,2,2,2,4,50
    # -> median (2+2)/2 = 2 (a tie); w[1,1]: four trainers 9,4,8,1 -> (4+8)/2 = 6;
    # row 2 and b[2]: nobody trained them -> the global values
    assert want["w"][0, 0] == 2.0 and want["w"][1, 1] == 6.0 and want["w"][2, 1] == 6.0
    close(run_rule("median"), want)


def trimmed(v: list[float], beta: float) -> float:
    s = sorted(v)
    b = math.floor(beta * len(s))
    return float(np.mean(s[b:len(s) - b]))


@pytest.mark.parametrize("beta", [0.0, 0.2, 0.25, 0.4, 0.49])
def test_trimmed_mean_matches_numpy(beta: float) -> None:
    close(run_rule("trimmed_mean", trim=beta), per_element(lambda v: trimmed(v, beta)))


def test_trimmed_mean_by_hand() -> None:
    # w[0,0]: six values, beta 0.2 -> floor(1.2) = 1 cut at each end: mean(2,2,2,4) = 2.5;
    # w[1,0]: four trainers 3,1,8,0 -> floor(0.8) = 0 cut: mean = 3
    out = run_rule("trimmed_mean", trim=0.2)
    assert float(out["w"][0, 0]) == 2.5
    assert float(out["w"][1, 0]) == 3.0


def krum_reference(f: int, m: int) -> dict[str, np.ndarray]:
    """Blanchard et al.: score(i) = sum of squared distances to the n - f - 2 closest other
    updates; the m lowest scores (ties: lower index) averaged with mean's weights."""
    vals, masks = numpy_points()
    g = {k: G[k].numpy().astype(np.float64) for k in "wb"}
    # an untrained element is unchanged: its change is 0
    disp = {k: np.where(masks[k], vals[k] - g[k], 0.0) for k in "wb"}
    flat = np.concatenate([disp["w"].reshape(len(XS), -1), disp["b"].reshape(len(XS), -1)], 1)
    n = len(XS)
    scores = []
    for i in range(n):
        d = sorted(float(((flat[i] - flat[j]) ** 2).sum()) for j in range(n) if j != i)
        scores.append(sum(d[:n - f - 2]))
    chosen = sorted(sorted(range(n), key=lambda i: (scores[i], i))[:m])
    out = {}
    for k in "wb":
        num = sum(WEIGHTS[i] * masks[k][i] * disp[k][i] for i in chosen)
        den = sum(WEIGHTS[i] * masks[k][i] for i in chosen)
        out[k] = g[k] + np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
    return out


def test_krum_matches_numpy() -> None:
    close(run_rule("krum", f=1), krum_reference(1, 1))


@pytest.mark.parametrize("f,m", [(1, 2), (1, 4), (0, 6), (1, 5)])
def test_multi_krum_matches_numpy(f: int, m: int) -> None:
    close(run_rule("multi_krum", f=f, m=m), krum_reference(f, m))


def test_multi_krum_drops_the_outliers() -> None:
    # devices 3 (w[0,0] = -9) and 5 (w[0,:] = 50) are far from the rest: not selected
    rule = MultiKrum(MultiKrum.Options(f=1, m=3))
    agg = CollectingAggregator(rule, G)
    for u in updates():
        agg.add(u)
    chosen = rule.select(agg.points, agg.names)
    assert 3 not in chosen and 5 not in chosen


def test_krum_ties_go_to_the_lower_device() -> None:
    g = {"w": torch.zeros(2)}
    rule = Krum(Krum.Options(f=0))
    agg = CollectingAggregator(rule, g)
    # three identical updates and an outlier: the three tie; the first one wins
    for i, x in enumerate([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [5.0, 5.0]]):
        agg.add(Update(i, float(i + 1), {"w": torch.tensor(x)}, {}, 1))
    assert rule.select(agg.points, agg.names) == [0]


def test_norm_bound_matches_numpy() -> None:
    vals, masks = numpy_points()
    g = {k: G[k].numpy().astype(np.float64) for k in "wb"}
    disp = {k: np.where(masks[k], vals[k] - g[k], 0.0) for k in "wb"}
    bound = 3.0
    want = {}
    scale = []
    for i in range(len(XS)):
        norm = math.sqrt(sum(float((disp[k][i] ** 2).sum()) for k in "wb"))
        scale.append(min(1.0, bound / norm) if norm > 0 else 1.0)
    for k in "wb":
        num = sum(WEIGHTS[i] * masks[k][i] * disp[k][i] * scale[i] for i in range(len(XS)))
        den = sum(WEIGHTS[i] * masks[k][i] for i in range(len(XS)))
        want[k] = g[k] + np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
    close(run_rule("norm_bound", max_norm=bound), want)


def test_krum_with_too_few_updates_keeps_the_model_and_says_so() -> None:
    rule = Krum(Krum.Options(f=2))  # needs n > 2f + 2 = 6: seven updates
    agg = CollectingAggregator(rule, G)
    for u in updates():
        agg.add(u)
    out = agg.result()
    assert agg.skipped
    for k in G:
        assert torch.equal(out[k], G[k])


def test_buffers_are_combined_as_values() -> None:
    g = {"w": torch.tensor([0.0]), "rm": torch.tensor([10.0])}
    cls = RULES.get("median")
    agg = CollectingAggregator(cls(cls.Options()), g, buffers=["rm"])
    for i, (w, rm) in enumerate([(1.0, 1.0), (2.0, 2.0), (9.0, 3.0)]):
        agg.add(Update(i, 1.0, {"w": torch.tensor([w]), "rm": torch.tensor([rm])}, {}, 1))
    out = agg.result()
    assert float(out["w"]) == 2.0 and float(out["rm"]) == 2.0


def test_async_points_are_staleness_weighted_changes_from_their_start() -> None:
    g = {"w": torch.tensor([10.0, 10.0])}
    cls = RULES.get("median")
    agg = CollectingBuffered(cls(cls.Options()), g)
    starts = [torch.tensor([0.0, 0.0]), torch.tensor([4.0, 4.0]), torch.tensor([1.0, 1.0])]
    xs = [torch.tensor([1.0, 3.0]), torch.tensor([6.0, 4.0]), torch.tensor([4.0, 1.0])]
    ws = [1.0, 0.5, 1.0]
    for i, (s, x, w) in enumerate(zip(starts, xs, ws)):
        agg.add(i, Update(i, 1.0, {"w": x}, {}, 1), {"w": s}, w)
    # changes times staleness weights: [1, 3], [1, 0], [3, 0] -> medians 1, 0
    assert agg.result()["w"].tolist() == [11.0, 10.0]


def test_non_finite_updates_are_rejected() -> None:
    cls = RULES.get("median")
    agg = CollectingAggregator(cls(cls.Options()), {"w": torch.zeros(2)})
    assert not agg.add(Update(0, 1.0, {"w": torch.tensor([1.0, math.nan])}, {}, 1))
    assert agg.add(Update(1, 1.0, {"w": torch.tensor([1.0, 2.0])}, {}, 1))
    assert agg.count == 1
