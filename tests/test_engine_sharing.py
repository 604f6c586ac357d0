"""The engine with shared links (max-min fair, SimPy processes): hand schedules.

Training is made negligible (1e15 MAC/s) and the model's bytes S are read from a run, so
times are the transfers' alone; downloads are nearly free (1e6 Mbit/s), uploads share
the server's access link of capacity C.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetsim.build import build, load_scenario
from fleetsim.errors import UserError

SHARED = """
name: shared
seed: 1
data: {{dataset: digits, partition: {{name: iid}}}}
model: {{arch: mlp, options: {{hidden: [8]}}}}
fleet:
  devices: {n}
  assignment: blocks
  classes:
{classes}
  traces: {{file: {traces}}}
  network:
    sharing: max_min
    server_link: {{up_mbps: {cap}, down_mbps: 1.0e6}}
training:
  mode: timing
  rounds: 1
  clients_per_round: {n}
  deadline_s: null
  local_steps: 1
  batch_size: 16
selector: {{name: random}}
"""


def _classes(up_mbps: list[float]) -> str:
    share = 1.0 / len(up_mbps)
    return "\n".join(f"    - {{name: c{i}, share: {share!r}, peak_macs_per_s: 1.0e15, "
                     f"uplink_mbps: {u!r}, downlink_mbps: 1.0e6, latency_s: 0.0}}"
                     for i, u in enumerate(up_mbps))


def run(tmp_path: Path, write_trace_file, up_mbps: list[float], cap: float,  # type: ignore[no-untyped-def]
        online: list | None = None, extra: tuple[str, ...] = ()):
    from tests.conftest import make_traces

    n = len(up_mbps)
    write_trace_file("t.h5", make_traces([([0.0], [1.0])] * n, online, horizon_s=1.0e5))
    (tmp_path / "s.yaml").write_text(SHARED.format(n=n, classes=_classes(up_mbps),
                                                   traces="t.h5", cap=cap))
    return build(load_scenario(tmp_path / "s.yaml", list(extra))).engine.run()


def test_n_equal_uploads_over_one_shared_link_end_at_n_s_over_c(tmp_path: Path,
                                                                 write_trace_file) -> None:  # type: ignore[no-untyped-def]
    cap_mbps = 8.0  # C = 1e6 bytes/s
    log = run(tmp_path, write_trace_file, [100.0] * 4, cap_mbps)
    s = log.timeline[0].bytes_up
    ends = [o.t_end for o in log.timeline]
    assert all(o.status == "completed" for o in log.timeline)
    # the timeline's transfer times: each upload took the whole n S / C
    assert [o.up_s for o in log.timeline] == pytest.approx([4 * s / 1e6] * 4, abs=1e-4)
    from fleetsim.results import timeline_arrays

    assert "up_s" in timeline_arrays(log) and log.world == frozenset({"sharing"})
    # every device starts its upload at ~0 (download and training take < 1e-5 s)
    assert ends == pytest.approx([4 * s / 1e6] * 4, abs=1e-4)
    assert max(ends) - min(ends) < 1e-9  # equal shares end together
    assert 0.99 < log.rounds[0]["link_busy_share"] <= 1.0


def test_a_slower_own_link_is_capped_and_the_others_share_the_rest(tmp_path: Path,
                                                                   write_trace_file) -> None:  # type: ignore[no-untyped-def]
    # C = 1e6 B/s; device 0's own uplink is 2 Mbit/s = 0.25e6 B/s < C/3: it is capped,
    # the other two share 0.75e6 B/s (0.375e6 each) until they end, then device 0 is
    # still capped by its own link
    log = run(tmp_path, write_trace_file, [2.0, 100.0, 100.0], 8.0)
    s = log.timeline[0].bytes_up
    by = {o.device: o.t_end for o in log.timeline}
    assert by[1] == pytest.approx(s / 0.375e6, abs=1e-4)
    assert by[2] == pytest.approx(s / 0.375e6, abs=1e-4)
    assert by[0] == pytest.approx(s / 0.25e6, abs=1e-4)


def test_a_device_going_offline_mid_upload_frees_its_share_at_that_instant(
        tmp_path: Path, write_trace_file) -> None:  # type: ignore[no-untyped-def]
    # two devices share C = 1e6 B/s; device 0 goes offline at t_off, half way through
    # what its upload would need; from then device 1 has the whole link
    probe = run(tmp_path, write_trace_file, [100.0, 100.0], 8.0)
    s = probe.timeline[0].bytes_up
    t_off = 0.5 * s / 0.5e6  # device 1 has moved s/2 by then
    log = run(tmp_path, write_trace_file, [100.0, 100.0], 8.0,
              online=[([0.0, t_off], [1, 0]), ([0.0], [1])], extra=("training.rounds=2",))
    by = {o.device: o for o in log.timeline if o.round == 0}
    # the next round starts when device 1's upload ends (the network woke then)
    assert log.rounds[1]["t_start_s"] == by[1].t_end
    assert by[0].status == "dropped" and by[0].t_end == t_off
    assert abs(by[0].bytes_up - s / 2) <= 2
    # device 1: s/2 by t_off at C/2, the other half at C
    assert by[1].t_end == pytest.approx(t_off + (s / 2) / 1e6, abs=1e-4)


def test_sharing_refuses_what_it_does_not_combine_with(tmp_path: Path,
                                                       write_trace_file) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserError) as e:
        run(tmp_path, write_trace_file, [100.0, 100.0], 8.0,
            extra=("server.mode=async", "server.concurrency=2", "server.buffer_size=2"))
    assert "fleet.network.sharing" in str(e.value) and "async" in str(e.value)
    # a battery with per-byte radio energy: its power during a shared transfer is unknown
    per_byte = ("energy: {full_load_w: 1.0, joules_per_byte_up: 1.0e-6, battery: "
                "{capacity_j: 100.0}}")
    with pytest.raises(UserError) as e:
        run(tmp_path, write_trace_file, [100.0, 100.0], 8.0,
            extra=(f"fleet.classes.0.energy={{{per_byte[len('energy: {'):-1]}}}",))
    assert "fleet.network.sharing" in str(e.value) and "per byte" in str(e.value)


def test_staggered_starts_by_hand(tmp_path: Path, write_trace_file) -> None:  # type: ignore[no-untyped-def]
    """C = 1000 B/s; uploads of S bytes start at t = 0, 1 and 2 (training takes 0, 1 and
    2 s). [0,1): A alone, 1000 B/s; [1,2): A and B, 500 each; from 2: 333.3 each, so A
    ends at 2 + 3 (S - 1500) / 1000; B has 1000 left then and ends 2 s later at 500 B/s;
    C has 1500 - 1000 = 500 left then, alone at 1000 B/s: 0.5 s more."""
    from tests.conftest import make_traces
    from tests.test_engine_faults import one_step_macs

    macs = one_step_macs()
    classes = "\n".join(
        f"    - {{name: c{i}, share: {1 / 3!r}, peak_macs_per_s: {p!r}, uplink_mbps: 100.0, "
        "downlink_mbps: 1.0e6, latency_s: 0.0}"
        for i, p in enumerate([1.0e15, macs / 1.0, macs / 2.0]))
    write_trace_file("t.h5", make_traces([([0.0], [1.0])] * 3, horizon_s=1.0e5))
    (tmp_path / "s.yaml").write_text(SHARED.format(n=3, classes=classes, traces="t.h5",
                                                   cap=0.008))
    log = build(load_scenario(tmp_path / "s.yaml")).engine.run()
    by = {o.device: o for o in log.timeline}
    s = by[0].bytes_up
    assert s > 1500 and all(o.status == "completed" for o in log.timeline)
    a_end = 2.0 + 3.0 * (s - 1500) / 1000.0
    assert by[0].t_end == pytest.approx(a_end, abs=1e-5)
    assert by[1].t_end == pytest.approx(a_end + 2.0, abs=1e-5)
    assert by[2].t_end == pytest.approx(a_end + 2.5, abs=1e-5)


def test_path_latency_comes_before_the_shared_bytes(tmp_path: Path, write_trace_file
                                                    ) -> None:  # type: ignore[no-untyped-def]
    # 0.5 s latency on each device's own link (the network models none): 0.5 s before
    # the download's bytes, 0.5 s before the upload's; two uploads share C = 1e6 B/s
    from tests.conftest import make_traces

    classes = "\n".join(
        f"    - {{name: c{i}, share: 0.5, peak_macs_per_s: 1.0e15, uplink_mbps: 100.0, "
        "downlink_mbps: 1.0e6, latency_s: 0.5}" for i in range(2))
    write_trace_file("t.h5", make_traces([([0.0], [1.0])] * 2, horizon_s=1.0e5))
    (tmp_path / "s.yaml").write_text(SHARED.format(n=2, classes=classes, traces="t.h5",
                                                   cap=8.0))
    log = build(load_scenario(tmp_path / "s.yaml")).engine.run()
    s = log.timeline[0].bytes_up
    assert [o.t_end for o in log.timeline] == pytest.approx([1.0 + 2 * s / 1e6] * 2,
                                                             abs=1e-4)


def test_a_battery_that_empties_mid_upload_frees_its_share(tmp_path: Path,
                                                           write_trace_file) -> None:  # type: ignore[no-untyped-def]
    # C = 1000 B/s shared by two uploads of S bytes (own links 100 Mbit/s). Device 0's
    # radio draws 4 W and its battery holds E = 4 W x S / (2 C) above its floor: it
    # empties at t_e = t_up + S / (2 C), having moved C/2 x S/(2C) = S/4. Its flow is
    # removed then; device 1, which also moved S/4, has 3S/4 left at the full C:
    # it ends at t_e + 3S / (4C) = t_up + 1.25 S / C (both together at t_up + 2 S / C
    # without the battery).
    cap_mbps, c = 0.008, 1000.0
    plain = run(tmp_path, write_trace_file, [100.0, 100.0], cap_mbps)
    s = plain.timeline[0].bytes_up
    t_up = plain.timeline[0].t_end - plain.timeline[0].up_s
    assert [o.t_end for o in plain.timeline] == pytest.approx([t_up + 2 * s / c] * 2,
                                                              rel=1e-9)
    e_j = 4.0 * s / (2 * c)
    frac = (10.0 + e_j) / 100.0
    energy = (", energy: {full_load_w: 0.0, rx_w: 0.0, tx_w: 4.0, idle_w: 0.0, battery: "
              "{capacity_j: 100.0, floor_fraction: 0.1, resume_fraction: 0.2, "
              f"initial_fraction: [{frac!r}, {frac!r}], charge_when: never}}}}")
    from tests.conftest import make_traces

    write_trace_file("t.h5", make_traces([([0.0], [1.0])] * 2, None, horizon_s=1.0e5))
    classes = _classes([100.0, 100.0]).split("\n")
    classes[0] = classes[0][:-1] + energy + "}"
    (tmp_path / "s.yaml").write_text(SHARED.format(n=2, classes="\n".join(classes),
                                                   traces="t.h5", cap=cap_mbps))
    log = build(load_scenario(tmp_path / "s.yaml")).engine.run()
    d0, d1 = sorted(log.timeline, key=lambda o: o.device)
    level_j = frac * 100.0 - 10.0  # what the fleet's initial charge holds above the floor
    t_e = t_up + level_j / 4.0
    assert t_e == pytest.approx(t_up + s / (2 * c), rel=1e-9)
    assert (d0.status, d0.battery_ended) == ("dropped", True)
    assert d0.t_end == pytest.approx(t_e, rel=1e-12)
    assert d0.bytes_up == pytest.approx(s / 4, abs=1)
    assert d0.energy_j == pytest.approx(level_j, rel=1e-9)
    assert (d1.status, d1.battery_ended) == ("completed", False)
    assert d1.t_end == pytest.approx(t_up + 1.25 * s / c, rel=1e-9)
    assert log.rounds[0]["battery_ended"] == 1


def test_a_battery_that_empties_mid_download_frees_its_share(tmp_path: Path,
                                                             write_trace_file) -> None:  # type: ignore[no-untyped-def]
    # the same on the download link (C = 1000 B/s down, uploads free): device 0 receives
    # at 4 W with E = 4 W x S / (2C) above its floor: cut at S / (2C) with S/4
    # received, its energy (E) still counted; device 1's download ends at 1.25 S / C
    from tests.conftest import make_traces

    write_trace_file("t.h5", make_traces([([0.0], [1.0])] * 2, None, horizon_s=1.0e5))
    shared = SHARED.replace("down_mbps: 1.0e6}}", "down_mbps: 0.008}}")
    c = 1000.0
    (tmp_path / "p.yaml").write_text(shared.format(n=2, classes=_classes([100.0, 100.0]),
                                                   traces="t.h5", cap=1.0e6))
    plain = build(load_scenario(tmp_path / "p.yaml")).engine.run()
    s = plain.timeline[0].bytes_down
    assert [o.down_s for o in plain.timeline] == pytest.approx([2 * s / c] * 2, rel=1e-9)
    frac = (10.0 + 4.0 * s / (2 * c)) / 100.0
    energy = (", energy: {full_load_w: 0.0, rx_w: 4.0, tx_w: 0.0, idle_w: 0.0, battery: "
              "{capacity_j: 100.0, floor_fraction: 0.1, resume_fraction: 0.2, "
              f"initial_fraction: [{frac!r}, {frac!r}], charge_when: never}}}}")
    classes = _classes([100.0, 100.0]).split("\n")
    classes[0] = classes[0][:-1] + energy + "}"
    (tmp_path / "s.yaml").write_text(shared.format(n=2, classes="\n".join(classes),
                                                   traces="t.h5", cap=1.0e6))
    log = build(load_scenario(tmp_path / "s.yaml")).engine.run()
    d0, d1 = sorted(log.timeline, key=lambda o: o.device)
    level_j = frac * 100.0 - 10.0
    assert (d0.status, d0.battery_ended) == ("dropped", True)
    assert d0.t_end == pytest.approx(level_j / 4.0, rel=1e-12)
    assert d0.bytes_down == pytest.approx(s / 4, abs=1)
    assert d0.energy_j == pytest.approx(level_j, rel=1e-9)
    assert d1.status == "completed"
    assert d1.down_s == pytest.approx(1.25 * s / c, rel=1e-9)


def test_a_battery_that_empties_while_training_on_shared_links(tmp_path: Path,
                                                               write_trace_file) -> None:  # type: ignore[no-untyped-def]
    # device 0 trains 10 one-second mini-batches at 2 W with 8 J above its floor: off at
    # t_dl + 4 s after 4 mini-batches (8 J), never uploading
    from tests.conftest import make_traces
    from tests.test_engine_faults import one_step_macs

    write_trace_file("t.h5", make_traces([([0.0], [1.0])] * 2, None, horizon_s=1.0e5))
    energy = (", energy: {full_load_w: 2.0, rx_w: 0.0, tx_w: 0.0, idle_w: 0.0, battery: "
              "{capacity_j: 100.0, floor_fraction: 0.1, resume_fraction: 0.2, "
              "initial_fraction: [0.18, 0.18], charge_when: never}}")
    classes = _classes([100.0, 100.0]).split("\n")
    classes[0] = classes[0][:-1].replace("1.0e15", repr(one_step_macs())) + energy + "}"
    (tmp_path / "s.yaml").write_text(SHARED.format(n=2, classes="\n".join(classes),
                                                   traces="t.h5", cap=8.0))
    log = build(load_scenario(tmp_path / "s.yaml", ["training.local_steps=10"])).engine.run()
    d0, d1 = sorted(log.timeline, key=lambda o: o.device)
    level_j = 0.18 * 100.0 - 10.0
    assert (d0.status, d0.battery_ended, d0.steps) == ("dropped", True, 4)
    assert d0.t_end == pytest.approx(d0.down_s + level_j / 2.0, rel=1e-9)
    assert d0.energy_j == pytest.approx(level_j, rel=1e-9) and d0.bytes_up == 0
    assert d1.status == "completed"
