"""What a run's files need to know of the fleet beyond the engine's log.

The engine's timeline names devices by id; a study asks about device classes and about
how much data each device holds. :class:`RunFacts` carries those from the parts that know
them (the fleet, the data partition) to the writers of results, without the writers
rebuilding the fleet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RunFacts:
    """Per-device facts of one run.

    Attributes
    ----------
    class_names : the fleet's device classes, in scenario order
    class_of : class index per device (length = devices)
    samples : training samples per device (length = devices)
    batch_size : the scenario's local mini-batch size
    trains : whether the run trains for real (False in timing-only mode, where the
        samples per device are counted but never used)
    """

    class_names: tuple[str, ...]
    class_of: np.ndarray
    samples: np.ndarray
    batch_size: int
    trains: bool = True

    def class_sizes(self) -> np.ndarray:
        """Devices per class, in ``class_names`` order."""
        return np.bincount(np.asarray(self.class_of, np.int64),
                           minlength=len(self.class_names))

    def samples_stats(self) -> tuple[int, float, int]:
        """(min, median, max) training samples per device."""
        s = np.asarray(self.samples)
        if s.size == 0:
            return 0, 0.0, 0
        return int(s.min()), float(np.median(s)), int(s.max())

    def below_one_batch(self) -> int:
        """Devices holding fewer samples than one mini-batch."""
        return int((np.asarray(self.samples) < self.batch_size).sum())
