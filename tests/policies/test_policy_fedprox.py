"""FedProx: partial work by the deadline, and the proximal term."""

from __future__ import annotations

import torch
from policy_cases import TIMED, run

from fleetsim.build import load_scenario, trainer_settings
from fleetsim.training import Trainer, UpdateJob


def test_partial_work_arrives_by_the_deadline_instead_of_late() -> None:
    sets = ("training.deadline_s=10",)  # slow devices manage only part of their steps
    fedavg = run("fedavg", None, sets)
    prox = run("fedprox", {"mu": 0.1}, sets)
    assert sum(r["late"] for r in fedavg.rounds) > 0
    assert sum(r["late"] for r in prox.rounds) == 0
    partial = [o for o in prox.timeline if o.status == "completed" and o.steps < 5]
    assert partial, "some device should send fewer than local_steps mini-batches"
    for o in prox.timeline:
        assert o.t_end <= o.t_start + 10.0 + 1e-9
        assert o.job is None or o.job.prox_mu == 0.1


def test_no_partial_option_behaves_like_fedavg() -> None:
    sets = ("training.deadline_s=10",)
    a = run("fedavg", None, sets)
    b = run("fedprox", {"partial": False}, sets)
    assert [r["completed"] for r in a.rounds] == [r["completed"] for r in b.rounds]


def test_update_shrinks_as_mu_grows() -> None:
    trainer = Trainer(trainer_settings(load_scenario(None, ["training.mode=full"], text=TIMED)))
    start = trainer.initial_state()
    n = len(trainer.model.groups)

    def change(mu: float) -> float:
        job = UpdateJob(device=0, round=0, weight=1.0, vectors=((0.0,) * n,),
                        step_vector=(0,) * 10, prox_mu=mu)
        state = trainer.train(start, job).update.state
        return float(torch.sqrt(sum(((state[k] - start[k]) ** 2).sum() for k in start)))

    norms = [change(mu) for mu in (0.0, 1.0, 10.0)]
    assert norms[0] > norms[1] > norms[2] > 0
