"""Checkpoints of one run (fleetsim.checkpoint, ``fleetsim run --resume``; issue 27).

A run stopped after a checkpoint and resumed must write the files of an uninterrupted run:
every dataset of ``run.h5`` and ``rounds.csv``, byte for byte. Two attributes of
``run.h5`` differ by nature and are left out, each named where it is: ``wall_s`` (the
process's wall-clock time) and ``command`` (the resumed run's command line has
``--resume``; the in-process references have none).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from fleetsim import checkpoint
from fleetsim.build import build, load_scenario
from fleetsim.cli import main
from fleetsim.config import Scenario
from fleetsim.results import write_run

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "scenarios" / "tiny.yaml")
# attributes of run.h5 that differ between two runs of the same scenario by nature
NOT_RESULTS = {"wall_s",  # wall-clock seconds of the process that wrote the file
               "command"}  # the command line (a resumed run's has --resume)


def run_files(out: Path) -> dict[str, Any]:
    """rounds.csv's bytes, every dataset of run.h5 as bytes, and its other attributes."""
    files: dict[str, Any] = {"rounds.csv": (out / "rounds.csv").read_bytes()}
    with h5py.File(out / "run.h5", "r") as f:
        f.visititems(lambda name, obj: files.__setitem__(name, obj[()].tobytes())
                     if isinstance(obj, h5py.Dataset) else None)
        for k, v in f.attrs.items():
            if k not in NOT_RESULTS:
                files[f"attr:{k}"] = v.tobytes() if isinstance(v, np.ndarray) else v
    return files


class Crash(Exception):
    """Stands for the process dying right after a checkpoint was written."""


def _run(sc: Scenario, out: Path, crash_after: int | None = None,
         resume: bool = False) -> int:
    """Run ``sc`` in this process as ``fleetsim run`` does; returns checkpoints written."""
    ck = checkpoint.load(out, sc) if resume else None
    built = build(sc, TINY)
    try:
        cp = checkpoint.attach(built.engine, sc, out, ck)
        if crash_after is not None:
            assert cp is not None
            save = cp.save

            def save_then_crash(snapshot: dict[str, Any]) -> None:
                save(snapshot)
                if cp.saved >= crash_after:
                    raise Crash

            cp.save = save_then_crash  # type: ignore[method-assign]
        log = built.engine.run()
    finally:
        if built.backend is not None:
            built.backend.close()
    write_run(out, sc, log, facts=built.facts)  # as fleetsim run writes it
    checkpoint.remove(out)
    return cp.saved if cp is not None else 0


# small batteries on the slow class: some of its rounds end at the floor (battery_ended)
BATTERY = ("fleet.classes.1.energy={profile: phone, battery: {capacity_j: 60, "
           "initial_fraction: [0.1, 0.3], charge_w: 0.05, charge_when: always}}")

CASES = {
    "sync-oort-adam": ["selector.name=oort", "server.optimizer.name=adam",
                       "server.optimizer.lr=0.01"],
    "sync-tifl": ["selector.name=tifl"],
    "sync-time-budget": ["training.rounds=null", "training.time_budget_s=400"],
    "sync-timing-only": ["training.mode=timing"],
    # top-k's residuals and the privacy accountant's rounds cross rounds
    "sync-topk-dp": ["training.update_transforms=[{name: topk, options: {ratio: 0.05}}, "
                     "{name: clip, options: {max_norm: 1.0}}]",
                     "server.noise={name: gaussian_noise, options: {noise_multiplier: 0.5, "
                     "delta: 1.0e-5}}"],
    # batteries cross rounds: their charge, and whether a device is off until recharged
    "sync-batteries": [BATTERY],
    "async-batteries": [BATTERY, "server.mode=async", "server.concurrency=4",
                        "server.buffer_size=2"],
    # the batteries and the selector that reads them (the engine's view, not saved)
    "sync-battery-selector": [
        "fleet.classes.0.energy={profile: phone, battery: {capacity_j: 100.0, "
        "initial_fraction: [0.3, 0.9], charge_w: 0.3, charge_when: always}}",
        "selector.name=battery", "selector.options.min_fraction=0.5"],
    "async-oort-yogi": ["server.mode=async", "server.concurrency=5", "server.buffer_size=3",
                        "selector.name=oort", "server.optimizer.name=yogi",
                        "server.optimizer.lr=0.01"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_run_resumed_after_a_crash_writes_the_uninterrupted_files(case: str,
                                                                    tmp_path: Path) -> None:
    over = ["training.rounds=8", *CASES[case]]
    sc = load_scenario(TINY, [*over, "output.checkpoint_every_rounds=3"])
    _run(load_scenario(TINY, over), tmp_path / "plain")  # no checkpoints at all
    assert _run(sc, tmp_path / "whole") >= 2
    with pytest.raises(Crash):
        _run(sc, tmp_path / "cut", crash_after=1)
    assert not (tmp_path / "cut" / "run.h5").exists()
    ck = checkpoint.load(tmp_path / "cut", sc)
    assert ck is not None and ck["engine"]["rounds"]  # went on from a run with rows
    _run(sc, tmp_path / "cut", resume=True)
    assert not (tmp_path / "cut" / checkpoint.CHECKPOINT_FILE).exists()  # complete: gone
    whole, resumed = run_files(tmp_path / "whole"), run_files(tmp_path / "cut")
    assert "rounds/accuracy" in whole and "timeline/device" in whole
    if "batteries" in case:  # the case is one in which batteries end work
        with h5py.File(tmp_path / "whole" / "run.h5", "r") as f:
            assert f["rounds/battery_ended"][()].sum() > 0
    assert resumed == whole
    plain = run_files(tmp_path / "plain")
    # checkpointing changes no result (the scenario text differs by the option itself)
    assert {k: v for k, v in plain.items() if not k.startswith("attr:scenario")} == \
        {k: v for k, v in whole.items() if not k.startswith("attr:scenario")}


# ------------------------------------------------------- a real process, killed with SIGKILL

KILL_CASES = {
    "sync-inprocess": [],
    "async-inprocess": ["server.mode=async", "server.concurrency=4", "server.buffer_size=2"],
    "sync-pool": ["training.backend=pool", "training.workers=2"],
    "async-pool": ["server.mode=async", "server.concurrency=4", "server.buffer_size=2",
                   "training.backend=pool", "training.workers=2"],
}
ROUNDS = 10
_REFERENCES: dict[str, dict[str, Any]] = {}


def _reference(mode: str) -> dict[str, Any]:
    """The files of an uninterrupted in-process run that never checkpointed, per server
    mode. The pool gives the in-process bits (tests/test_backends.py, test_async.py), so
    one reference serves both backends; its scenario differs from the killed run's by
    the checkpoint option (and the backend), which only the scenario attributes show."""
    if mode not in _REFERENCES:
        import tempfile

        over = [f"training.rounds={ROUNDS}", *KILL_CASES[f"{mode}-inprocess"]]
        with tempfile.TemporaryDirectory() as tmp:
            _run(load_scenario(TINY, over), Path(tmp) / "whole")
            _REFERENCES[mode] = run_files(Path(tmp) / "whole")
    return dict(_REFERENCES[mode])


def _cli(out: Path, over: list[str], *extra: str) -> list[str]:
    args = [sys.executable, "-m", "fleetsim.cli", "run", TINY, "--out", str(out), *extra]
    for o in over:
        args += ["--set", o]
    return args


@pytest.mark.parametrize("case", list(KILL_CASES))
def test_a_run_killed_with_sigkill_and_resumed_writes_the_uninterrupted_files(
        case: str, tmp_path: Path) -> None:
    over = [f"training.rounds={ROUNDS}", *KILL_CASES[case], "output.checkpoint_every_rounds=2"]
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(_cli(out, over, "--quiet"), cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (out / checkpoint.CHECKPOINT_FILE).exists():
            assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its pool workers, at once
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "run.h5").exists()  # it was stopped mid-run
    done = subprocess.run(_cli(out, over, "--resume"), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    m = re.search(r"resuming tiny from (round|model version) (\d+)", done.stdout)
    assert m and 0 < int(m.group(2)) < ROUNDS, done.stdout
    assert not (out / checkpoint.CHECKPOINT_FILE).exists()
    got, want = run_files(out), _reference(case.split("-")[0])
    for k in ("attr:scenario_text", "attr:scenario_digest"):  # the option itself
        assert got.pop(k) != want.pop(k)
    assert "rounds/accuracy" in got and "timeline/device" in got
    assert got == want


# ------------------------------------------------------- refusals and the file itself


def _checkpointed(tmp_path: Path) -> tuple[Path, list[str]]:
    """A folder holding the checkpoint of a run stopped after its first one."""
    over = ["training.rounds=6", "output.checkpoint_every_rounds=2"]
    with pytest.raises(Crash):
        _run(load_scenario(TINY, over), tmp_path / "run", crash_after=1)
    return tmp_path / "run", over


def _resume(out: Path, over: list[str]) -> int:
    args = ["run", TINY, "--out", str(out), "--resume", "--quiet"]
    for o in over:
        args += ["--set", o]
    return main(args)


def test_resuming_with_another_scenario_is_refused_with_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, over = _checkpointed(tmp_path)
    before = (out / checkpoint.CHECKPOINT_FILE).read_bytes()
    assert _resume(out, [*over, "training.optimizer.lr=0.2"]) == 2
    raw = capsys.readouterr().err
    assert "\n\n" not in raw.strip() and "Traceback" not in raw  # one paragraph
    err = " ".join(raw.split())
    assert err.startswith("error: --resume: the checkpoint in") and "another scenario" in err
    assert _resume(out, [*over, "seed=3"]) == 2
    assert (out / checkpoint.CHECKPOINT_FILE).read_bytes() == before  # left as it was
    assert _resume(out, over) == 0  # the same scenario goes on
    assert (out / "run.h5").exists() and not (out / checkpoint.CHECKPOINT_FILE).exists()


def test_resuming_with_other_code_or_a_foreign_file_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    out, over = _checkpointed(tmp_path)
    monkeypatch.setattr(checkpoint, "code_digest", lambda: "0123456789abcdef")
    assert _resume(out, over) == 2
    err = " ".join(capsys.readouterr().err.split())  # the message is wrapped at 100
    assert "made by other code" in err and "sources" in err
    monkeypatch.undo()
    (out / checkpoint.CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    assert _resume(out, over) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "cannot be read as a fleetsim checkpoint" in err


def test_the_code_digest_follows_the_sources() -> None:
    d = checkpoint.code_digest()
    assert re.fullmatch(r"[0-9a-f]{16}", d)
    assert checkpoint.code_version()["sources"] == d


def test_resume_without_a_checkpoint_runs_from_the_start(tmp_path: Path) -> None:
    over = ["training.rounds=3"]
    assert _resume(tmp_path / "fresh", over) == 0
    _run(load_scenario(TINY, over), tmp_path / "ref")
    assert run_files(tmp_path / "fresh") == run_files(tmp_path / "ref")


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out, over = _checkpointed(tmp_path)
    sc = load_scenario(TINY, over)
    good = checkpoint.load(out, sc)
    assert good is not None and good["engine"]["position"]["round"] == 2
    cp = checkpoint.Checkpoints(out, sc, 2)

    def dies_half_way(obj: Any, f: Any) -> None:
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        cp.save(good["engine"])
    monkeypatch.undo()
    again = checkpoint.load(out, sc)  # still the complete one
    assert again is not None and again["engine"]["position"]["round"] == 2


def test_checkpoint_every_rounds_is_validated() -> None:
    from fleetsim.errors import UserError

    with pytest.raises(UserError, match="checkpoint_every_rounds"):
        load_scenario(TINY, ["output.checkpoint_every_rounds=0"])


def test_checkpoints_with_shared_links_are_refused_with_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the shared links' transfers are not kept by a checkpoint (yet): an error, never a
    # resumed run that silently differs
    args = ["run", TINY, "--out", str(tmp_path / "run"), "--quiet",
            "--set", "output.checkpoint_every_rounds=2",
            "--set", "fleet.network={sharing: max_min, server_link: {up_mbps: 5, "
                     "down_mbps: 50}}"]
    assert main(args) == 2
    raw = capsys.readouterr().err
    assert "Traceback" not in raw and "\n\n" not in raw.strip()
    assert "output.checkpoint_every_rounds" in raw and "sharing" in raw
    assert not (tmp_path / "run" / checkpoint.CHECKPOINT_FILE).exists()
