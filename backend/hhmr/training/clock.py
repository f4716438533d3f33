"""The training budget's clock: wall time less the time the hypervisor took from the CPUs.

On a shared virtual machine the host can take a large, varying share of the CPUs ("steal"
in /proc/stat): the same wall-clock budget then buys anywhere from half to all of the steps.
Counting only the time the CPUs were the machine's own keeps runs comparable, and a run of
"90 minutes on this CPU" means 90 minutes of it. Where /proc/stat is missing (not Linux),
steal counts as zero and the clock is the wall clock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


def stolen_seconds(stat: Path = Path("/proc/stat")) -> float:
    """Seconds of steal since boot, averaged over the CPUs (0.0 when unknown)."""
    try:
        fields = stat.read_text().split("\n", 1)[0].split()
        if fields[0] != "cpu" or len(fields) < 9:
            return 0.0
        return int(fields[8]) / os.sysconf("SC_CLK_TCK") / (os.cpu_count() or 1)
    except (OSError, ValueError, IndexError):
        return 0.0


class RunClock:
    """Seconds a run has had the CPUs (`seconds`) and wall seconds (`wall_seconds`), both
    continuing from what a resumed run had used before."""

    def __init__(self, seconds_before: float = 0.0, wall_before: float = 0.0,
                 steal: Callable[[], float] = stolen_seconds,
                 wall: Callable[[], float] = time.perf_counter) -> None:
        self._steal, self._wall = steal, wall
        self._steal0, self._wall0 = steal(), wall()
        self.before, self.wall_before = seconds_before, wall_before

    def wall_seconds(self) -> float:
        return self.wall_before + self._wall() - self._wall0

    def seconds(self) -> float:
        stolen = max(0.0, self._steal() - self._steal0)
        return self.before + max(0.0, self._wall() - self._wall0 - stolen)

    def minutes(self) -> float:
        return self.seconds() / 60
