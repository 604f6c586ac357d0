"""Results per device class: who was selected, who got through, who paid.

From a run's device timeline (one row per selected device per round, with its class),
per class: how many times its devices were selected; the shares of those selections that
ended ``completed`` (aggregated), ``late``, ``dropped`` and ``too_slow``; the MACs of the
aggregated updates (contributed) and of all others (wasted); the bytes moved (down and
up); and Jain's fairness index of participation over the class's devices,

    J = (sum_i x_i)^2 / (n * sum_i x_i^2),

with x_i the number of aggregated updates of device i and n the devices of the class,
never-selected ones included (Jain, Chiu and Hawe, DEC-TR-301, 1984). J = 1 when every
device contributed equally often, 1/n when one device did all; NaN when none did.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

#: the columns of :func:`per_class_rows`, in order
PER_CLASS_COLUMNS = ("device_class", "devices", "selected", "completed_share", "late_share",
                     "dropped_share", "too_slow_share", "macs_contributed", "macs_wasted",
                     "bytes", "jain_participation")
SHARES = ("completed", "late", "dropped", "too_slow")


def jain(x: Sequence[float] | np.ndarray) -> float:
    """Jain's fairness index of ``x`` (NaN for an empty or all-zero ``x``)."""
    v = np.asarray(x, dtype=float)
    sq = float((v * v).sum())
    if v.size == 0 or sq == 0.0:
        return math.nan
    return float(v.sum()) ** 2 / (v.size * sq)


def per_class_rows(timeline: Mapping[str, np.ndarray], status_names: Sequence[str],
                   class_names: Sequence[str], class_sizes: Sequence[int]
                   ) -> list[dict[str, float | str | int]]:
    """One row per class (columns :data:`PER_CLASS_COLUMNS`) of one run's timeline.

    Parameters
    ----------
    timeline : columns ``device``, ``status`` (codes), ``macs``, ``bytes_down``,
        ``bytes_up`` and ``device_class`` (index into ``class_names``)
    status_names : the status name of each code
    class_names, class_sizes : the fleet's classes and their device counts
    """
    if "device_class" not in timeline:
        raise ValueError("the timeline has no device_class column (a run written before "
                         "fleetsim recorded device classes)")
    cls = np.asarray(timeline["device_class"], np.int64)
    status = np.asarray(timeline["status"], np.int64)
    code = {name: i for i, name in enumerate(status_names)}
    done = status == code["completed"]
    macs = np.asarray(timeline["macs"], float)
    nbytes = np.asarray(timeline["bytes_down"], float) + np.asarray(timeline["bytes_up"], float)
    device = np.asarray(timeline["device"], np.int64)
    rows: list[dict[str, float | str | int]] = []
    for k, name in enumerate(class_names):
        mine = cls == k
        sel = int(mine.sum())
        row: dict[str, float | str | int] = {"device_class": name,
                                             "devices": int(class_sizes[k]), "selected": sel}
        for s in SHARES:
            row[f"{s}_share"] = float((mine & (status == code[s])).sum()) / sel if sel \
                else math.nan
        row["macs_contributed"] = float(macs[mine & done].sum())
        row["macs_wasted"] = float(macs[mine & ~done].sum())
        row["bytes"] = float(nbytes[mine].sum())
        # aggregated updates per device of the class; devices never aggregated count 0
        _, counts = np.unique(device[mine & done], return_counts=True)
        x = np.zeros(int(class_sizes[k]))
        x[:counts.size] = counts
        row["jain_participation"] = jain(x)
        rows.append(row)
    return rows
