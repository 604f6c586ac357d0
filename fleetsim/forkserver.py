"""The worker pool's fork server, started before this process imports torch.

The pool backend's workers fork from a server process that has imported
:data:`PRELOAD` (torch among it, ~1.5 s). Started when the backend is built, the main
process then waits ~0.9 s for it after its own imports and data loading; started first
thing, its imports run on the other core beside the main process's own. This module
imports nothing heavy, so that ``fleetsim run`` can call it before anything else.
"""

from __future__ import annotations

from multiprocessing import forkserver

#: modules the fork server imports once, so that every worker starts with them loaded
PRELOAD = ["fleetsim.training"]


def start() -> None:
    """Start the fork server now (idempotent; the pool backend calls it too)."""
    forkserver.set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()
