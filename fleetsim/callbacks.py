"""Callbacks: what the engine tells the outside world as a run goes on.

The engine calls :meth:`Callback.on_run_start` once, :meth:`Callback.on_round_end` with
every finished round's row (the columns of ``rounds.csv``, see ``docs/results.md``) and
:meth:`Callback.on_run_end` with the whole log. The CLI's progress bar, the TensorBoard
tracker and the results writer are callbacks; so is anything a user passes to
:func:`fleetsim.run`. A callback observes: it cannot change the run, so results are the
same with or without it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fleetsim.errors import UserError


class Callback:
    """Base class: every hook does nothing; override the ones you need."""

    def on_run_start(self, settings: Any) -> None:
        """Before the first round; ``settings`` are the engine's (name, seed, rounds...)."""

    def on_round_end(self, row: dict[str, Any]) -> None:
        """After each round, with its row of the rounds table."""

    def on_run_end(self, log: Any) -> None:
        """After the last round, with the run's :class:`~fleetsim.engine.RunLog`."""


class ProgressBar(Callback):
    """A tqdm bar over rounds, with the latest accuracy and the simulated hours."""

    def __init__(self) -> None:
        self.bar: Any = None

    def on_run_start(self, settings: Any) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=settings.rounds, desc=settings.name, unit="round",
                        dynamic_ncols=True, leave=False)

    def on_round_end(self, row: dict[str, Any]) -> None:
        acc = row["accuracy"]
        self.bar.update(1)
        self.bar.set_postfix(acc=f"{acc:.3f}" if not math.isnan(acc) else "-",
                             sim_h=f"{row['t_end_s'] / 3600:.2f}")

    def on_run_end(self, log: Any) -> None:
        self.bar.close()


#: rounds-table columns written as TensorBoard scalars (tag ``fleetsim/<column>``)
TB_SCALARS = ("accuracy", "loss", "train_loss", "completed", "late", "dropped", "rejected",
              "too_slow", "mean_kept_share", "macs", "t_end_s")


class TensorBoard(Callback):
    """TensorBoard event files in ``log_dir``: one scalar per round-table column.

    The step of every scalar is the round; ``fleetsim/accuracy_vs_sim_s`` is also written
    with the simulated time (whole seconds) as its step, so TensorBoard can plot accuracy
    against simulated time. Needs the ``tensorboard`` package (``pip install
    fleetsim[tensorboard]``). NaN values (rounds not evaluated) are skipped.
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("at 'output.tensorboard': true needs the tensorboard package, "
                            "which is not installed. Allowed: install it with `pip install "
                            "'fleetsim[tensorboard]'` (or `pip install tensorboard`), or "
                            "set output.tensorboard: false.") from None
        self.log_dir = Path(log_dir)
        self._make = SummaryWriter
        self.writer: Any = None

    def on_run_start(self, settings: Any) -> None:
        # a rerun into the same folder replaces the earlier run's events, as the run's
        # other files are replaced; TensorBoard would otherwise draw both as one run
        if self.log_dir.is_dir():
            for old in self.log_dir.glob("events.out.tfevents.*"):
                old.unlink()
        self.writer = self._make(log_dir=str(self.log_dir))

    def on_round_end(self, row: dict[str, Any]) -> None:
        r = int(row["round"])
        for key in TB_SCALARS:
            v = float(row[key])
            if not math.isnan(v):
                self.writer.add_scalar(f"fleetsim/{key}", v, r)
        if not math.isnan(row["accuracy"]):
            self.writer.add_scalar("fleetsim/accuracy_vs_sim_s", float(row["accuracy"]),
                                   int(row["t_end_s"]))

    def on_run_end(self, log: Any) -> None:
        self.writer.flush()
        self.writer.close()
