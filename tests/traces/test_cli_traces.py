"""The `fleetsim traces` commands end to end: outputs, help, and exit 2 on bad input."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from fleetsim.cli import main
from fleetsim.traces import read_traces

COMMANDS = ["generate", "import", "record", "show", "plot", "slice", "merge"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["traces", cmd, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert f"fleetsim traces {cmd}" in text and len(text) > 200


def test_generate_show_plot_slice_merge(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    t = str(tmp_path / "d.h5")
    assert main(["traces", "generate", "--kind", "diurnal", "--devices", "40", "--horizon-s",
                 "172800", "--param", "phase_h={dist: uniform, low: -2, high: 2}",
                 "-o", t]) == 0
    assert read_traces(t).meta["params"]["phase_h"]["dist"] == "uniform"
    assert main(["traces", "show", t]) == 0
    assert "devices            40" in capsys.readouterr().out
    png = tmp_path / "d.png"
    assert main(["traces", "plot", t, "-o", str(png), "--devices", "10", "--bins", "50"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    a, b = str(tmp_path / "a.h5"), str(tmp_path / "b.h5")
    assert main(["traces", "slice", t, "--devices", "0:10", "--end-s", "86400", "-o", a]) == 0
    assert main(["traces", "slice", t, "--devices", "10:15", "--end-s", "86400", "-o", b]) == 0
    m = str(tmp_path / "m.h5")
    assert main(["traces", "merge", a, b, "-o", m]) == 0
    assert read_traces(m).n_devices == 15


def test_imports_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    behave = tmp_path / "client_behave_trace"
    behave.write_bytes(pickle.dumps({1: {"active": [10], "inactive": [20], "finish_time": 100,
                                         "duration": 5, "model": "x"}}))
    out = tmp_path / "f.h5"
    assert main(["traces", "import", "fedscale-behave", str(behave), "-o", str(out)]) == 0
    assert read_traces(out).period_s == 100
    cap = tmp_path / "client_device_capacity"
    cap.write_bytes(pickle.dumps({i: {"computation": 10.0 + i, "communication": 1000.0}
                                  for i in range(8)}))
    assert main(["traces", "import", "fedscale-capacity", str(cap), "--classes", "2"]) == 0
    assert "peak_macs_per_s" in capsys.readouterr().out
    csv = tmp_path / "t.csv"
    csv.write_text("device,t_s,availability\n0,0,0.5\n")
    assert main(["traces", "import", "csv", str(csv), "-o", str(tmp_path / "c.h5")]) == 0


@pytest.mark.parametrize("argv", [
    ["traces", "generate", "--kind", "nope", "--devices", "2", "--horizon-s", "10", "-o", "x.h5"],
    ["traces", "generate", "--kind", "uniform", "--devices", "2", "--horizon-s", "10",
     "--param", "low=2", "-o", "x.h5"],
    ["traces", "show", "missing.h5"],
    ["traces", "plot", "missing.h5", "-o", "x.png"],
    ["traces", "slice", "missing.h5", "-o", "x.h5"],
    ["traces", "merge", "a.h5", "-o", "x.h5"],
    ["traces", "import", "csv", "missing.csv", "-o", "x.h5"],
    ["traces", "import", "fedscale-behave", "missing.pkl", "-o", "x.h5"],
    ["traces", "record", "--duration-s", "0", "-o", "x.h5"],
    ["traces", "generate", "--kind", "constant", "--devices", "2", "--horizon-s", "nan",
     "-o", "x.h5"],
    ["traces", "generate", "--kind", "constant", "--devices", "2", "--horizon-s", "inf",
     "-o", "x.h5"],
    ["traces", "import", "csv", "t.csv", "--period-s", "nan", "-o", "x.h5"],
    ["traces", "generate", "--kind", "diurnal", "--devices", "2", "--horizon-s", "10",
     "--streams", "counter", "-o", "x.h5"],
])
def test_bad_input_exits_2_with_one_paragraph(argv: list[str], tmp_path: Path,
                                              capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.csv").write_text("device,t_s,availability\n0,0,1\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "Allowed" in err or "Available" in err


def test_csv_error_through_the_real_command(tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("device,t_s,availability\n0,0,0.5\n0,1,7\n")
    r = subprocess.run([sys.executable, "-m", "fleetsim.cli", "traces", "import", "csv",
                        str(csv), "-o", str(tmp_path / "x.h5")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "bad.csv: line 3: availability 7 out of range" in " ".join(r.stderr.split())


def _doc_commands() -> list[list[str]]:
    """The `fleetsim traces generate` and `import csv` examples of docs/traces.md."""
    import shlex

    text = (Path(__file__).resolve().parents[2] / "docs" / "traces.md").read_text()
    cmds = []
    for block in text.split("```")[1::2]:
        line = block.replace("\\\n", " ").strip()
        if line.startswith(("fleetsim traces generate", "fleetsim traces import csv")):
            cmds.append(shlex.split(line)[1:])
    return cmds


def test_doc_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    cmds = _doc_commands()
    assert len(cmds) >= 7
    for argv in cmds:
        if "--devices" in argv:  # the same options on a small fleet, to stay fast
            argv[argv.index("--devices") + 1] = "5"
        argv[argv.index("-o") + 1] = str(tmp_path / "out.h5")
        assert main(argv) == 0, argv


def test_behave_import_prints_and_stores_what_it_reported(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    behave = tmp_path / "client_behave_trace"
    behave.write_bytes(pickle.dumps({
        1: {"active": [10, 90], "inactive": [20, 130], "finish_time": 100},  # 1 clipped
        2: {"active": [30], "inactive": [20], "finish_time": 100},  # ends before it starts
        3: {"active": [5], "inactive": [10], "finish_time": 30},  # 30 s does not divide 100
    }))
    out = tmp_path / "f.h5"
    assert main(["traces", "import", "fedscale-behave", str(behave), "-o", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "3 devices" in text
    assert "1 intervals running past their client's finish_time" in text
    assert "1 intervals whose inactive time is before their active time" in text
    assert "1 clients whose finish_time does not divide the period" in text
    assert "1 clients that are never online" in text
    rep = read_traces(out).meta["import_report"]
    assert rep["clipped_at_finish_time"] == 1 and rep["end_before_start"] == 1
    assert rep["inexact_wrap_clients"] == 1 and rep["never_online_clients"] == 1


def test_behave_import_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    behave = tmp_path / "client_behave_trace"
    behave.write_bytes(pickle.dumps({7: {"active": [-3], "inactive": [20], "finish_time": 100}}))
    out = tmp_path / "f.h5"
    assert main(["traces", "import", "fedscale-behave", str(behave), "-o", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "client 7, key 'active'[0]: time -3.0 s is negative" in err and "Allowed" in err
    assert not out.exists()


def test_generate_with_counter_streams(tmp_path: Path) -> None:
    """The file holds the traces a fleet with ``streams: counter`` would make lazily."""
    from fleetsim.traces import GeneratedTraces
    from fleetsim.traces.generators import GENERATORS

    out = tmp_path / "c.h5"
    assert main(["traces", "generate", "--kind", "markov", "--devices", "30", "--horizon-s",
                 "7200", "--seed", "5", "--streams", "counter", "-o", str(out)]) == 0
    ts = read_traces(out)
    assert ts.meta["streams"] == "counter"
    cls = GENERATORS.get("markov")
    lazy = GeneratedTraces(cls(cls.Options()), "markov", 30, 7200.0, 5, streams="counter")
    t, v = ts.availability.device(17)
    assert t.tolist() == lazy.signals(17).avail_t.tolist()
    assert v.tolist() == lazy.signals(17).avail_v.tolist()
