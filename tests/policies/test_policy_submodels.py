"""Sub-model policies: Federated Dropout, HeteroFL, FedRolex, FjORD."""

from __future__ import annotations

from collections import Counter
from functools import cache

import numpy as np
import pytest
import torch
from policy_cases import TIMED, context, observe, run

from fleetsim.build import load_scenario, trainer_settings
from fleetsim.cli import main
from fleetsim.errors import UserError
from fleetsim.nn import select_channels
from fleetsim.nn.base import Group
from fleetsim.policies.fedrolex import FedRolex, FedRolexOptions
from fleetsim.policies.fjord import FjORD, FjORDOptions
from fleetsim.policies.heterofl import HeteroFL, HeteroFLOptions
from fleetsim.training import Trainer, UpdateJob

GROUPS = (Group("h0", 8), Group("h1", 12))


@cache
def trainer() -> Trainer:
    return Trainer(trainer_settings(load_scenario(None, ["training.mode=full"], text=TIMED)))


def trained_rows(job: UpdateJob) -> list[int]:
    """Units of the first hidden layer that ``job`` trained (rows of its weight mask)."""
    u = trainer().train(trainer().initial_state(), job).update
    m = u.masks["layers.0.weight"]
    assert m is not None
    return torch.nonzero(m.reshape(m.shape[0], -1).any(1)).flatten().tolist()


# ----------------------------------------------------------------------- Federated Dropout


def test_federated_dropout_uploads_fewer_bytes_than_fedavg() -> None:
    full = run("fedavg", None, ("training.deadline_s=null",))
    fd = run("federated_dropout", {"rate": 0.5}, ("training.deadline_s=null",))

    def per_update(log):  # type: ignore[no-untyped-def]
        return sum(r["bytes_up"] for r in log.rounds) / sum(r["completed"] for r in log.rounds)

    assert per_update(fd) < 0.5 * per_update(full)
    assert {o.bytes_down for o in fd.timeline} == {o.bytes_up for o in fd.timeline}


def test_federated_dropout_keeps_one_random_submodel_all_round() -> None:
    log = run("federated_dropout", {"rate": 0.5})
    jobs = [o.job for o in log.timeline if o.job is not None]
    assert all(j.vectors == ((0.5, 0.5),) and (j.mode, j.reselect) == ("random", "round")
               for j in jobs)
    a, b = jobs[0], jobs[1]
    rows_a, rows_b = trained_rows(a), trained_rows(b)
    assert len(rows_a) == len(rows_b) == 4  # the same 4 of 8 units in every mini-batch
    assert rows_a != rows_b  # ... but a different random 4 for another device


# ----------------------------------------------------------------------- HeteroFL


def test_heterofl_trains_the_same_leading_channels_for_a_class() -> None:
    log = run("heterofl", {"widths": {"fast": 1.0, "slow": 0.5}},
              ("training.deadline_s=null", "training.rounds=3"))
    jobs = {cls: [o.job for o in log.timeline if o.job and (o.device >= 5) == cls]
            for cls in (False, True)}
    assert all(j.vectors == ((0.0, 0.0),) for j in jobs[False])
    assert all(j.vectors == ((0.5, 0.5),) and j.mode == "ordered" for j in jobs[True])
    assert len({j.round for j in jobs[True]}) > 1
    for j in jobs[True][:3]:  # different devices and rounds, one class: the same units
        assert trained_rows(j) == [0, 1, 2, 3]


def test_heterofl_derives_widths_from_peak_speed() -> None:
    ctx = context(peaks=(1e6, 3e5, 2e4), names=("fast", "mid", "slow"))
    p = HeteroFL(HeteroFLOptions(), ctx)
    assert p.widths[0] == 1.0
    assert p.widths[0] > p.widths[1] > p.widths[2]
    assert HeteroFL(HeteroFLOptions(widths={"mid": 0.75}), ctx).widths[1] == 0.75


def test_heterofl_unknown_class_names_the_key_and_the_classes() -> None:
    with pytest.raises(UserError, match=r"policy\.options\.widths.*'medium'.*fast, slow"):
        HeteroFL(HeteroFLOptions(widths={"medium": 0.5}), context())


def test_unknown_class_is_a_clean_cli_error(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "s.yaml"
    p.write_text(TIMED)
    rc = main(["run", str(p), "--quiet", "--out", str(tmp_path / "o"),
               "--set", "policy.name=heterofl", "--set", "policy.options={widths: {x: 0.5}}"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "policy.options.widths" in err


# ----------------------------------------------------------------------- FedRolex


@pytest.mark.parametrize("stride", [1, 3])
def test_fedrolex_window_rolls_by_stride_and_covers_every_channel(stride: int) -> None:
    ctx = context()
    p = FedRolex(FedRolexOptions(widths={"slow": 0.25}, stride=stride), ctx)
    seen: dict[str, set[int]] = {"h0": set(), "h1": set()}
    for r in range(24):
        a = p.assign(r, 7, 1, np.random.default_rng())
        assert (a.mode, a.reselect) == ("rolling", "round")
        keep = select_channels(GROUPS, a.submodel, a.mode, None, a.offset)  # type: ignore[arg-type]
        for g in GROUPS:
            k = round(0.25 * g.channels)
            want = {(r * stride + j) % g.channels for j in range(k)}
            assert set(keep[g.name].tolist()) == want  # type: ignore[index]
            seen[g.name] |= want
    assert seen == {"h0": set(range(8)), "h1": set(range(12))}
    # the full-width class is unaffected
    assert p.assign(5, 0, 0, np.random.default_rng()).submodel is None


def test_fedrolex_offsets_reach_the_engine() -> None:
    log = run("fedrolex", {"widths": {"slow": 0.5}, "stride": 2},
              ("training.deadline_s=null",))
    slow = [o for o in log.timeline if o.job is not None and o.device >= 5]
    assert slow  # the check below must see some slow devices' jobs
    for o in slow:
        assert (o.job.mode, o.job.offset) == ("rolling", 2 * o.round)  # type: ignore[union-attr]


# ----------------------------------------------------------------------- FjORD


def test_fjord_widths_never_exceed_the_class_maximum() -> None:
    ctx = context(peaks=(1e6, 5e5, 1e5), names=("a", "b", "c"))
    # nearest: every group at exactly the width (ceil, the default, is tested apart)
    p = FjORD(FjORDOptions(max_width={"b": 0.6, "c": 0.3}, rounding="nearest"), ctx)
    assert p.max_widths == (1.0, 0.6, 0.3)
    rng = np.random.default_rng(0)
    for cls, allowed in enumerate([{0.2, 0.4, 0.6, 0.8, 1.0}, {0.2, 0.4, 0.6}, {0.2}]):
        a = p.assign(0, 0, cls, rng)
        assert a.mode == "ordered" and a.reselect == "step"
        widths = Counter()
        for step in range(500):
            v = p.decide(observe(ctx, cls, a, step % 5, rng)).vector
            assert v is not None and len(set(v)) == 1  # one width for every layer
            widths[round(1.0 - v[0], 6)] += 1
        assert set(widths) == allowed  # every allowed width is drawn, none above the max
        assert min(widths.values()) > 500 / len(allowed) / 2  # roughly uniformly
        sub = a.submodel
        assert (1.0 if sub is None else 1.0 - sub[0]) == pytest.approx(p.max_widths[cls])


def test_fjord_stops_after_local_steps_and_through_the_engine() -> None:
    ctx = context()
    p = FjORD(FjORDOptions(max_width={"slow": 0.4}), ctx)
    a = p.assign(0, 0, 1, np.random.default_rng())
    assert p.decide(observe(ctx, 1, a, step=5)).vector is None
    log = run("fjord", {"max_width": {"slow": 0.4}, "rounding": "nearest"},
              ("training.deadline_s=null",))
    slow = [o for o in log.timeline if o.job is not None and o.device >= 5]
    assert slow
    for o in slow:
        assert all(v[0] >= 0.6 - 1e-9 for v in o.job.vectors)  # type: ignore[union-attr]
