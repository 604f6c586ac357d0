"""fleetsim: federated learning on heterogeneous, time-varying device fleets, simulated.

Each device is a SimPy process whose compute availability is read from a trace; each
device's choice of dropout vector sets both the simulated time of its training steps and
the real PyTorch sub-network that is trained.
"""

from fleetsim._version import __version__ as __version__

__all__ = ["Comparison", "Result", "__version__", "compare", "load_scenario", "run",
           "with_changes"]


def __getattr__(name: str) -> object:
    # The API is imported on first use, so that `import fleetsim` (and the CLI's start-up,
    # and every worker process) does not pay for torch, SimPy and pandas up front.
    if name in ("Comparison", "Result", "compare", "load_scenario", "run", "with_changes"):
        from fleetsim import api

        return getattr(api, name)
    raise AttributeError(f"module 'fleetsim' has no attribute {name!r}")
