"""``fleet.traces.streams: counter``: the same traces lazily, prefetched, or from a file;
the same run with and without prefetching; clear errors where it does not apply."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetsim.build import build, load_scenario
from fleetsim.errors import UserError
from fleetsim.fleet import Fleet
from fleetsim.traces import FileTraces, GeneratedTraces, read_traces
from fleetsim.traces.generators import GENERATORS
from tests.test_scale import FLEET

OPTS = {"levels": [1.0, 0.5, 0.2], "mean_dwell_s": 300, "mean_offline_s": 900}


def counter_source(n: int = 40, cache_size: int = 4096) -> GeneratedTraces:
    cls = GENERATORS.get("markov")
    return GeneratedTraces(cls(cls.Options(**OPTS)), "markov", n, 86400.0, seed=3,
                           cache_size=cache_size, streams="counter")


def same_trace(a, b) -> bool:  # type: ignore[no-untyped-def]
    return all(getattr(a, s).tobytes() == getattr(b, s).tobytes() if hasattr(
        getattr(a, s), "tobytes") else getattr(a, s) == getattr(b, s)
        for s in a.__slots__)


def test_prefetched_lazy_and_file_traces_are_the_same(tmp_path: Path) -> None:
    src = counter_source()
    assert src.batched and src.meta["streams"] == "counter"
    lazy = counter_source()
    src.prefetch([5, 9, 5, 30])  # duplicates are made once
    assert set(src._cache) == {5, 9, 30}
    for i in (30, 9, 5):
        assert same_trace(src.device(i), lazy.device(i))  # one by one, in another order
    path = tmp_path / "t.h5"
    lazy.write(path, chunk_devices=7)
    ft = FileTraces(path)
    try:
        for i in range(40):
            a, b = lazy.signals(i), ft.signals(i)
            for x, y in zip((a.avail_t, a.avail_v, a.online_t, a.online_v),
                            (b.avail_t, b.avail_v, b.online_t, b.online_v)):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    finally:
        ft.close()
    read_traces(path)  # the file validates: counter traces keep the format


def test_counter_traces_differ_from_device_streams_and_by_seed() -> None:
    dev = GeneratedTraces.from_name("markov", OPTS, 40, 86400.0, seed=3)
    other = GeneratedTraces.from_name("markov", OPTS, 40, 86400.0, seed=4, streams="counter")
    c = counter_source()
    assert not np.array_equal(c.signals(0).avail_t, dev.signals(0).avail_t)
    assert not np.array_equal(c.signals(0).avail_t, other.signals(0).avail_t)


def test_prefetch_never_evicts_its_own_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    """A prefetch of more devices than the cache holds makes only as many as fit (the
    first ones), so using them does not make any again."""
    src = counter_source(400, cache_size=50)
    made: list[int] = []
    real = GeneratedTraces._batch
    monkeypatch.setattr(GeneratedTraces, "_batch",
                        lambda self, d: (made.append(len(d)), real(self, d))[1])
    src.prefetch(range(300))
    assert made == [50] and list(src._cache) == list(range(50))
    for i in range(50):
        src.device(i)
    assert made == [50]
    assert src._cached_bytes == sum(t.nbytes for t in src._cache.values())


def test_online_checks_skip_devices_whose_signal_is_cached() -> None:
    src = counter_source(100, cache_size=10)
    for i in range(30):
        src.online_at(i, 5.0)  # online signals of 0..29 cached, traces of 20..29 only
    src.prefetch(range(40), online_only=True)
    assert set(src._cache) == set(range(30, 40))
    src.prefetch([5], online_only=False)  # a full trace is needed: made
    assert 5 in src._cache


def test_big_batches_are_made_in_parts_with_the_same_bits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from fleetsim.traces import batch, counter

    g = GENERATORS.get("markov")(GENERATORS.get("markov").Options(**OPTS))
    k = counter.key(3, "trace-counter")
    whole = batch.make(g, np.arange(60), 86400.0, k)
    monkeypatch.setattr(batch, "MAX_BLOCK", 4000)  # ~9 rows a part
    parts = batch.make(g, np.arange(60), 86400.0, k)
    for i in range(60):
        a, b = whole.row(i), parts.row(i)
        for x, y in zip((a.avail_t, a.avail_v, a.online_t, a.online_v),
                        (b.avail_t, b.avail_v, b.online_t, b.online_v)):
            assert np.array_equal(x, y)


def test_a_generator_without_a_counter_form_is_refused_through_the_api() -> None:
    cls = GENERATORS.get("bursty")
    with pytest.raises(ValueError, match="bursty"):
        GeneratedTraces(cls(cls.Options()), "bursty", 10, 3600.0, seed=0, streams="counter")


def test_devices_outside_the_fleet_are_refused() -> None:
    with pytest.raises(IndexError):
        counter_source().prefetch([3, 40])
    with pytest.raises(IndexError):
        counter_source().signals(-1)


def scenario(*overrides: str):  # type: ignore[no-untyped-def]
    return load_scenario(None, ["fleet.traces.streams=counter", *overrides],
                         text=FLEET.format(devices=3000, rounds=6, per_round=40))


def rows(log) -> list[tuple]:  # type: ignore[no-untyped-def]
    return [(o.device, o.round, o.status, o.t_end, o.macs, o.steps) for o in log.timeline]


@pytest.mark.parametrize("candidates", ["permutation", "draws"])
def test_a_run_is_the_same_with_and_without_prefetching(
        candidates: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefetching only makes traces sooner: the same devices are checked in the same
    order and get the same traces, so selection and the timeline are unchanged."""
    sets = (f"selector.options.candidates={candidates}",)
    with_prefetch = build(scenario(*sets))
    asked: list[int] = []
    real = Fleet.prefetch
    monkeypatch.setattr(Fleet, "prefetch", lambda self, d, online_only=False: (
        asked.append(len(d)), real(self, d, online_only))[1])
    a = with_prefetch.engine.run()
    assert asked and max(asked) <= 40 * 5 // 4 + 8  # about as many as still needed
    monkeypatch.setattr(Fleet, "prefetch", lambda self, d, online_only=False: None)
    b = build(scenario(*sets)).engine.run()
    assert rows(a) == rows(b) and len(rows(a)) == 6 * 40
    assert [r["t_end_s"] for r in a.rounds] == [r["t_end_s"] for r in b.rounds]


def test_device_streams_stay_the_default_and_unchanged() -> None:
    sc = load_scenario(None, [], text=FLEET.format(devices=300, rounds=2, per_round=10))
    assert sc.fleet.traces.streams == "device"
    built = build(sc)
    assert not built.engine.fleet.batched


@pytest.mark.parametrize(("sets", "why"), [
    (["fleet.traces.generator=diurnal", "fleet.traces.options={}"], "diurnal"),
    (["fleet.traces.options={levels: [1.0, {dist: uniform, low: 0.2, high: 0.5}]}"],
     "distribution"),
])
def test_counter_streams_where_they_do_not_apply_are_a_clear_error(
        sets: list[str], why: str) -> None:
    with pytest.raises(UserError) as e:
        build(scenario(*sets))
    msg = str(e.value)
    assert "fleet.traces.streams" in msg and why in msg and "Allowed" in msg


def test_counter_streams_with_a_trace_file_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "t.h5"
    counter_source(3000).write(path)
    with pytest.raises(UserError) as e:
        build(scenario(f"fleet.traces.file={path}"))
    assert "fleet.traces.streams" in str(e.value) and "generated" in str(e.value)


def test_an_unknown_streams_value_is_refused_with_its_key_path() -> None:
    with pytest.raises(UserError, match=r"fleet\.traces\.streams"):
        load_scenario(None, ["fleet.traces.streams=fast"],
                      text=FLEET.format(devices=30, rounds=1, per_round=2))


def test_an_async_run_is_the_same_with_and_without_prefetching(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sets = ("server.mode=async", "server.concurrency=30", "server.buffer_size=10",
            "selector.options.candidates=draws")
    asked: list[int] = []
    real = Fleet.prefetch
    monkeypatch.setattr(Fleet, "prefetch", lambda self, d, online_only=False: (
        asked.append(len(d)), real(self, d, online_only))[1])
    a = build(scenario(*sets)).engine.run()
    assert asked
    monkeypatch.setattr(Fleet, "prefetch", lambda self, d, online_only=False: None)
    b = build(scenario(*sets)).engine.run()
    assert rows(a) == rows(b) and len(rows(a)) > 6 * 10
