"""Settings of scheduling and run operations: the ``[schedule]`` section of fleetscore.toml.

    [schedule]
    retries = 2              # more attempts for a task that raised (0 = none)
    retry_backoff = "2s"     # wait before the first retry, doubled for each next one (or seconds: 0.5)
    lease = "60s"            # a window's lease; renewed while its run works, taken over after a crash
    poll = "30s"             # the scheduler looks at its schedules at least this often
    max_catch_up = 24        # after downtime, run at most this many missed windows per schedule
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fleetscore.config import Config
from fleetscore.errors import ConfigError, InputError
from fleetscore.exec.control import DEFAULT_BACKOFF_S, DEFAULT_RETRIES

DEFAULT_LEASE_S = 60.0
DEFAULT_POLL_S = 30.0
DEFAULT_MAX_CATCH_UP = 24
_KEYS = ("retries", "retry_backoff", "lease", "poll", "max_catch_up")


@dataclass(frozen=True, kw_only=True)
class OpsSettings:
    """Resolved ``[schedule]`` settings; build with :func:`ops_settings`."""

    retries: int = DEFAULT_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    lease_s: float = DEFAULT_LEASE_S
    poll_s: float = DEFAULT_POLL_S
    max_catch_up: int = DEFAULT_MAX_CATCH_UP

    def with_overrides(self, **overrides: Any) -> "OpsSettings":
        """A copy with the given non-None values replaced (how CLI flags apply), checked."""
        values = {k: v for k, v in overrides.items() if v is not None}
        return _checked(replace(self, **values), "flags")


def seconds(value: Any, where: str) -> float:
    """A duration given as a number of seconds or as text like ``30s``, ``5m``, ``1h``."""
    from fleetscore.core.windows import parse_duration

    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a duration like '30s' or a number of seconds, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(parse_duration(value))
        except InputError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    raise ConfigError(f"{where}: expected a duration like '30s' or a number of seconds, got {value!r}")


def ops_settings(config: Config) -> OpsSettings:
    """The ``[schedule]`` settings of a home; ConfigError names the key that is wrong."""
    section = dict(config.extra.get("schedule", {}))
    where = f"{config.home}/fleetscore.toml [schedule]"
    unknown = sorted(set(section) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")
    values: dict[str, Any] = {}
    for key in ("retries", "max_catch_up"):
        if key in section:
            if isinstance(section[key], bool) or not isinstance(section[key], int):
                raise ConfigError(f"{where}: {key} must be a whole number, got {section[key]!r}")
            values[key] = section[key]
    for key, field in (("retry_backoff", "backoff_s"), ("lease", "lease_s"), ("poll", "poll_s")):
        if key in section:
            values[field] = seconds(section[key], f"{where} {key}")
    return _checked(OpsSettings(**values), where)


def _checked(s: OpsSettings, where: str) -> OpsSettings:
    if not 0 <= s.retries <= 20:
        raise ConfigError(f"{where}: retries must be between 0 and 20, got {s.retries}")
    if not 0 <= s.backoff_s <= 3600:
        raise ConfigError(f"{where}: retry backoff must be between 0 and 3600 seconds, got {s.backoff_s}")
    if not 1 <= s.lease_s <= 86_400:
        raise ConfigError(f"{where}: lease must be between 1 second and 1 day, got {s.lease_s}")
    if not 0.05 <= s.poll_s <= 86_400:
        raise ConfigError(f"{where}: poll must be between 0.05 seconds and 1 day, got {s.poll_s}")
    if not 1 <= s.max_catch_up <= 10_000:
        raise ConfigError(f"{where}: max_catch_up must be between 1 and 10000, got {s.max_catch_up}")
    return s
