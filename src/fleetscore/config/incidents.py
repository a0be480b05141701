"""Settings of incident building: the ``[incidents]`` section of fleetscore.toml.

    [incidents]
    merge_gap = 5        # flags of a device at most this many of its readings apart are one incident
    quiet_period = 30    # an incident resolves after this many of the device's readings without a flag

Both count readings of the device (its learned sampling interval), so one setting fits a fleet of
second- and hour-sampled devices alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fleetscore.config.values import Parser, check_range, positive_whole
from fleetscore.errors import ConfigError

DEFAULT_MERGE_GAP = 5
DEFAULT_QUIET_PERIOD = 30
#: Largest gap or quiet period, in readings.
MAX_READINGS = 100_000


@dataclass(frozen=True, kw_only=True)
class IncidentSettings:
    """Resolved ``[incidents]`` settings (``Config.incidents``)."""

    merge_gap: int = DEFAULT_MERGE_GAP
    quiet_period: int = DEFAULT_QUIET_PERIOD

    KEYS: ClassVar[dict[str, tuple[str, Parser]]] = {
        "merge_gap": ("merge_gap", positive_whole), "quiet_period": ("quiet_period", positive_whole)}

    def checked(self, where: str) -> IncidentSettings:
        check_range(where, "[incidents] merge_gap", self.merge_gap, 1, MAX_READINGS, " readings")
        check_range(where, "[incidents] quiet_period", self.quiet_period, 1, MAX_READINGS, " readings")
        if self.quiet_period < self.merge_gap:
            raise ConfigError(f"{where}: [incidents] quiet_period ({self.quiet_period}) must be at least merge_gap "
                              f"({self.merge_gap}): an incident cannot resolve while a flag could still extend it")
        return self
