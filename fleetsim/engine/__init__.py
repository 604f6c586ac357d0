"""The discrete-event engine: the only package that touches the SimPy environment.

Its parts, imports pointing down only (see ``docs/architecture.md``):

- :mod:`~fleetsim.engine.rows`: the timeline row (:class:`DeviceRound`), the round row
  (:data:`ROUND_COLUMNS`, one definition for both servers and the files), :class:`RunLog`;
- :mod:`~fleetsim.engine.settings`: :class:`EngineSettings`;
- :mod:`~fleetsim.engine.timing`: one device's round (download, mini-batches with the
  policy's vectors, upload), exact and without SimPy;
- :mod:`~fleetsim.engine.server`: what both servers share;
- :mod:`~fleetsim.engine.sync` and :mod:`~fleetsim.engine.async_server`: the synchronous
  and the asynchronous (FedBuff/FedAsync) server, each owning its state;
- :mod:`~fleetsim.engine.core`: :class:`Engine`, the run's lifecycle.

Timing depends on the cost model and the traces alone, never on training results, so a
round's schedule -- who finishes, when, with which dropout vector at each mini-batch --
is fixed before any real training; the backend then trains only the updates that reach
aggregation.
"""

from fleetsim.engine.async_server import ASYNC_REPEAT_STRIDE
from fleetsim.engine.core import SERVERS, Engine
from fleetsim.engine.rows import (
    INF,
    ROUND_COLUMNS,
    STATUS,
    WORLD_ROUND_COLUMNS,
    WORLD_TIMELINE_COLUMNS,
    DeviceRound,
    RoundRow,
    RunLog,
)
from fleetsim.engine.settings import EngineSettings

#: The world models the engine simulates (``build`` refuses a scenario that configures
#: another one): per-device bandwidth traces, energy and batteries, shared links, and
#: decisions that see them (policies' observations, selectors' battery levels).
WORLD_FEATURES = frozenset({"bandwidth", "energy", "sharing", "observations",
                            "battery_selection"})

__all__ = [
    "ASYNC_REPEAT_STRIDE",
    "INF",
    "ROUND_COLUMNS",
    "SERVERS",
    "STATUS",
    "WORLD_FEATURES",
    "WORLD_ROUND_COLUMNS",
    "WORLD_TIMELINE_COLUMNS",
    "DeviceRound",
    "Engine",
    "EngineSettings",
    "RoundRow",
    "RunLog",
]
