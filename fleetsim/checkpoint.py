"""Checkpoints of one run: ``output.checkpoint_every_rounds`` and ``fleetsim run --resume``.

Every N rounds (sync) or model versions (async) the run's whole state goes into
``DIR/checkpoint.pt``, written atomically (a temporary name, flushed to disk, then
renamed), so a kill at any instant leaves either the previous checkpoint or the new one.
What it holds is :meth:`fleetsim.engine.Engine.snapshot`: simulated time, the global
model and its buffers, the rows and device timeline so far, the selector's state (Oort's
utilities, TiFL's latencies), the policy's and the server optimizer's state, and in async
mode the jobs in flight (with their schedules), the buffer and the model versions they
train from. Nothing else is needed to go on bit for bit: the schedule depends only on the
traces and on random streams keyed by purpose, round and device (:mod:`fleetsim.rng`),
never on a generator's position, and lazily generated traces are regenerated identically.

A checkpoint records the scenario's digest and the code it was made by (fleetsim's
version, a digest of its source files, torch's version); ``--resume`` refuses one made by
another scenario or other code (:class:`UserError`, exit status 2) rather than continue a
different run. When the run completes, its files are written as usual and the checkpoint
is deleted.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from fleetsim._version import __version__
from fleetsim.config import Scenario
from fleetsim.engine import Engine
from fleetsim.errors import UserError

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = 1


@functools.cache
def code_digest() -> str:
    """SHA-256 (16 hex digits) of fleetsim's own source files, in path order."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def code_version() -> dict[str, str]:
    """What made a checkpoint: fleetsim's version and sources, and torch's version."""
    return {"fleetsim": __version__, "sources": code_digest(), "torch": torch.__version__}


class Checkpoints:
    """Writes ``out/checkpoint.pt`` every ``every`` rounds; the engine calls
    :meth:`due` and :meth:`save` (see :meth:`Engine.snapshot`)."""

    def __init__(self, out: Path, sc: Scenario, every: int) -> None:
        self.path = out / CHECKPOINT_FILE
        self.every = every
        self.header = {"format": FORMAT, "scenario_digest": sc.digest(),
                       "scenario_name": sc.name, "seed": sc.seed, **code_version()}
        self.saved = 0

    def due(self, rounds: int) -> bool:
        """Whether to save after ``rounds`` rounds (or model versions)."""
        return rounds % self.every == 0

    def save(self, snapshot: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as f:
            torch.save({"header": self.header, "engine": snapshot}, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
        os.replace(tmp, self.path)
        self.saved += 1


def load(out: Path, sc: Scenario) -> dict[str, Any] | None:
    """The checkpoint in ``out`` if there is one, checked against ``sc`` and this code.

    Raises
    ------
    UserError : it was made by another scenario or other code, or cannot be read
    """
    path = out / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        # our own file, holding the run's objects (rows, selector, policy): not weights only
        ck = torch.load(path, map_location="cpu", weights_only=False)
        header = ck["header"]
    except Exception as exc:  # a checkpoint is written atomically: this is not ours
        raise UserError(
            f"--resume: {path} cannot be read as a fleetsim checkpoint ({type(exc).__name__}: "
            f"{exc}). Allowed: a folder whose checkpoint.pt a `fleetsim run` wrote, or run "
            "without --resume (or delete the file) to start the run again.") from None
    digest = sc.digest()
    if header.get("scenario_digest") != digest:
        raise UserError(
            f"--resume: the checkpoint in {out} was made by another scenario (digest "
            f"{header.get('scenario_digest')}, '{header.get('scenario_name')}' seed "
            f"{header.get('seed')}; this one is {digest}, '{sc.name}' seed {sc.seed}): a "
            "changed scenario file, --set or --seed would continue a run that is not this "
            "one. Allowed: the scenario, overrides and seed of the interrupted run, or "
            "another --out (or delete the checkpoint) to start this scenario afresh.")
    now = code_version()
    changed = [f"{k} {header.get(k)} -> {v}" for k, v in now.items() if header.get(k) != v]
    if changed or header.get("format") != FORMAT:
        raise UserError(
            f"--resume: the checkpoint in {out} was made by other code "
            f"({', '.join(changed) or 'checkpoint format'}): its state need not mean the "
            "same to this code, so the resumed run could silently differ from an "
            "uninterrupted one. Allowed: resume with the code that started the run, or "
            "run without --resume (or delete the checkpoint) to start afresh.")
    return ck


def attach(engine: Engine, sc: Scenario, out: Path,
           resumed: dict[str, Any] | None = None) -> Checkpoints | None:
    """Give ``engine`` its checkpoint writer (if ``output.checkpoint_every_rounds``) and,
    with a checkpoint loaded by :func:`load`, the state to go on from."""
    if resumed is not None:
        engine.restore(resumed["engine"])
    every = sc.output.checkpoint_every_rounds
    if not every:
        return None
    engine.checkpoints = Checkpoints(out, sc, every)
    return engine.checkpoints  # type: ignore[no-any-return]


def resumed_at(ck: dict[str, Any]) -> str:
    """Where a loaded checkpoint goes on, in words."""
    pos = ck["engine"]["position"]
    if "version" in pos:
        return f"model version {pos['version']} (t={ck['engine']['now']:g} s)"
    return f"round {pos['round']} (t={ck['engine']['now']:g} s)"


def remove(out: Path) -> None:
    """Delete the checkpoint of a run that has completed (its files are written)."""
    for name in (CHECKPOINT_FILE, CHECKPOINT_FILE + ".tmp"):
        (out / name).unlink(missing_ok=True)
