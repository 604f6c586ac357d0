"""Units to show simulated time in: one that fits the span, named on the axis.

A 10-minute run drawn in hours squeezes its curves into the first tick; a 10-hour run in
minutes has ticks of 600. Figures and tables pick seconds, minutes or hours by the span.
"""

from __future__ import annotations

import math

#: (name, seconds per unit, used for spans below this many seconds)
TIME_UNITS = (("s", 1.0, 120.0), ("min", 60.0, 2 * 3600.0), ("h", 3600.0, math.inf))
#: how an axis label writes each unit
UNIT_WORDS = {"s": "s", "min": "min", "h": "hours"}


def pick_time_unit(top_s: float) -> tuple[str, float]:
    """A unit for times up to ``top_s`` seconds: (name, seconds per unit).

    Seconds below 2 minutes, minutes below 2 hours, hours beyond (nan: seconds)."""
    top = top_s if math.isfinite(top_s) else 0.0
    for name, scale, below in TIME_UNITS:
        if top < below:
            return name, scale
    raise AssertionError("unreachable: the last unit has no upper limit")
