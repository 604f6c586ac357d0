"""A scenario with the user's own network (model.arch: user) runs the whole pipeline:
DSE and DISTREAL, every dropout and fixed-work policy, async mode, the pool backend."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fleetsim.build import load_scenario, run_scenario
from fleetsim.cli import main
from fleetsim.errors import UserError

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "models"
NETS = REPO / "tests" / "nn" / "user_nets.py"
# the examples, tinier still: a test must take seconds
TINY = ["--quiet", "--set", "training.rounds=2", "--set", "training.local_steps=2",
        "--set", "dse.population=4", "--set", "dse.generations=1",
        "--set", "dse.budget_steps=2", "--set", "dse.warmup_steps=2"]


TEXT = "name: user-model\n"


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


@pytest.mark.parametrize("example", ["resnet18", "mobilenetv2"])
def test_example_scenario_runs_dse_and_distreal(example: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert main(["run", str(EXAMPLES / f"{example}.yaml"), "--out", str(tmp_path / "run"),
                 *TINY, "--set", f"dse.cache_dir={cache}"]) == 0
    rows = _rows(tmp_path / "run" / "rounds.csv")
    assert len(rows) == 2
    # DISTREAL trained sub-networks of the user's network, chosen from the DSE's front
    assert min(float(r["mean_kept_share"]) for r in rows) < 1.0
    assert len(list(cache.glob("front-*.h5"))) == 1


def test_fleetsim_dse_writes_a_front_of_the_derived_groups(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    out = tmp_path / "front.h5"
    assert main(["dse", str(EXAMPLES / "resnet18.yaml"), "--out", str(out), *TINY,
                 "--set", f"dse.cache_dir={tmp_path / 'c'}"]) == 0
    text = capsys.readouterr().out
    assert "conv1, layers.0.0.conv1" in text  # the vector's groups, by module name
    from fleetsim.dse import read_front

    front = read_front(out)
    assert len(front.groups) == 12 and front.groups[0] == ("conv1", 8)


def _scenario(tmp_path: Path, *sets: str) -> list[str]:
    return [f"model.options.factory={NETS}:make_cnn4", "model.arch=user",
            "model.options.kwargs={channels: [4, 6, 8, 8]}", "data.dataset=digits",
            "fleet.devices=6", "training.clients_per_round=3", "training.rounds=2",
            "training.local_steps=2", "training.batch_size=8", "dse.population=4",
            "dse.generations=1", "dse.budget_steps=2", "dse.warmup_steps=2",
            "dse.grid=[0.0, 0.5]", "dse.workers=1", f"dse.cache_dir={tmp_path / 'cache'}",
            "output.plot=false", *sets]


@pytest.mark.parametrize("policy", ["fedavg", "fedprox", "fednova", "heterofl", "fjord",
                                    "fedrolex", "federated_dropout", "uniform-adaptive",
                                    "distreal"])
def test_every_policy_trains_a_user_network(policy: str, tmp_path: Path) -> None:
    sc = load_scenario(None, _scenario(tmp_path, f"policy.name={policy}"), text=TEXT)
    log = run_scenario(sc)
    assert len(log.rounds) == 2
    kept = [r["mean_kept_share"] for r in log.rounds if r["steps"]]
    assert kept
    if policy in ("fedavg", "fedprox", "fednova"):
        assert all(k == 1.0 for k in kept)
    elif policy not in ("distreal", "uniform-adaptive"):  # (these adapt to time: the
        # full network may be fast enough)
        assert min(kept) < 1.0
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in log.rounds)


def test_async_mode_trains_a_user_network(tmp_path: Path) -> None:
    sc = load_scenario(None, _scenario(tmp_path, "server.mode=async", "server.concurrency=2",
                                       "server.buffer_size=2", "policy.name=fjord"),
                       text=TEXT)
    assert len(run_scenario(sc).rounds) == 2


def test_pool_workers_build_the_same_user_network(tmp_path: Path) -> None:
    """Workers load the factory file themselves: the same results as in-process."""
    sets = ("policy.name=federated_dropout", "training.deadline_s=null")
    one = run_scenario(load_scenario(None, _scenario(tmp_path, *sets), text=TEXT))
    pool = run_scenario(load_scenario(None, _scenario(tmp_path, *sets, "training.backend=pool",
                                                      "training.workers=2"), text=TEXT))
    assert min(r["mean_kept_share"] for r in one.rounds) < 1.0
    assert [r["accuracy"] for r in one.rounds] == [r["accuracy"] for r in pool.rounds]
    assert [r["loss"] for r in one.rounds] == [r["loss"] for r in pool.rounds]


def test_factory_path_is_relative_to_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(NETS.read_text())
    (tmp_path / "s.yaml").write_text("model: {arch: user, options: {factory: net.py:make_cnn4}}\n"
                                     "data: {dataset: digits}\n")
    sc = load_scenario(tmp_path / "s.yaml")
    assert sc.model.options["factory"] == f"{tmp_path / 'net.py'}:make_cnn4"


def _fails(tmp_path: Path, capsys: pytest.CaptureFixture[str], *sets: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text("name: s\n")
    args = [a for s in _scenario(tmp_path, *sets) for a in ("--set", s)]
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return " ".join(err.split())


def test_an_untraceable_network_exits_2_naming_the_node(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    err = _fails(tmp_path, capsys, f"model.options.factory={NETS}:make",
                 "model.options.kwargs={kind: Shuffle}")
    assert "graph node 'view'" in err and "channel shuffle" in err and "s.yaml" in err
    err = _fails(tmp_path, capsys, f"model.options.factory={NETS}:make",
                 "model.options.kwargs={kind: Branchy}")
    assert "if h.sum() > 0" in err


def test_factory_mistakes_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(tmp_path, capsys, "model.options.factory=missing.py:make_net")
    assert "'model.options.factory'" in err and "does not exist" in err
    err = _fails(tmp_path, capsys, f"model.options.factory={NETS}:nope")
    assert "'model.options.factory'" in err and "defines no 'nope'" in err


def test_a_network_without_groups_runs_fixed_work_only(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    shuffle = (f"model.options.factory={NETS}:make", "model.options.kwargs={kind: Shuffle}",
               "model.options.groups=none")
    log = run_scenario(load_scenario(None, _scenario(tmp_path, *shuffle), text=TEXT))
    assert len(log.rounds) == 2 and all(r["macs"] > 0 for r in log.rounds)
    err = _fails(tmp_path, capsys, *shuffle, "policy.name=heterofl")
    assert "'policy.name'" in err and "no droppable groups" in err and "fedavg" in err


def test_dse_cache_follows_the_network_file(tmp_path: Path) -> None:
    from fleetsim.build import dse_job
    from fleetsim.dse import settings_digest

    net = tmp_path / "net.py"
    net.write_text(NETS.read_text())
    sets = _scenario(tmp_path, f"model.options.factory={net}:make_cnn4")
    before = settings_digest(dse_job(load_scenario(None, sets, text=TEXT)))
    net.write_text(NETS.read_text() + "\n# edited\n")
    assert settings_digest(dse_job(load_scenario(None, sets, text=TEXT))) != before


def test_batched_training_of_a_user_network(tmp_path: Path) -> None:
    """Batched (stacked) training uses the traced conv/linear layers: the same results as
    one by one; networks it cannot stack are refused, not trained with the wrong weights."""
    plain = (f"model.options.factory={NETS}:make", "model.options.kwargs={kind: PlainCNN}",
             "policy.name=fedavg")
    one = run_scenario(load_scenario(None, _scenario(tmp_path, *plain), text=TEXT))
    bat = run_scenario(load_scenario(None, _scenario(tmp_path, *plain, "training.batched=true"),
                                     text=TEXT))
    assert [r["loss"] for r in bat.rounds] == pytest.approx([r["loss"] for r in one.rounds],
                                                            abs=1e-4)
    for extra in (("model.options.groups=none",), ("model.options.kwargs={kind: Depthwise}",)):
        sc = load_scenario(None, _scenario(tmp_path, *plain, "training.batched=true", *extra),
                           text=TEXT)
        with pytest.raises(UserError, match=r"training\.batched: the user network"):
            run_scenario(sc)


def test_concatenation_coverage_masks_match_what_training_changed(tmp_path: Path) -> None:
    """A layer reading a concatenation is cut by each part's group: the update's mask says
    exactly which of its elements trained (aggregation averages only those)."""
    from fleetsim.build import trainer_settings
    from fleetsim.training import Trainer, UpdateJob

    sc = load_scenario(None, _scenario(tmp_path, f"model.options.factory={NETS}:make",
                                       "model.options.kwargs={kind: Dense}"), text=TEXT)
    t = Trainer(trainer_settings(sc))
    assert [g.name for g in t.model.groups] == ["a", "b", "c"]
    state = t.initial_state()
    job = UpdateJob(device=0, round=0, weight=1.0, vectors=((0.5, 0.5, 0.5),),
                    step_vector=(0,), reselect="round")
    up = t.train(state, job).update
    for name in ("net.c.weight", "net.fc.weight"):
        mask = up.masks[name]
        assert mask is not None and 0 < int(mask.sum()) < mask.numel(), name
        changed = (up.state[name] != state[name])
        full_mask = mask.expand_as(changed)
        assert not changed[~full_mask].any(), name  # nothing outside the mask moved
        assert changed[full_mask].float().mean() > 0.9, name  # and the masked part did
    # fc reads a (4) + b (6) + c (5) channels of 2x2 features: half of each part kept
    assert int(up.masks["net.fc.weight"].sum()) == t.model.num_classes * 4 * (2 + 3 + 2)
