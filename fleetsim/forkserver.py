"""The fork server that worker processes start from, started early where that pays.

Workers fork from a clean server process (multiprocessing's ``forkserver``), not from the
main process, whose torch thread pools must not be forked; the server imports what they
need once (its *preload*), so each worker starts in milliseconds. Importing torch there
takes as long as in the main process (~1.5 s), so ``fleetsim run`` starts the server
before it imports torch itself: the two imports then overlap on two cores instead of the
pool waiting for the server after the main process is ready.

This module imports no torch: that is the point of it.
"""

from __future__ import annotations

from collections.abc import Sequence

#: what a training pool's workers import (:class:`fleetsim.backends.Pool`)
POOL_PRELOAD = ("fleetsim.training",)


def start(preload: Sequence[str]) -> None:
    """Start this process's fork server with ``preload`` imported, unless it is running.

    There is one server per process; a later call (another pool) finds it running and
    uses it as it is.
    """
    import multiprocessing as mp
    from multiprocessing import forkserver

    mp.get_context("forkserver").set_forkserver_preload(list(preload))
    forkserver.ensure_running()
