"""Shared links against hand-computed schedules (docs/network.md works them by hand)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from fleetsim.links import (
    LV08_BANDWIDTH_FACTOR,
    LV08_LATENCY_FACTOR,
    ConstantRate,
    FlowNetwork,
    LinkModel,
    LinkSpec,
    equal_share_finish_s,
    max_min_rates,
)

MB = 1e6
INF = float("inf")


def run_all(net: FlowNetwork) -> dict[int, float]:
    """Advance to the end; flow id -> finish time."""
    out: dict[int, float] = {}
    while (ev := net.next_event()) is not None:
        for f in net.advance(ev.time_s):
            out[f.flow_id] = f.end_s
    return out


@pytest.mark.parametrize("n", [1, 2, 5, 17])
def test_n_equal_flows_on_one_link_end_at_t0_plus_n_s_over_c(n: int) -> None:
    c, s, t0 = 10 * MB, 3 * MB, 7.25
    net = FlowNetwork({"cell": LinkSpec(c)})
    for i in range(n):
        net.start(t0, i, ["cell"], s, INF)
    ends = run_all(net)
    assert sorted(ends) == list(range(n))
    for t in ends.values():
        assert t == pytest.approx(t0 + n * s / c, rel=1e-13)
    assert equal_share_finish_s(t0, n, s, c) == pytest.approx(t0 + n * s / c, rel=1e-15)


def test_three_devices_staggered_the_worked_example() -> None:
    # docs/network.md, "A worked example": C = 10 MB/s; A (30 MB) at 0, B (18 MB) at 1,
    # D (5 MB, own cap 2 MB/s) at 2. Hand schedule: D ends 4.5, B 5.1, A 5.3.
    net = FlowNetwork({"cell": LinkSpec(10 * MB)})
    net.start(0.0, 0, ["cell"], 30 * MB, INF)
    assert net.rate(0) == 10 * MB
    net.start(1.0, 1, ["cell"], 18 * MB, INF)
    assert net.rate(0) == net.rate(1) == 5 * MB
    assert net.sent_bytes(0) == pytest.approx(10 * MB)
    net.start(2.0, 2, ["cell"], 5 * MB, 2 * MB)
    assert (net.rate(0), net.rate(1), net.rate(2)) == (4 * MB, 4 * MB, 2 * MB)
    assert net.sent_bytes(0) == pytest.approx(15 * MB)
    assert net.sent_bytes(1) == pytest.approx(5 * MB)
    ends = run_all(net)
    assert ends[2] == pytest.approx(4.5, rel=1e-13)
    assert ends[1] == pytest.approx(5.1, rel=1e-13)
    assert ends[0] == pytest.approx(5.3, rel=1e-13)
    carried, busy = net.link_stats()["cell"]
    assert carried == pytest.approx(53 * MB, rel=1e-12)  # the link was full all along
    assert busy == pytest.approx(5.3, rel=1e-13)


def test_a_slower_own_link_is_capped_and_the_others_share_the_rest() -> None:
    # C = 12 MB/s; device 0 own 2 MB/s (10 MB), devices 1, 2 unbounded (30 MB each):
    # rates 2, 5, 5 until 0 ends at 5 s (1, 2 have 5 MB left), then 6, 6: end 5 + 5/6.
    net = FlowNetwork({"cell": LinkSpec(12 * MB)})
    net.start(0.0, 0, ["cell"], 10 * MB, ConstantRate(2 * MB))
    net.start(0.0, 1, ["cell"], 30 * MB, INF)
    net.start(0.0, 2, ["cell"], 30 * MB, 100 * MB)
    assert [net.rate(i) for i in range(3)] == [2 * MB, 5 * MB, 5 * MB]
    ends = run_all(net)
    assert ends[0] == pytest.approx(5.0, rel=1e-13)
    assert ends[1] == ends[2] == pytest.approx(5.0 + 5.0 / 6.0, rel=1e-13)


def test_two_shared_links_in_series() -> None:
    # L1 = 10, L2 = 6 MB/s. X crosses both (6 MB), Y only L1 (21 MB), Z only L2 (9 MB).
    # Level 3 saturates L2: X = Z = 3; Y gets L1's rest, 7. X ends at 2; then Z alone on
    # L2 (3 MB left at 6): 2.5; Y alone on L1 (7 MB left at 10): 2.7.
    net = FlowNetwork({"L1": LinkSpec(10 * MB), "L2": LinkSpec(6 * MB)})
    net.start(0.0, 10, ["L1", "L2"], 6 * MB, INF)
    net.start(0.0, 11, ["L1"], 21 * MB, INF)
    net.start(0.0, 12, ["L2"], 9 * MB, INF)
    assert [net.rate(i) for i in (10, 11, 12)] == [3 * MB, 7 * MB, 3 * MB]
    ends = run_all(net)
    assert ends[10] == pytest.approx(2.0, rel=1e-13)
    assert ends[12] == pytest.approx(2.5, rel=1e-13)
    assert ends[11] == pytest.approx(2.7, rel=1e-13)


def test_a_device_going_offline_frees_its_share_at_that_instant() -> None:
    # C = 10 MB/s, two flows of 50 MB from 0; flow 0 is removed at 2 s (10 MB moved);
    # flow 1 had 10 MB by 2 s and gets 10 MB/s from then: ends at 2 + 40/10 = 6 s.
    net = FlowNetwork({"cell": LinkSpec(10 * MB)})
    net.start(0.0, 0, ["cell"], 50 * MB, INF)
    net.start(0.0, 1, ["cell"], 50 * MB, INF)
    assert net.advance(2.0) == []
    assert net.remove(2.0, 0) == pytest.approx(10 * MB, rel=1e-13)
    assert net.rate(1) == 10 * MB
    assert net.active() == [1]
    ends = run_all(net)
    assert ends == {1: pytest.approx(6.0, rel=1e-13)}


FLOWS = [  # (start, id, path, bytes, own cap)
    (0.0, 0, ["a"], 7.3 * MB, INF), (0.0, 1, ["a", "b"], 3.1 * MB, 1.7 * MB),
    (0.0, 2, ["b"], 5.9 * MB, 2.9 * MB), (0.0, 3, ["a"], 1.3 * MB, 0.37 * MB),
    (0.0, 4, ["a", "b"], 9.7 * MB, INF), (1.5, 5, ["b"], 2.2 * MB, 1.1 * MB),
    (1.5, 6, ["a"], 4.4 * MB, INF), (1.5, 7, ["a", "b"], 0.9 * MB, 0.33 * MB),
]


def _schedule(order: list[int], removal_first: bool) -> tuple[dict[int, float], float]:
    net = FlowNetwork({"a": LinkSpec(9.1 * MB), "b": LinkSpec(4.3 * MB)})
    by_time: dict[float, list[int]] = {}
    for k in order:
        by_time.setdefault(FLOWS[k][0], []).append(k)
    ends: dict[int, float] = {}
    moved = 0.0
    for t in sorted(by_time):
        for f in net.advance(t):
            ends[f.flow_id] = f.end_s
        ks = by_time[t]
        if t == 1.5 and removal_first:
            moved = net.remove(t, 2)
        for k in ks:
            _, fid, path, nbytes, own = FLOWS[k]
            net.start(t, fid, list(reversed(path)) if k % 2 else path, nbytes, own)
        if t == 1.5 and not removal_first:
            moved = net.remove(t, 2)
    while (ev := net.next_event()) is not None:
        for f in net.advance(ev.time_s):
            ends[f.flow_id] = f.end_s
    return ends, moved


def test_the_answer_does_not_depend_on_event_order() -> None:
    ref = _schedule(list(range(len(FLOWS))), False)
    assert len(ref[0]) == len(FLOWS) - 1  # flow 2 was removed
    rng = random.Random(4)
    orders = [list(range(len(FLOWS)))[::-1]] + [rng.sample(range(len(FLOWS)), len(FLOWS))
                                                 for _ in range(20)]
    for order, first in itertools.product(orders, (False, True)):
        assert _schedule(order, first) == ref  # the same bits, not merely close


def test_max_min_rates_by_hand() -> None:
    # one link of 10 with caps 1, 2, inf, inf: 1, 2, 3.5, 3.5
    r = max_min_rates([np.array([0])] * 4, np.array([1.0, 2.0, INF, INF]), np.array([10.0]))
    assert r.tolist() == [1.0, 2.0, 3.5, 3.5]
    # a cap above the fair share does not bind: caps 4, inf on 6 -> 3, 3
    r = max_min_rates([np.array([0])] * 2, np.array([4.0, INF]), np.array([6.0]))
    assert r.tolist() == [3.0, 3.0]
    with pytest.raises(ValueError, match="no link"):
        max_min_rates([np.array([], np.int64)], np.array([INF]), np.array([1.0]))


def test_a_varying_own_rate_changes_the_rates_at_its_breakpoints() -> None:
    class Steps:  # 1 MB/s until 4 s, 3 MB/s until 6 s, then 0.5 MB/s
        def rate_bytes_per_s(self, t: float) -> float:
            return (1 * MB) if t < 4.0 else (3 * MB) if t < 6.0 else 0.5 * MB

        def next_change_s(self, t: float) -> float:
            return 4.0 if t < 4.0 else 6.0 if t < 6.0 else INF

    # link 4 MB/s; flow 0 capped by Steps (10 MB), flow 1 unbounded (20 MB).
    # 0-4 s: rates 1, 3 -> 6 MB and 8 MB left. 4-6 s: fair share 2 each (the cap 3 does
    # not bind) -> 2 and 4 left. From 6 s: 0.5 and 3.5: flow 1 ends at 6 + 4/3.5; flow 0
    # moves 0.5 MB/s all along from 6 s: its 2 MB end at 10 s.
    net = FlowNetwork({"cell": LinkSpec(4 * MB)})
    net.start(0.0, 0, ["cell"], 10 * MB, Steps())
    net.start(0.0, 1, ["cell"], 20 * MB, INF)
    assert net.next_event() == (4.0, 0, "rate")
    ends = run_all(net)
    assert ends[1] == pytest.approx(6.0 + 4.0 / 3.5, rel=1e-13)
    assert ends[0] == pytest.approx(10.0, rel=1e-13)


def test_flows_ending_together_are_reported_by_id() -> None:
    # caps inf and 2.5 MB/s on 10 MB/s: all four at 2.5 MB/s, 5 MB each: all end at 2 s
    net = FlowNetwork({"cell": LinkSpec(10 * MB)})
    for i in (3, 1, 2, 0):
        net.start(0.0, i, ["cell"], 5 * MB, 2.5 * MB if i % 2 else INF)
    out = net.advance(10.0)
    assert [f.flow_id for f in out] == [0, 1, 2, 3]
    assert [f.end_s for f in out] == pytest.approx([2.0] * 4, rel=1e-15)


def test_latency_and_lv08_options() -> None:
    # latency on: 0.1 + 0.2 s before the flow shares; 10 MB at 5 MB/s -> 0.3 + 2 s
    links = {"a": LinkSpec(5 * MB, 0.1), "b": LinkSpec(50 * MB, 0.2)}
    net = FlowNetwork(links, LinkModel(latency=True))
    net.start(0.0, 0, ["a", "b"], 10 * MB, INF)
    assert net.rate(0) == 0.0
    assert run_all(net) == {0: pytest.approx(2.3, rel=1e-13)}
    # off by default: latencies ignored
    net = FlowNetwork(links)
    net.start(0.0, 0, ["a", "b"], 10 * MB, INF)
    assert run_all(net) == {0: pytest.approx(2.0, rel=1e-13)}
    # LV08: latency x 13.01, capacity x 0.97, window cap 4 MiB / (2 x 0.3 x 13.01)
    net = FlowNetwork(links, LinkModel.lv08())
    net.start(0.0, 0, ["a", "b"], 10 * MB, INF)
    lat = 0.3 * LV08_LATENCY_FACTOR
    rate = min(5 * MB * LV08_BANDWIDTH_FACTOR, 4194304.0 / (2 * lat))
    assert rate == 4194304.0 / (2 * lat)  # the window binds on this path
    assert run_all(net) == {0: pytest.approx(lat + 10 * MB / rate, rel=1e-13)}


def test_bad_calls_are_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        LinkSpec(0.0)
    with pytest.raises(ValueError, match="capacity"):
        LinkSpec(-1.0)
    net = FlowNetwork({"a": LinkSpec(1.0)})
    with pytest.raises(ValueError, match="no link named 'x'"):
        net.start(0.0, 0, ["x"], 1.0, INF)
    net.advance(2.0)
    with pytest.raises(ValueError, match="before"):
        net.advance(1.0)


def test_many_capped_flows_at_one_instant_give_the_same_bits_in_any_order() -> None:
    # distinct own caps: their sums round differently in another order unless the
    # network sorts flows (without sorting, about half of these orders differ in bits)
    rng = random.Random(1)
    caps = [rng.uniform(0.1 * MB, 0.9 * MB) for _ in range(12)] + [INF] * 3
    sizes = [rng.uniform(1 * MB, 5 * MB) for _ in range(15)]

    def schedule(order: list[int]) -> dict[int, float]:
        net = FlowNetwork({"a": LinkSpec(9.1 * MB), "b": LinkSpec(4.3 * MB)})
        for k in order:
            net.start(0.0, k, ["a"] if k % 3 else ["a", "b"], sizes[k], caps[k])
        return run_all(net)

    ref = schedule(list(range(15)))
    for s in range(30):
        order = list(range(15))
        random.Random(s).shuffle(order)
        assert schedule(order) == ref


def test_many_groups_take_the_array_path_and_agree_with_the_small_one() -> None:
    from fleetsim.links import _fill, _fill_small

    rng = np.random.default_rng(3)
    for _ in range(50):
        n, m = int(rng.integers(1, 40)), int(rng.integers(1, 5))
        paths = [tuple(sorted(set(rng.integers(0, m, int(rng.integers(1, m + 1))).tolist())))
                 for _ in range(n)]
        own = np.where(rng.random(n) < 0.3, INF, rng.uniform(0.1, 5.0, n))
        cap = rng.uniform(1.0, 20.0, m)
        size = rng.integers(1, 4, n).astype(float)
        inc = np.zeros((n, m), dtype=bool)
        for i, p in enumerate(paths):
            inc[i, list(p)] = True
        big = _fill(inc, own, cap, size)
        small = _fill_small(paths, own.tolist(), cap.tolist(), size.tolist())
        assert big.tolist() == pytest.approx(small, rel=1e-12)
        # feasible and max-min: no link over capacity, every flow capped or bottlenecked
        load = (big * size) @ inc
        assert np.all(load <= cap * (1 + 1e-12))
    # 30 flows with distinct caps through the network (30 groups: the array path)
    caps = np.linspace(0.1, 0.9, 30) * MB
    net = FlowNetwork({"a": LinkSpec(9 * MB)})
    for i, c in enumerate(caps):
        net.start(0.0, i, ["a"], 1 * MB, float(c))
    want = max_min_rates([np.array([0])] * 30, caps, np.array([9 * MB]))
    assert [net.rate(i) for i in range(30)] == pytest.approx(want.tolist(), rel=1e-15)
    assert sum(want) == pytest.approx(9 * MB)  # the link is full: sum of caps is 15 MB


def test_a_cap_that_returns_to_an_earlier_value_rejoins_cleanly() -> None:
    class Back:  # 1 MB/s, 0.5 MB/s from 4 s, 1 MB/s again from 6 s
        def rate_bytes_per_s(self, t: float) -> float:
            return 0.5 * MB if 4.0 <= t < 6.0 else 1 * MB

        def next_change_s(self, t: float) -> float:
            return 4.0 if t < 4.0 else 6.0 if t < 6.0 else INF

    # no contention (10 MB/s): flow 0 (12 MB) moves 4 by 4 s, 1 more by 6 s, the last 7
    # at 1 MB/s: ends at 13 s (its first stay in the 1 MB/s group would have ended it at
    # 12 s: that entry, under flow 1's, must lapse); flow 1 (constant 1 MB/s, 10 MB)
    # shares flow 0's group before 4 s and after 6 s and ends at 10 s
    net = FlowNetwork({"a": LinkSpec(10 * MB)})
    net.start(0.0, 0, ["a"], 12 * MB, Back())
    net.start(0.0, 1, ["a"], 10 * MB, 1 * MB)
    net.advance(5.0)
    assert net.sent_bytes(0) == pytest.approx(4.5 * MB) and net.rate(0) == 0.5 * MB
    assert run_all(net) == {0: pytest.approx(13.0, rel=1e-13),
                            1: pytest.approx(10.0, rel=1e-13)}


def test_completions_met_inside_start_are_not_lost() -> None:
    net = FlowNetwork({"a": LinkSpec(1 * MB)})
    net.start(0.0, 0, ["a"], 1 * MB, INF)  # ends at 1 s
    net.start(5.0, 1, ["a"], 2 * MB, ConstantRate(1 * MB))  # start moves past 1 s
    assert net.advance(5.0) == [(0, 1.0, 1 * MB)]
    net.remove(6.0, 1)
    assert net.advance(7.0) == [] and net.active() == []
    # a source that never changes is a constant: equal caps share one group
    net.start(7.0, 2, ["a"], 1 * MB, ConstantRate(0.25 * MB))
    net.start(7.0, 3, ["a"], 1 * MB, 0.25 * MB)
    net.rate(2)
    assert len(net._groups) == 1


def test_a_flow_ending_within_rounding_of_an_advance_is_reported_not_lost() -> None:
    # found by a random search: the flow's end lies one ulp after t, but its progress at
    # t already reaches its bytes; it used to be popped from its group and never
    # reported (its device then sat until the cutoff and counted as late)
    cap, t0, nbytes, own = (1546803.005475732, 0.6438499789158003, 9813207.467960723,
                            11907098.293435972)
    net = FlowNetwork({"a": LinkSpec(cap)})
    net.advance(t0)
    net.start(t0, 1, ["a"], nbytes, own)
    t_end = t0 + nbytes / cap
    ev = net.next_event()
    assert ev is not None and ev.time_s == pytest.approx(t_end, rel=1e-15)
    t = float(np.nextafter(ev.time_s, -INF))
    done = net.advance(t)
    if done:  # reported at t, one ulp before its exact end
        assert done == [(1, t, nbytes)] and net.active() == []
    else:  # or still active, with its completion ahead
        assert net.active() == [1] and run_all(net) == {1: ev.time_s}


def test_no_flow_is_lost_on_advances_just_short_of_its_end() -> None:
    rng = random.Random(1)
    for _ in range(600):
        cap, t0 = rng.uniform(1e3, 1e7), rng.uniform(0, 100)
        nbytes, own = rng.uniform(1e3, 1e7), rng.uniform(1e3, 1e8)
        net = FlowNetwork({"a": LinkSpec(cap)})
        net.advance(t0)
        net.start(t0, 1, ["a"], nbytes, own)
        ev = net.next_event()
        assert ev is not None
        done = net.advance(float(np.nextafter(ev.time_s, -INF)))
        rest = run_all(net)
        assert len(done) + len(rest) == 1 and net.active() == []
