"""``fleetsim choose``: a swept setting picked per policy, from the rounds tables."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from fleetsim.choose import choose
from fleetsim.cli import main
from fleetsim.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "scenarios" / "tiny.yaml")
LRS = (0.01, 0.3, 1.0)
POLICIES = ("fedavg", "fedavg+stragglers=wait")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    assert main(["compare", TINY, "--policies", "fedavg,fedavg:stragglers=wait", "--seeds",
                 "0-1", "--set", "training.optimizer.lr=" + ",".join(map(str, LRS)),
                 "--set", "training.rounds=6", "--set", "eval.split=validation",
                 "--set", "data.validation_fraction=0.2", "--out", str(out), "--quiet"]) == 0
    return out


def hand_scores(out: Path, policy: str, last: int) -> dict[float, float]:
    """Score per lr straight from the rounds.csv files: mean over seeds of the mean of the
    last ``last`` non-empty accuracies."""
    scores = {}
    for lr in LRS:
        per_seed = []
        for seed in (0, 1):
            path = out / "tiny" / policy / f"training.optimizer.lr={lr}" / f"seed-{seed}"
            with (path / "rounds.csv").open() as f:
                acc = [float(r["accuracy"]) for r in csv.DictReader(f) if r["accuracy"]]
            per_seed.append(sum(acc[-last:]) / len(acc[-last:]))
        scores[lr] = sum(per_seed) / 2
    return scores


@pytest.mark.parametrize("last", [1, 3])
def test_the_choice_is_the_best_mean_of_the_last_evaluations(sweep: Path, last: int) -> None:
    choices = {c.policy: c for c in choose(sweep, "training.optimizer.lr", last)}
    assert set(choices) == set(POLICIES)
    for policy in POLICIES:
        hand = hand_scores(sweep, policy, last)
        c = choices[policy]
        assert [v for v, _, _ in c.scores] == list(LRS)  # numeric order
        for (_v, s, n), lr in zip(c.scores, LRS):
            assert n == 2 and s == pytest.approx(hand[lr], abs=1e-12)
        assert c.value == max(hand, key=hand.get)
        assert c.score == pytest.approx(max(hand.values()), abs=1e-12)
    # the sweep is not degenerate: the rates do differ in score
    assert len({round(s, 6) for _, s, _ in choices["fedavg"].scores}) > 1


def test_cli_writes_the_policies_argument_that_runs_the_chosen_rates(
        sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["choose", str(sweep), "--key", "training.optimizer.lr"]) == 0
    chosen = {c.policy: c.value for c in choose(sweep, "training.optimizer.lr")}
    arg = (sweep / "policies.txt").read_text().strip()
    assert arg == (f"fedavg:training.optimizer.lr={chosen['fedavg']},fedavg:stragglers=wait;"
                   f"training.optimizer.lr={chosen['fedavg+stragglers=wait']}")
    with (sweep / "choice.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(LRS) and sum(int(r["chosen"]) for r in rows) == 2
    # the argument works: the study's cells run at the chosen rates, labelled by them
    out = tmp_path / "study"
    assert main(["compare", TINY, "--policies", arg, "--seeds", "0", "--set",
                 "training.rounds=1", "--out", str(out), "--quiet"]) == 0
    labels = sorted(p.name for p in (out / "tiny").iterdir())
    assert labels == sorted([f"fedavg@lr={chosen['fedavg']}",
                             f"fedavg+stragglers=wait@lr={chosen['fedavg+stragglers=wait']}"])


def test_choosing_on_the_test_split_is_refused(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "on-test"
    assert main(["compare", TINY, "--policies", "fedavg", "--set",
                 "training.optimizer.lr=0.1,0.3", "--set", "training.rounds=2", "--out",
                 str(out), "--quiet"]) == 0
    with pytest.raises(UserError, match="'test' split"):
        choose(out, "training.optimizer.lr")
    assert main(["choose", str(out), "--key", "training.optimizer.lr"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert [c.policy for c in choose(out, "training.optimizer.lr", allow_test=True)] == [
        "fedavg"]


def test_a_key_that_was_not_swept_is_an_error(sweep: Path) -> None:
    with pytest.raises(UserError, match="at least two values"):
        choose(sweep, "training.rounds")
    with pytest.raises(UserError, match=r"no key 'training\.nope'"):
        choose(sweep, "training.nope")
    with pytest.raises(UserError, match="--last"):
        choose(sweep, "training.optimizer.lr", 0)


def test_a_run_without_evaluations_never_wins() -> None:
    from fleetsim.choose import _mean, _rank

    assert math.isnan(_mean([0.5, math.nan])) and _rank(math.nan) == -math.inf


def test_learning_rate_and_batch_norm_mode_are_chosen_jointly(tmp_path: Path) -> None:
    """Issue 28: the sweep chooses each method's batch-norm mode with its learning rate;
    the method's own default stays visible beside the choice."""
    import json

    out = tmp_path / "bn"
    assert main(["compare", TINY, "--policies", "fedavg,heterofl", "--seeds", "0",
                 "--set", "model.arch=cnn4",
                 "--set", "model.options={channels: [4, 4, 4, 4], norm: bn}",
                 "--set", "training.optimizer.lr=0.05,0.3",
                 "--set", "model.options.bn_stats=running,batch",
                 "--set", "training.rounds=3", "--set", "eval.split=validation",
                 "--set", "data.validation_fraction=0.2", "--out", str(out), "--quiet"]) == 0
    keys = ("training.optimizer.lr", "model.options.bn_stats")
    choices = {c.policy: c for c in choose(out, keys, 2)}
    for policy in ("fedavg", "heterofl"):
        hand = {}
        for lr in (0.05, 0.3):
            for bn in ("running", "batch"):
                folder = out / "tiny" / policy / \
                    f"training.optimizer.lr={lr}+model.options.bn_stats={bn}" / "seed-0"
                if not folder.is_dir():  # the axes' order in the folder name
                    folder = out / "tiny" / policy / \
                        f"model.options.bn_stats={bn}+training.optimizer.lr={lr}" / "seed-0"
                with (folder / "rounds.csv").open() as f:
                    acc = [float(r["accuracy"]) for r in csv.DictReader(f) if r["accuracy"]]
                hand[(lr, bn)] = sum(acc[-2:]) / len(acc[-2:])
        c = choices[policy]
        assert len(c.scores) == 4
        assert tuple(c.value) == max(hand, key=hand.get)
        # a plain word stays bare, so the study's folder reads @bn_stats=running
        assert c.spec == (f"{policy}:training.optimizer.lr={json.dumps(c.value[0])};"
                          f"model.options.bn_stats={c.value[1]}")
    # HeteroFL's paper default (sBN: static) is named beside its choice; FedAvg has none
    assert choices["heterofl"].method_defaults == (("model.options.bn_stats", "static"),)
    assert choices["fedavg"].method_defaults == ()
    assert main(["choose", str(out), "--key", keys[0], "--key", keys[1], "--last", "2"]) == 0
    rows = list(csv.DictReader((out / "choice.csv").open()))
    assert set(rows[0]) == {"policy", *keys, "score", "runs", "chosen", "method_default"}
    assert {r["method_default"] for r in rows if r["policy"] == "heterofl"} == \
        {'model.options.bn_stats="static"'}
    text = (out / "policies.txt").read_text()
    assert "model.options.bn_stats=" in text and "training.optimizer.lr=" in text
