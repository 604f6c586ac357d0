"""A run's folder is written as one unit, and its columns are the documented ones."""

from __future__ import annotations

import os
import re
from pathlib import Path

import h5py
import pytest

import fleetsim.results as results
from fleetsim.build import build, load_scenario
from fleetsim.engine import STATUS
from fleetsim.results import ROUND_COLUMNS, TIMELINE_COLUMNS, write_run
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_runs():  # type: ignore[no-untyped-def]
    out = []
    for seed in (0, 1):
        sc = load_scenario(None, [f"seed={seed}", "training.rounds=2"], text=TINY)
        out.append((sc, build(sc).engine.run()))
    return out


def test_fresh_folder_gets_every_file_and_plain_permissions(tmp_path: Path, two_runs) -> None:  # type: ignore[no-untyped-def]
    sc, log = two_runs[0]
    write_run(tmp_path / "r", sc, log)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted(results.RUN_FILES)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "r").stat().st_mode & 0o777 == 0o777 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # no staging folder left


def test_crash_while_writing_leaves_the_earlier_run_whole(tmp_path: Path, two_runs,  # type: ignore[no-untyped-def]
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    (sc0, log0), (sc1, log1) = two_runs
    write_run(tmp_path / "r", sc0, log0)
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    (tmp_path / "r" / "notes.txt").write_text("mine")

    def crash(*a: object, **k: object) -> None:
        raise KeyboardInterrupt  # as a kill would: after rounds.csv, before run.h5

    monkeypatch.setattr(results, "plot_accuracy", crash)
    with pytest.raises(KeyboardInterrupt):
        write_run(tmp_path / "r", sc1, log1)
    after = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    assert after.pop("notes.txt") == b"mine"
    assert after == before  # the old run, untouched: no new rounds.csv beside it


def test_crash_while_publishing_never_mixes_two_runs(tmp_path: Path, two_runs,  # type: ignore[no-untyped-def]
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (sc0, log0), (sc1, log1) = two_runs
    write_run(tmp_path / "r", sc0, log0)
    old_csv = (tmp_path / "r" / "rounds.csv").read_bytes()
    real = os.replace
    calls = []

    def replace(src, dst):  # type: ignore[no-untyped-def]
        calls.append(Path(dst).name)
        if Path(dst).parent == tmp_path / "r" and len(calls) > 4:
            raise KeyboardInterrupt  # killed after moving the first new file in
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        write_run(tmp_path / "r", sc1, log1)
    names = {p.name for p in (tmp_path / "r").iterdir()}
    assert "run.h5" not in names  # incomplete, and it says so
    if "rounds.csv" in names:
        assert (tmp_path / "r" / "rounds.csv").read_bytes() != old_csv
    monkeypatch.setattr(os, "replace", real)
    write_run(tmp_path / "r", sc1, log1)  # a rerun completes it
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted(results.RUN_FILES)


def test_every_column_and_status_is_documented(tmp_path: Path, two_runs) -> None:  # type: ignore[no-untyped-def]
    doc = (ROOT / "docs" / "results.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", doc, re.M))
    for name in (*ROUND_COLUMNS, *TIMELINE_COLUMNS, "device_class", *STATUS):
        assert name in documented, f"docs/results.md does not describe {name!r}"
    sc, log = two_runs[0]
    write_run(tmp_path / "r", sc, log)
    header = (tmp_path / "r" / "rounds.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == ROUND_COLUMNS
    with h5py.File(tmp_path / "r" / "run.h5") as f:
        assert set(f["timeline"]) == set(TIMELINE_COLUMNS)
        assert set(f["rounds"]) == set(ROUND_COLUMNS)


def test_a_link_to_an_empty_folder_is_filled_through_the_link(tmp_path: Path) -> None:
    from fleetsim.results import write_files

    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    write_files(tmp_path / "link", [("rounds.csv", b"x"), ("run.h5", b"y")])
    assert (tmp_path / "link").is_symlink()
    assert sorted(p.name for p in (tmp_path / "target").iterdir()) == ["rounds.csv", "run.h5"]
