"""Settings of scheduling and run operations: the ``[schedule]`` section of fleetscore.toml.

    [schedule]
    retries = 2              # more attempts for a task that raised (0 = none)
    retry_backoff = "2s"     # wait before the first retry, doubled for each next one (or seconds: 0.5)
    lease = "60s"            # a window's lease; renewed while its run works, taken over after a crash
    poll = "30s"             # the scheduler looks at its schedules at least this often
    max_catch_up = 24        # after downtime, run at most this many missed windows per schedule
    max_failed_models = "5%" # abort a run past this many failed models: a count (1000) or a share; default: never
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from fleetscore.config.values import Parser, seconds, strict_whole
from fleetscore.core.runs import FailureLimit
from fleetscore.errors import ConfigError, InputError

DEFAULT_RETRIES = 2
DEFAULT_BACKOFF_S = 2.0
DEFAULT_LEASE_S = 60.0
DEFAULT_POLL_S = 30.0
DEFAULT_MAX_CATCH_UP = 24


def failure_limit(value: Any, where: str) -> FailureLimit:
    """``max_failed_models``: a whole number of models or a share such as ``"5%"``; ConfigError naming ``where``."""
    try:
        return FailureLimit.parse(value)
    except InputError as exc:
        raise ConfigError(f"{where}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class ScheduleSettings:
    """Resolved ``[schedule]`` settings (``Config.schedule``)."""

    retries: int = DEFAULT_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    lease_s: float = DEFAULT_LEASE_S
    poll_s: float = DEFAULT_POLL_S
    max_catch_up: int = DEFAULT_MAX_CATCH_UP
    #: Failed models past which a run is aborted (``--max-failed-models``); None: a run is never aborted.
    max_failed_models: FailureLimit | None = None

    KEYS: ClassVar[dict[str, tuple[str, Parser]]] = {
        "retries": ("retries", strict_whole), "retry_backoff": ("backoff_s", seconds), "lease": ("lease_s", seconds),
        "poll": ("poll_s", seconds), "max_catch_up": ("max_catch_up", strict_whole),
        "max_failed_models": ("max_failed_models", failure_limit)}

    def with_overrides(self, **overrides: Any) -> ScheduleSettings:
        """A copy with the given non-None values replaced (how CLI flags apply), checked."""
        values = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **values).checked("flags")

    def checked(self, where: str) -> ScheduleSettings:
        if not 0 <= self.retries <= 20:
            raise ConfigError(f"{where}: retries must be between 0 and 20, got {self.retries}")
        if not 0 <= self.backoff_s <= 3600:
            raise ConfigError(f"{where}: retry backoff must be between 0 and 3600 seconds, got {self.backoff_s}")
        if not 1 <= self.lease_s <= 86_400:
            raise ConfigError(f"{where}: lease must be between 1 second and 1 day, got {self.lease_s}")
        if not 0.05 <= self.poll_s <= 86_400:
            raise ConfigError(f"{where}: poll must be between 0.05 seconds and 1 day, got {self.poll_s}")
        if not 1 <= self.max_catch_up <= 10_000:
            raise ConfigError(f"{where}: max_catch_up must be between 1 and 10000, got {self.max_catch_up}")
        return self

