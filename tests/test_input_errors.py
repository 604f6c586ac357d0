"""Bad input that used to be silently accepted or to end in a traceback (issue 13).

Every case goes through the command line and expects one paragraph naming the file, the
key path and what is allowed, exit status 2 and no traceback.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetsim.calibration import Calibration, write_calibration
from fleetsim.cli import main
from fleetsim.errors import UserError
from tests.conftest import TINY
from tests.test_scenario_errors import check_error, run_cli

TIMING = ["--set", "training.mode=timing", "--quiet"]


@pytest.fixture(autouse=True)
def _restore_registries() -> Iterator[None]:
    """Plugins register components for the whole process: forget them after each test,
    so that they do not show up elsewhere (in `fleetsim schema`, say)."""
    from fleetsim import plugins as scenario
    from fleetsim.build import registries

    saved = {kind: dict(reg._items) for kind, reg in registries().items()}
    loaded = dict(scenario._LOADED_PLUGINS)
    yield
    for kind, reg in registries().items():
        reg._items.clear()
        reg._items.update(saved[kind])
    scenario._LOADED_PLUGINS.clear()
    scenario._LOADED_PLUGINS.update(loaded)


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ----------------------------------------------------------------------------- YAML file


def test_duplicate_top_level_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, TINY + "seed: 4\n")
    code, err = run_cli(capsys, "run", str(p), *TIMING)
    check_error(code, err, str(p), "at 'seed'", "twice", "line 3", "line 24")


def test_duplicate_nested_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, TINY.replace("  rounds: 3\n", "  rounds: 3\n  rounds: 30\n"))
    code, err = run_cli(capsys, "run", str(p), *TIMING)
    check_error(code, err, str(p), "at 'training.rounds'", "twice", "line 19", "line 20")


def test_duplicate_key_in_a_list_item(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, TINY.replace("{name: slow, share: 0.5,",
                                     "{name: slow, share: 0.5, share: 0.7,"))
    code, err = run_cli(capsys, "run", str(p), *TIMING)
    check_error(code, err, str(p), "at 'fleet.classes[1].share'", "twice", "line 14")


def test_same_key_in_different_mappings_is_fine(tmp_path: Path) -> None:
    from fleetsim.build import load_scenario

    sc = load_scenario(write(tmp_path, TINY))  # 'name' and 'options' appear many times
    assert sc.fleet.classes[1].name == "slow"


@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n# and another\n", "---\n"])
def test_empty_scenario_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             text: str) -> None:
    p = write(tmp_path, text)
    code, err = run_cli(capsys, "run", str(p), *TIMING)
    check_error(code, err, str(p), "empty", "Allowed")


def test_scenario_path_is_a_directory(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(capsys, "run", str(tmp_path), *TIMING)
    check_error(code, err, str(tmp_path), "is a folder", "YAML")


def test_scenario_file_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(capsys, "run", str(tmp_path / "nope.yaml"), *TIMING)
    check_error(code, err, "nope.yaml", "does not exist")


# ----------------------------------------------------------------------------- types


@pytest.mark.parametrize(("override", "key", "allowed"), [
    ("training.rounds=true", "training.rounds", "an integer"),
    ("fleet.devices=false", "fleet.devices", "an integer"),
    ("training.deadline_s=true", "training.deadline_s", "a number"),
    ("fleet.classes.0.share=true", "fleet.classes[0].share", "a number"),
    ("dse.grid=[0.0, true]", "dse.grid", "a number"),
    ("seed=true", "seed", "an integer"),
])
def test_booleans_are_not_numbers(tiny_yaml: Path, capsys: pytest.CaptureFixture[str],
                                  override: str, key: str, allowed: str) -> None:
    code, err = run_cli(capsys, "run", str(tiny_yaml), "--set", override, *TIMING)
    check_error(code, err, str(tiny_yaml), "command-line --set", f"at '{key}'", "True" if
                "true" in override else "False", allowed)


def test_booleans_in_yaml_are_not_numbers(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, TINY.replace("local_steps: 5", "local_steps: yes"))
    code, err = run_cli(capsys, "run", str(p), *TIMING)
    check_error(code, err, str(p), "at 'training.local_steps'", "True", "an integer")


@pytest.mark.parametrize(("override", "key"), [
    ("policy.options.overcommit=true", "policy.options.overcommit"),
    ("model.options.hidden=[true]", "model.options.hidden"),
    ("fleet.traces.options.mean_dwell_s=true", "fleet.traces.options.mean_dwell_s"),
])
def test_booleans_are_not_numbers_in_component_options(
        tiny_yaml: Path, capsys: pytest.CaptureFixture[str], override: str, key: str) -> None:
    code, err = run_cli(capsys, "run", str(tiny_yaml), "--set", override, *TIMING)
    check_error(code, err, str(tiny_yaml), "command-line --set", f"at '{key}", "True")


def test_booleans_still_work_where_booleans_are_meant(tiny_yaml: Path, tmp_path: Path) -> None:
    assert main(["run", str(tiny_yaml), "--out", str(tmp_path / "o"), "--set",
                 "output.plot=false", "--set", "training.rounds=1", *TIMING]) == 0
    assert not (tmp_path / "o" / "accuracy.png").exists()


@pytest.mark.parametrize(("override", "key"), [
    ("training.deadline_s=nan", "training.deadline_s"),
    ("training.deadline_s=inf", "training.deadline_s"),
    ("training.deadline_s=.inf", "training.deadline_s"),
    ("costs.backward_factor=.nan", "costs.backward_factor"),
    ("fleet.traces.horizon_s=inf", "fleet.traces.horizon_s"),
    ("fleet.traces.options.mean_dwell_s=inf", "fleet.traces.options.mean_dwell_s"),
    ("policy.options.overcommit=nan", "policy.options.overcommit"),
])
def test_nan_and_inf_are_not_allowed(tiny_yaml: Path, capsys: pytest.CaptureFixture[str],
                                     override: str, key: str) -> None:
    code, err = run_cli(capsys, "run", str(tiny_yaml), "--set", override, *TIMING)
    check_error(code, err, "command-line --set", f"at '{key}'", "finite number")


@pytest.mark.parametrize("grid", ["[0.0, 1.0]", "[-0.1, 0.5]", "[0.0, 0.5, 1.5]"])
def test_dse_grid_rates_must_be_dropout_rates(tiny_yaml: Path, capsys: pytest.CaptureFixture[str],
                                             grid: str) -> None:
    code, err = run_cli(capsys, "run", str(tiny_yaml), "--set", f"dse.grid={grid}", *TIMING)
    check_error(code, err, "at 'dse.grid", "[0, 1)")


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize(("arch", "options", "key"), [
    ("cnn4", "{channels: [8, 0, 32, 32]}", "model.options.channels"),
    ("cnn4", "{channels: [8, -4, 32, 32]}", "model.options.channels"),
    ("mlp", "{hidden: [16, 0]}", "model.options.hidden"),
    ("femnist_cnn", "{channels: [0, 8]}", "model.options.channels"),
    ("femnist_cnn", "{hidden: 0}", "model.options.hidden"),
])
def test_zero_or_negative_widths(tiny_yaml: Path, capsys: pytest.CaptureFixture[str],
                                 arch: str, options: str, key: str) -> None:
    code, err = run_cli(capsys, "run", str(tiny_yaml), "--set", f"model.arch={arch}",
                        "--set", f"model.options={options}", *TIMING)
    check_error(code, err, str(tiny_yaml), f"at '{key}", "greater than or equal to 1")


def test_image_model_on_flat_samples(tiny_yaml: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(capsys, "run", str(tiny_yaml), "--set", "model.arch=cnn4",
                        "--set", "model.options={}", "--set", "data.dataset=synthetic",
                        *TIMING)
    check_error(code, err, str(tiny_yaml), "model.arch", "cnn4", "(60,)", "mlp")


# ----------------------------------------------------------------------------- plugins


def plugin_scenario(tmp_path: Path, code: str, name: str = "plug.py",
                    policy: str | None = None) -> Path:
    (tmp_path / name).write_text(code)
    text = f"plugins: [{name}]\n" + TINY
    if policy:
        text += f"policy: {{name: {policy}}}\n"
    return write(tmp_path, text)


def test_plugin_with_a_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = plugin_scenario(tmp_path, "import math\n\nx = (1,\n", "syn.py")
    code, err = run_cli(capsys, "run", str(p), *TIMING)
    check_error(code, err, str(p), "plugins", "syn.py", "line 3", "SyntaxError")


def test_plugin_that_raises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = plugin_scenario(tmp_path, "import math\n\n\ndef f():\n    return 1 / 0\n\n\nf()\n",
                        "boom.py")
    code, err = run_cli(capsys, "run", str(p), *TIMING)
    check_error(code, err, str(p), "plugins", "boom.py", "line 5", "ZeroDivisionError",
                "division by zero")


def test_plugin_module_that_raises(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fleetsim_test_badmod.py").write_text("raise RuntimeError('no config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    p = write(tmp_path, "plugins: [fleetsim_test_badmod]\n" + TINY)
    code, err = run_cli(capsys, "run", str(p), *TIMING)
    check_error(code, err, "plugins", "fleetsim_test_badmod", "line 1", "RuntimeError",
                "no config")


def test_plugin_that_fails_can_be_fixed_and_loaded(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    p = plugin_scenario(tmp_path, "x = 1 / 0\n", "again.py")
    assert run_cli(capsys, "run", str(p), *TIMING)[0] == 2
    (tmp_path / "again.py").write_text("x = 1\n")
    assert main(["run", str(p), "--out", str(tmp_path / "o"), "--set", "training.rounds=1",
                 *TIMING]) == 0


# ----------------------------------------------------------------------------- vectors

BAD_POLICY = """
from fleetsim.policies import POLICIES, STOP, Decision, Policy

@POLICIES.register("{name}")
class Bad(Policy):
    def decide(self, obs):
        if obs.step >= self.ctx.local_steps:
            return STOP
        return Decision({vector})
"""


@pytest.mark.parametrize(("vec", "problem"), [
    ((0.0, 1.0), "[0, 1)"), ((0.0, -0.1), "[0, 1)"), ((0.0, 1.5), "[0, 1)"),
    ((0.0, math.nan), "[0, 1)"), ((0.5,), "2 groups"), ((0.0, 0.1, 0.2), "2 groups"),
    (("a", 0.1), "[0, 1)"), ((True, 0.0), "[0, 1)"),
])
def test_check_vector_rejects_bad_vectors(vec: tuple[float, ...], problem: str) -> None:
    from fleetsim.policies.base import check_vector

    with pytest.raises(UserError) as e:
        check_vector("my-policy", vec, 2)
    msg = str(e.value)
    assert "my-policy" in msg and problem in msg and "dropout vector" in msg


def test_check_vector_accepts_good_vectors() -> None:
    from fleetsim.policies.base import check_vector

    assert check_vector("p", (0.0, 0.99), 2) == (0.0, 0.99)
    assert check_vector("p", [0, 0.5], 2) == (0.0, 0.5)  # a list is fine; a tuple comes back
    assert check_vector("p", None, 2) is None  # STOP


def test_check_vector_names_the_method_and_the_file() -> None:
    from fleetsim.policies.base import check_vector

    with pytest.raises(UserError, match=r"policy 'p' \(class defined in mine.py\): "
                       r"assign\(\).submodel returned"):
        check_vector("p", (2.0,), 1, "assign().submodel", defined_in="mine.py")


@pytest.mark.parametrize(("vector", "tag"), [("(1.0,)", "one"), ("(-0.5,)", "neg"),
                                             ("(0.1, 0.2)", "long"),
                                             ("(float('nan'),)", "nan")])
def test_plugin_policy_with_a_bad_vector_end_to_end(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    vector: str, tag: str) -> None:
    name = f"bad-vector-{tag}"
    p = plugin_scenario(tmp_path, BAD_POLICY.format(name=name, vector=vector),
                        f"bad_{tag}.py", policy=name)
    code, err = run_cli(capsys, "run", str(p), *TIMING)
    check_error(code, err, name, "dropout vector")


BAD_SUBMODEL = """
from fleetsim.policies import POLICIES, Assignment, Policy

@POLICIES.register("bad-submodel")
class BadSubmodel(Policy):
    def assign(self, round, device, device_class, rng):
        return Assignment(submodel=(1.2,))
"""


def test_plugin_policy_with_a_bad_submodel_end_to_end(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    p = plugin_scenario(tmp_path, BAD_SUBMODEL, "bad_submodel.py", policy="bad-submodel")
    code, err = run_cli(capsys, "run", str(p), *TIMING)
    check_error(code, err, "bad-submodel", "assign().submodel", "(1.2,)", "[0, 1)")


# ----------------------------------------------------------------------------- calibration


def _cal(tmp_path: Path, arch: str, shape: tuple[int, ...], classes: int) -> Path:
    path = tmp_path / "cal.json"
    write_calibration(Calibration(2e-9, 1e-3, 0.99, arch, "wall", 2.0, shape, classes),
                      path)
    return path


@pytest.mark.parametrize(("arch", "shape", "classes", "what"), [
    ("cnn4", (1, 28, 28), 10, "cnn4"),
    ("mlp", (1, 28, 28), 10, "1x28x28"),
    ("mlp", (1, 8, 8), 62, "62 classes"),
])
def test_calibration_of_another_model(tiny_yaml: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str], arch: str,
                                      shape: tuple[int, ...], classes: int, what: str) -> None:
    cal = _cal(tmp_path, arch, shape, classes)
    code, err = run_cli(capsys, "run", str(tiny_yaml), "--set", f"costs.calibration={cal}",
                        *TIMING)
    check_error(code, err, str(tiny_yaml), "costs.calibration", str(cal), what,
                "mlp", "1x8x8", "fleetsim profile --model mlp --input-shape 1,8,8 "
                "--classes 10")


def test_calibration_of_this_model_is_accepted(tiny_yaml: Path, tmp_path: Path) -> None:
    cal = _cal(tmp_path, "mlp", (1, 8, 8), 10)
    assert main(["run", str(tiny_yaml), "--out", str(tmp_path / "o"), "--set",
                 f"costs.calibration={cal}", "--set", "training.rounds=1", *TIMING]) == 0


def test_calibration_without_shape_is_checked_on_arch(tiny_yaml: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # a hand-made file may lack input_shape and num_classes: only the arch can be checked
    cal = tmp_path / "old.json"
    cal.write_text(json.dumps({"format": "fleetsim-calibration", "version": 1,
                               "a_s_per_mac": 1e-9, "b_s": 0.001, "r2": 0.9, "arch": "cnn4"}))
    code, err = run_cli(capsys, "run", str(tiny_yaml), "--set", f"costs.calibration={cal}",
                        *TIMING)
    check_error(code, err, "costs.calibration", "cnn4", "mlp")


# ----------------------------------------------------------------------------- --out


@pytest.fixture
def no_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any simulation, search, batch or trace writing that starts fails the test."""
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("work started before the output path was checked")

    import fleetsim.batch
    import fleetsim.build
    import fleetsim.calibration
    import fleetsim.dse
    import fleetsim.report
    import fleetsim.traces.importers
    import fleetsim.traces.source

    monkeypatch.setattr(fleetsim.build, "build", boom)
    monkeypatch.setattr(fleetsim.dse, "run_dse", boom)
    monkeypatch.setattr(fleetsim.batch, "run_batch", boom)
    monkeypatch.setattr(fleetsim.report, "write_report", boom)
    monkeypatch.setattr(fleetsim.traces.source.GeneratedTraces, "write", boom)
    monkeypatch.setattr(fleetsim.traces.importers, "import_fedscale_behave", boom)
    monkeypatch.setattr(fleetsim.traces.importers, "import_csv", boom)
    monkeypatch.setattr(fleetsim.traces.importers, "capacity_classes", boom)
    monkeypatch.setattr(fleetsim.calibration, "run_profile", boom)


def _commands(tmp_path: Path, out: str) -> dict[str, list[str]]:
    s = str(write(tmp_path, TINY, "tiny.yaml"))
    (tmp_path / "in.pkl").write_bytes(pickle.dumps({}))
    (tmp_path / "in.csv").write_text("device,t_s,availability\n0,0,1\n")
    return {
        "run": ["run", s, "--out", out, *TIMING],
        "compare": ["compare", s, "--out", out, "--quiet"],
        "dse": ["dse", s, "--out", out, "--quiet"],
        "traces generate": ["traces", "generate", "--kind", "markov", "--devices", "3",
                            "--horizon-s", "100", "-o", out],
        "import fedscale-behave": ["traces", "import", "fedscale-behave",
                                   str(tmp_path / "in.pkl"), "-o", out],
        "import fedscale-capacity": ["traces", "import", "fedscale-capacity",
                                     str(tmp_path / "in.pkl"), "-o", out],
        "import csv": ["traces", "import", "csv", str(tmp_path / "in.csv"), "-o", out],
        "profile": ["profile", "--model", "mlp", "--out", out, "--quick"],
    }


COMMANDS = ["run", "compare", "dse", "traces generate", "import fedscale-behave",
            "import fedscale-capacity", "import csv", "profile"]
DIR_OUTPUT = {"run", "compare"}


@pytest.mark.usefixtures("no_simulation")
@pytest.mark.parametrize("command", COMMANDS)
def test_out_is_the_wrong_kind_of_thing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        command: str) -> None:
    """A folder output that is a file, or a file output that is a folder."""
    if command in DIR_OUTPUT:
        out = tmp_path / "taken"
        out.write_text("x")
        needle = "is a file"
    else:
        out = tmp_path / "taken.h5"
        out.mkdir()
        needle = "is a folder"
    code, err = run_cli(capsys, *_commands(tmp_path, str(out))[command])
    check_error(code, err, str(out), needle, "Allowed")


@pytest.mark.usefixtures("no_simulation")
@pytest.mark.parametrize("command", COMMANDS)
def test_out_lies_under_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               command: str) -> None:
    (tmp_path / "plain").write_text("x")
    out = tmp_path / "plain" / "sub" / "out.h5"
    code, err = run_cli(capsys, *_commands(tmp_path, str(out))[command])
    check_error(code, err, str(out), f"{tmp_path / 'plain'} is a file", "Allowed")


@pytest.mark.usefixtures("no_simulation")
@pytest.mark.parametrize("command", COMMANDS)
def test_out_not_writable_under_proc(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     command: str) -> None:
    """/proc takes no new files, even for root (whom chmod does not stop)."""
    out = "/proc/fleetsim-test-out/out.h5"
    code, err = run_cli(capsys, *_commands(tmp_path, out)[command])
    check_error(code, err, out, "not writable", "/proc")


@pytest.mark.usefixtures("no_simulation")
@pytest.mark.parametrize("command", COMMANDS)
def test_out_not_writable_by_permissions(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """A folder without write permission (os.access patched: the tests run as root)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == locked
                        else real(p, mode, *a, **k))
    out = locked / "out.h5"
    code, err = run_cli(capsys, *_commands(tmp_path, str(out))[command])
    check_error(code, err, str(out), f"{locked} is not writable")


@pytest.mark.usefixtures("no_simulation")
def test_report_folder_is_a_file_or_not_writable(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "batch.txt"
    f.write_text("x")
    code, err = run_cli(capsys, "report", str(f))
    check_error(code, err, str(f), "is a file", "the --out folder of `fleetsim compare`")
    code, err = run_cli(capsys, "report", str(tmp_path / "none"))
    check_error(code, err, "none", "does not exist")
    d = tmp_path / "batch"
    d.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False)
    code, err = run_cli(capsys, "report", str(d))
    check_error(code, err, str(d), "not writable")


def test_out_checks_let_good_paths_through(tmp_path: Path) -> None:
    from fleetsim.paths import check_output_dir, check_output_file

    assert check_output_dir(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert check_output_dir(tmp_path, "--out") == tmp_path
    (tmp_path / "old.h5").write_text("x")
    assert check_output_file(tmp_path / "old.h5", "-o") == tmp_path / "old.h5"  # overwrite
    assert check_output_file(tmp_path / "a" / "b.h5", "-o") == tmp_path / "a" / "b.h5"
    with pytest.raises(UserError, match="does not exist"):
        check_output_file(tmp_path / "a" / "b.h5", "-o", make_parents=False)
    assert [p.name for p in tmp_path.iterdir()] == ["old.h5"]  # no probe file left behind


# ----------------------------------------------------------------------------- more of the kind


@pytest.mark.parametrize("name", ["../../elsewhere", "a/b", "", ".hidden"])
def test_scenario_name_is_a_folder_name(tiny_yaml: Path, capsys: pytest.CaptureFixture[str],
                                        name: str) -> None:
    # the name is the default output folder: runs/<name>/seed-<k>
    code, err = run_cli(capsys, "run", str(tiny_yaml), "--set", f"name={name}", *TIMING)
    check_error(code, err, str(tiny_yaml), "at 'name'", "no slashes")


def test_dse_grid_needs_two_different_rates(tiny_yaml: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(capsys, "run", str(tiny_yaml), "--set", "dse.grid=[0.5, 0.5]", *TIMING)
    check_error(code, err, "at 'dse.grid'", "two different")


@pytest.mark.parametrize("target", ["0", "1.5", "nan", "-0.2"])
def test_report_target_accuracy_range(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      target: str) -> None:
    code, err = run_cli(capsys, "report", str(tmp_path), "--target-accuracy", target)
    check_error(code, err, "--target-accuracy", "(0, 1]")


@pytest.mark.usefixtures("no_simulation")
def test_dse_out_must_not_be_the_plot(tiny_yaml: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(capsys, "dse", str(tiny_yaml), "--out", str(tmp_path / "f.png"))
    check_error(code, err, "--out", "f.png", ".png", "overwrite")


@pytest.mark.usefixtures("no_simulation")
def test_dse_cache_dir_is_checked_before_the_search(tiny_yaml: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "plain").write_text("x")
    code, err = run_cli(capsys, "dse", str(tiny_yaml), "--out", str(tmp_path / "f.h5"),
                        "--set", f"dse.cache_dir={tmp_path / 'plain'}")
    check_error(code, err, str(tiny_yaml), "dse.cache_dir", "is a file")


def test_run_checks_the_dse_cache_before_searching_a_front(
        tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import fleetsim.dse

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("the search started before the cache folder was checked")

    monkeypatch.setattr(fleetsim.dse, "front_for", boom)
    (tmp_path / "plain").write_text("x")
    code, err = run_cli(capsys, "run", str(tiny_yaml), "--set", "policy.name=distreal",
                        "--set", f"dse.cache_dir={tmp_path / 'plain' / 'cache'}",
                        "--out", str(tmp_path / "o"), *TIMING)
    check_error(code, err, str(tiny_yaml), "dse.cache_dir", "is a file")


def test_profile_rejects_bad_counts_and_shapes(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "c.json")
    code, err = run_cli(capsys, "profile", "--model", "mlp", "--classes", "0", "--out", out)
    check_error(code, err, "--classes", ">= 1")
    code, err = run_cli(capsys, "profile", "--model", "mlp", "--input-shape", "1,0,8",
                        "--out", out)
    check_error(code, err, "--input-shape", "positive")
    code, err = run_cli(capsys, "profile", "--model", "cnn4", "--input-shape", "64",
                        "--out", out)
    check_error(code, err, "--input-shape", "cnn4", "image")


def test_long_paths_are_not_broken_in_messages(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    deep = tmp_path / ("a-long-folder-name-with-hyphens-" * 4) / "none.yaml"
    code, err = run_cli(capsys, "run", str(deep))
    assert code == 2 and str(deep) in err  # on one line, whole: it can be copied


def test_exponent_without_a_dot_is_a_number(tiny_yaml: Path, tmp_path: Path) -> None:
    """PyYAML (YAML 1.1) reads 1e3 as a string, which component options then rejected."""
    from fleetsim.build import load_scenario
    from fleetsim.scenario import parse_overrides

    assert parse_overrides(["a=1e3", "b=-2.5E-2", "c=7", "d='1e3'"]) == \
        {"a": 1000.0, "b": -0.025, "c": 7, "d": "1e3"}
    sc = load_scenario(tiny_yaml, ["fleet.traces.options.mean_dwell_s=3e1"])
    assert sc.fleet.traces.options["mean_dwell_s"] == 30.0
    assert main(["run", str(tiny_yaml), "--out", str(tmp_path / "o"), "--set",
                 "fleet.traces.options.mean_dwell_s=3e1", "--set", "training.rounds=1",
                 *TIMING]) == 0


def test_duplicate_key_in_a_set_value(tiny_yaml: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(capsys, "run", str(tiny_yaml), "--set",
                        "model.options={hidden: [8], hidden: [16]}", *TIMING)
    check_error(code, err, "command line", "--set", "'hidden'", "twice")


def test_out_is_a_dangling_link(tmp_path: Path) -> None:
    from fleetsim.paths import check_output_dir, check_output_file

    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(UserError, match="is a link to nothing"):
        check_output_dir(tmp_path / "link", "--out")
    with pytest.raises(UserError, match="is a link to nothing"):
        check_output_dir(tmp_path / "link" / "sub", "--out")
    with pytest.raises(UserError, match="is a link to nothing"):
        check_output_file(tmp_path / "link", "-o")
