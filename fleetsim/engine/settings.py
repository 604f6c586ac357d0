"""The server's rules for one run (:class:`EngineSettings`), built by ``build``."""

from __future__ import annotations

from dataclasses import dataclass, field

from fleetsim.config import ServerConfig


@dataclass(frozen=True)
class EngineSettings:
    """The server's rules for one run (from the scenario's training and eval sections).

    Attributes
    ----------
    name : the run's name, for messages and the progress bar
    seed : the run's seed (selection, assignment and policy streams)
    rounds, time_budget_s : when the run ends (either may be None, not both)
    clients_per_round : K
    deadline_s : round deadline after its start (None: none)
    local_steps, batch_size : the devices' local work
    local_epochs : instead of ``local_steps``, each device does ceil(E * n / b)
        mini-batches over its n samples (None: ``local_steps``)
    idle_wait_s : retry interval when no device is online
    server_time_s : simulated aggregation time per round
    eval_every_rounds : evaluate the global model every this many rounds (and the last)
    policy_name : the policy's registered name, for messages about its decisions
    server : the server section (mode, and the asynchronous server's rules)
    """

    name: str
    seed: int
    rounds: int | None
    time_budget_s: float | None
    clients_per_round: int
    deadline_s: float | None
    local_steps: int
    batch_size: int
    idle_wait_s: float = 60.0
    server_time_s: float = 0.0
    eval_every_rounds: int = 1
    policy_name: str = ""
    local_epochs: float | None = None
    server: ServerConfig = field(default_factory=ServerConfig)
