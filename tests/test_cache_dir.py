"""The DSE's cache: the user's cache folder by default, the same from every folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetsim.build import dse_job, load_scenario
from fleetsim.dse import cache_dir, front_path
from fleetsim.paths import user_cache_dir
from tests.conftest import TINY


def test_env_then_xdg_then_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLEETSIM_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("FLEETSIM_CACHE_DIR")
    assert user_cache_dir() == tmp_path / "xdg" / "fleetsim"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # the XDG spec: ignore it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_cache_dir() == tmp_path / "home" / ".cache" / "fleetsim"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert user_cache_dir() == tmp_path / "home" / ".cache" / "fleetsim"


def test_the_front_is_found_from_any_folder(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("FLEETSIM_CACHE_DIR", str(tmp_path / "cache"))
    sc = load_scenario(None, ["policy.name=distreal"], text=TINY)
    paths = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        paths.append(front_path(dse_job(sc)))
    assert paths[0] == paths[1] and paths[0].parent == tmp_path / "cache"
    # dse.cache_dir still wins
    own = load_scenario(None, ["policy.name=distreal", f"dse.cache_dir={tmp_path / 'own'}"],
                        text=TINY)
    assert cache_dir(own.dse) == tmp_path / "own"


def test_tests_never_use_the_users_cache() -> None:
    assert "fleetsim-test-cache-" in str(user_cache_dir())
