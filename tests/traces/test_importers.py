"""Importers: FedScale pickles of the real shape, and CSV with line-numbered errors."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from fleetsim.build import load_scenario
from fleetsim.errors import UserError
from fleetsim.traces import DeviceTrace, read_traces
from fleetsim.traces.importers import (
    capacity_classes,
    import_csv,
    import_fedscale_behave,
    write_with_ids,
)

PERIOD = 518400.0


def _pickle(path: Path, obj: object) -> Path:
    with path.open("wb") as f:
        pickle.dump(obj, f)
    return path


def _behave(path: Path) -> Path:
    rec = {"duration": 1000, "finish_time": PERIOD, "model": "SM-G930F"}
    return _pickle(path, {
        # client ids as FedScale has them (ints, not in order)
        12: {**rec, "active": [100.0, 5000.0], "inactive": [200.0, 6000.0]},
        3: {**rec, "active": [], "inactive": []},  # never online
        7: {**rec, "active": [PERIOD - 100.0], "inactive": [PERIOD + 50.0]},  # runs past the end
        9: {**rec, "active": [PERIOD - 10.0], "inactive": [20.0]},  # ends before it starts
        5: {**rec, "active": [0.0, 300.0], "inactive": [50.0]},  # last runs to the end
    })


def fedscale_is_active(rec: dict, t: float) -> bool:
    """FedScale's rule (client.is_active): ``active[i] <= t % finish_time <= inactive[i]``
    for some i (a missing last inactive: up to finish_time). The reference the importer is
    checked against."""
    norm = t % rec["finish_time"]
    ends = list(rec["inactive"]) + [rec["finish_time"]] * (len(rec["active"]) -
                                                           len(rec["inactive"]))
    return any(a <= norm <= b for a, b in zip(rec["active"], ends))


def test_fedscale_behave_intervals_as_fedscale_sees_them(tmp_path: Path) -> None:
    ts, ids = import_fedscale_behave(_behave(tmp_path / "client_behave_trace"))
    assert ids == [3, 5, 7, 9, 12]
    assert ts.period_s == PERIOD and ts.horizon_s == PERIOD
    on = {cid: ts.online.device(k) for k, cid in enumerate(ids)}
    assert on[3][0].tolist() == [0.0] and on[3][1].tolist() == [0]
    assert on[12][0].tolist() == [0.0, 100.0, 200.0, 5000.0, 6000.0]
    assert on[12][1].tolist() == [0, 1, 0, 1, 0]
    # past finish_time: cut there (t % finish_time never gets beyond), not wrapped to 0
    assert on[7][0].tolist() == [0.0, PERIOD - 100.0] and on[7][1].tolist() == [0, 1]
    # inactive before active: FedScale's active <= t <= inactive never holds
    assert on[9][0].tolist() == [0.0] and on[9][1].tolist() == [0]
    assert on[5][0].tolist() == [0.0, 50.0, 300.0] and on[5][1].tolist() == [1, 0, 1]
    rep = ts.meta["import_report"]
    assert rep["clipped_at_finish_time"] == 1 and rep["end_before_start"] == 1
    assert rep["open_last_interval"] == 1 and rep["never_online_clients"] == 2
    assert rep["start_at_or_after_finish_time"] == 0 and rep["inexact_wrap_clients"] == 0
    # availability 1 while online; the online signal as FedScale's is_active sees it
    tr = DeviceTrace(*ts.availability.device(2), *ts.online.device(2), PERIOD)  # client 7
    assert tr.online_at(PERIOD - 5) and tr.online_at(3 * PERIOD - 50)
    assert not tr.online_at(PERIOD + 30) and tr.availability_at(7.0) == 1.0


def test_fedscale_behave_file_round_trip_with_ids(tmp_path: Path) -> None:
    ts, ids = import_fedscale_behave(_behave(tmp_path / "b.pkl"), availability=0.5,
                                     skip_never_online=True)
    assert ids == [5, 7, 12]  # 3 has no interval, 9 none that FedScale would see
    out = tmp_path / "fedscale.h5"
    write_with_ids(out, ts, ids)
    back = read_traces(out)
    assert back.n_devices == 3 and back.period_s == PERIOD
    assert np.all(back.availability.value == 0.5)
    assert "FedScale" in back.meta["source"] and back.meta["clients_in_file"] == 5
    assert back.meta["import_report"]["skipped_clients"] == 2
    with h5py.File(out) as f:
        assert [x.decode() for x in f["client_id"][:]] == ["5", "7", "12"]
    assert not list(tmp_path.glob("*.import"))


def test_fedscale_behave_rejects_bad_records(tmp_path: Path) -> None:
    p = _pickle(tmp_path / "bad.pkl", {1: {"finish_time": 100, "active": [1, 2],
                                           "inactive": [5, 6, 7]}})
    with pytest.raises(UserError, match=r"bad\.pkl: at client 1: 2 active times but 3"):
        import_fedscale_behave(p)
    p.write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="cannot be unpickled"):
        import_fedscale_behave(p)


def test_fedscale_behave_honours_each_clients_finish_time(tmp_path: Path) -> None:
    recs = {
        "a": {"finish_time": 100.0, "active": [10.0], "inactive": [20.0]},
        "b": {"finish_time": 300.0, "active": [0.0], "inactive": [50.0]},
        "c": {"finish_time": 120.0, "active": [100.0], "inactive": [110.0]},
    }
    ts, ids = import_fedscale_behave(_pickle(tmp_path / "f.pkl", recs))
    assert ids == ["a", "b", "c"] and ts.period_s == 300.0  # the largest finish_time
    on = {cid: ts.online.device(k) for k, cid in enumerate(ids)}
    # a repeats its 100 s cycle three times within the file's 300 s period
    assert on["a"][0].tolist() == [0.0, 10.0, 20.0, 110.0, 120.0, 210.0, 220.0]
    assert on["a"][1].tolist() == [0, 1, 0, 1, 0, 1, 0]
    assert on["b"][0].tolist() == [0.0, 50.0] and on["b"][1].tolist() == [1, 0]
    # c: 120 s does not divide 300 s; two whole cycles, then 60 s of a third (offline)
    assert on["c"][0].tolist() == [0.0, 100.0, 110.0, 220.0, 230.0]
    assert ts.meta["import_report"]["inexact_wrap_clients"] == 1
    # against FedScale's own rule: everywhere for a and b (their cycles divide 300 s), and
    # within the first period for c (after it, c restarts at phase 0, FedScale at phase 60)
    rng = np.random.default_rng(0)
    for k, cid in enumerate(ids):
        tr = DeviceTrace(*ts.availability.device(k), *ts.online.device(k), ts.period_s)
        span = 5 * 300.0 if cid != "c" else 300.0
        for t in rng.uniform(0, span, 500):
            assert tr.online_at(float(t)) == fedscale_is_active(recs[cid], float(t)), (cid, t)
    # a longer --period-s: every client follows its own cycle exactly up to it
    ts, _ = import_fedscale_behave(tmp_path / "f.pkl", period_s=600.0)
    tr = DeviceTrace(*ts.availability.device(2), *ts.online.device(2), 600.0)
    assert ts.meta["import_report"]["inexact_wrap_clients"] == 0
    for t in rng.uniform(0, 3000, 500):
        assert tr.online_at(float(t)) == fedscale_is_active(recs["c"], float(t)), t


def test_fedscale_behave_reports_irregular_intervals(tmp_path: Path) -> None:
    recs = {
        1: {"finish_time": 100.0, "active": [10.0, 90.0], "inactive": [20.0, 130.0]},
        2: {"finish_time": 100.0, "active": [30.0, 100.0, 150.0], "inactive": [40.0, 110.0,
                                                                                160.0]},
        3: {"finish_time": 100.0, "active": [50.0, 70.0], "inactive": [40.0]},
        4: {"finish_time": 50.0, "active": [40.0], "inactive": [60.0]},  # repeats twice
    }
    ts, ids = import_fedscale_behave(_pickle(tmp_path / "r.pkl", recs))
    on = {cid: ts.online.device(k) for k, cid in enumerate(ids)}
    assert on[1][0].tolist() == [0.0, 10.0, 20.0, 90.0] and on[1][1].tolist() == [0, 1, 0, 1]
    assert on[2][0].tolist() == [0.0, 30.0, 40.0] and on[2][1].tolist() == [0, 1, 0]
    assert on[3][0].tolist() == [0.0, 70.0] and on[3][1].tolist() == [0, 1]
    # cut at its own 50 s before it repeats: not [40, 60) overlapping the next cycle
    assert on[4][0].tolist() == [0.0, 40.0, 50.0, 90.0] and on[4][1].tolist() == [0, 1, 0, 1]
    assert ts.meta["import_report"] == {
        "clipped_at_finish_time": 2, "start_at_or_after_finish_time": 2,
        "end_before_start": 1, "open_last_interval": 1, "inexact_wrap_clients": 0,
        "never_online_clients": 0, "skipped_clients": 0}
    out = tmp_path / "r.h5"
    write_with_ids(out, ts, ids)
    assert read_traces(out).meta["import_report"]["start_at_or_after_finish_time"] == 2


REC = {"finish_time": 100.0, "active": [10.0], "inactive": [20.0], "duration": 5}


@pytest.mark.parametrize(("data", "period_s", "needles"), [
    ({4: {**REC, "active": [-1.0]}}, None, ["client 4", "'active'[0]", "-1", "negative"]),
    ({4: {**REC, "active": [1.0, 5.0], "inactive": [2.0, -3.0]}}, None,
     ["client 4", "'inactive'[1]", "negative"]),
    ({4: {k: v for k, v in REC.items() if k != "inactive"}}, None,
     ["client 4", "'inactive'", "missing"]),
    ({4: {k: v for k, v in REC.items() if k != "active"}}, None,
     ["client 4", "'active'", "missing"]),
    ({4: {k: v for k, v in REC.items() if k != "finish_time"}}, None,
     ["client 4", "'finish_time'", "missing"]),
    ({4: {**REC, "finish_time": 0}}, None, ["client 4", "'finish_time'", "0"]),
    ({4: {**REC, "finish_time": "soon"}}, None, ["client 4", "'finish_time'"]),
    ({4: {**REC, "inactive": [math.inf]}}, None, ["client 4", "'inactive'", "finite"]),
    ({4: REC, 5: {**REC, "finish_time": 200.0}}, 150.0,
     ["--period-s 150", "client 5", "'finish_time'", "200"]),
    ({1: REC, "1": REC}, None, ["1", "'1'", "same", "text"]),
    ({4: [1, 2]}, None, ["client 4", "is a list"]),
])
def test_fedscale_behave_errors_name_file_client_and_key(
        tmp_path: Path, data: dict, period_s: float | None, needles: list[str]) -> None:
    p = _pickle(tmp_path / "behave.pkl", data)
    with pytest.raises(UserError) as exc:
        import_fedscale_behave(p, period_s=period_s)
    msg = str(exc.value)
    assert msg.startswith(f"{p}: ") and "Allowed:" in msg and "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def _capacity(path: Path) -> Path:
    rng = np.random.default_rng(0)
    ms = rng.lognormal(np.log(50), 0.8, 400)  # ms per sample
    kbps = rng.lognormal(np.log(5000), 0.5, 400)
    data = {i: {"computation": float(ms[i]), "communication": float(kbps[i])} for i in range(400)}
    data[400] = {"computation": 0.0, "communication": 10.0}  # unusable: skipped
    return _pickle(path, data)


def test_fedscale_capacity_to_classes_snippet(tmp_path: Path) -> None:
    res = capacity_classes(_capacity(tmp_path / "client_device_capacity"), n_classes=4,
                           ref_macs_per_sample=1e8)
    assert res.n_clients == 400 and res.skipped == 1
    doc = yaml.safe_load(res.yaml())
    classes = doc["classes"]
    assert [c["share"] for c in classes] == [0.25] * 4
    speeds = [c["peak_macs_per_s"] for c in classes]
    assert speeds == sorted(speeds, reverse=True)
    with (tmp_path / "client_device_capacity").open("rb") as f:
        raw = pickle.load(f)
    ms = np.sort([r["computation"] for r in raw.values() if r["computation"] > 0])
    # fastest quarter: geometric mean of 1e8 MACs / (ms / 1000)
    expect = math.exp(np.mean(np.log(1e8 / (ms[:100] / 1000))))
    assert classes[0]["peak_macs_per_s"] == pytest.approx(expect, rel=1e-5)
    assert all(c["uplink_mbps"] == c["downlink_mbps"] > 0.5 for c in classes)
    # the snippet drops straight into a scenario
    text = "fleet:\n  devices: 20\n" + "".join("  " + line + "\n" for line in
                                                res.yaml().splitlines())
    sc = load_scenario(None, ["training.mode=timing"], text=text)
    assert len(sc.fleet.classes) == 4


def test_csv_import_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("device,t_s,availability,online\n"
                 "0,0,1.0,1\n0,10,0.5,1\n0,20,0.5,0\n"
                 "4,0,0.25,1\n")
    ts, ids = import_csv(p, period_s=30.0)
    assert ids == [0, 4] and ts.n_devices == 2
    t, v = ts.availability.device(0)
    assert t.tolist() == [0.0, 10.0] and v.tolist() == [1.0, 0.5]  # repeated value dropped
    t, v = ts.online.device(0)
    assert t.tolist() == [0.0, 20.0] and v.tolist() == [1, 0]
    write_with_ids(tmp_path / "t.h5", ts, ids)
    assert read_traces(tmp_path / "t.h5").period_s == 30.0


@pytest.mark.parametrize(("rows", "line", "needle"), [
    ("0,0,1\n0,5,0.5\n1,0,0.5\n0,9,1\n", 5, "not sorted by device"),
    ("0,0,1\n0,5,0.5\n0,5,0.7\n", 4, "not increasing"),
    ("0,0,1\n0,5,1.5\n", 3, "availability 1.5 out of range"),
    ("0,0,1\n0,5,-0.1\n", 3, "availability -0.1 out of range"),
    ("0,3,1\n", 2, "first row of device 0 is at t_s=3"),
    ("0,0,1\n0,x,1\n", 3, "not numeric"),
    ("0,0,1\n0,4\n", 3, "2 fields"),
])
def test_csv_rejects_bad_rows_naming_file_and_line(tmp_path: Path, rows: str, line: int,
                                                   needle: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("device,t_s,availability\n" + rows)
    with pytest.raises(UserError) as exc:
        import_csv(p)
    msg = str(exc.value)
    assert f"{p}: line {line}:" in msg and needle in msg and "Allowed:" in msg


def test_csv_rejects_bad_online_and_header(tmp_path: Path) -> None:
    p = tmp_path / "o.csv"
    p.write_text("device,t_s,availability,online\n0,0,1,2\n")
    with pytest.raises(UserError, match=r"o\.csv: line 2: online 2"):
        import_csv(p)
    p.write_text("dev,time,avail\n0,0,1\n")
    with pytest.raises(UserError, match=r"o\.csv: line 1: header"):
        import_csv(p)
    p.write_text("device,t_s,availability\n0,0,1\n0,50,1\n")
    with pytest.raises(UserError, match="line 3: t_s=50 at or past the period 40"):
        import_csv(p, period_s=40)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"period_s": math.nan}, "--period-s nan"),
    ({"period_s": math.inf}, "--period-s inf"),
    ({"period_s": -5.0}, "--period-s -5"),
    ({"horizon_s": math.nan}, "--horizon-s nan"),
    ({"horizon_s": 0.0}, "--horizon-s 0"),
    ({"period_s": 100.0, "horizon_s": 50.0}, "--horizon-s 50"),
])
def test_csv_rejects_bad_period_and_horizon(tmp_path: Path, kwargs: dict, needle: str) -> None:
    p = tmp_path / "t.csv"
    p.write_text("device,t_s,availability\n0,0,1\n0,10,0.5\n")
    with pytest.raises(UserError, match=needle):
        import_csv(p, **kwargs)


@pytest.mark.parametrize("kwargs", [{"ref_macs_per_sample": math.nan},
                                    {"ref_macs_per_sample": math.inf},
                                    {"down_up_ratio": math.nan}, {"latency_s": math.nan},
                                    {"latency_s": math.inf}])
def test_capacity_rejects_non_finite_options(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(UserError, match="finite"):
        capacity_classes(_capacity(tmp_path / "cap.pkl"), **kwargs)
