"""Helpers shared by the scheduling tests: constants of the trained home, times, polling, settings."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

T0 = "2026-01-01T00:00:00Z"
T4 = "2026-01-01T04:00:00Z"
MODELS = 18
ROWS_PER_HOUR = MODELS * 60
SHARDS = 3
SECRET_ENV = ("FLEETSCORE_TOKEN", "AWS_SECRET_ACCESS_KEY", "AZURE_STORAGE_CONNECTION_STRING")
_EXECUTOR = "[executor]\nworkers = 1\nshard_models = 6\n"
_SCHEDULE = {"retries": 1, "retry_backoff": 0.05, "lease": 2, "poll": 0.2}


def settings_toml(**values: object) -> str:
    """fleetscore.toml for the test home: one worker, 3 shards, short retries and leases (``values`` override)."""
    body = "".join(f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {v!r}\n" for k, v in (_SCHEDULE | values).items())
    return _EXECUTOR + "[schedule]\n" + body


def set_schedule_settings(home: Path, **values: object) -> None:
    (home / "fleetscore.toml").write_text(settings_toml(**values))


def us(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc).timestamp() * 1_000_000)


def shard_path(home: Path, shard: int, version: str = "v1") -> Path:
    return home / "data" / "models" / version / f"shard-{shard:05d}.npz"


def wait_for(condition: Callable[[], object], timeout: float = 60.0, what: str = "condition") -> object:
    """Poll until ``condition()`` is truthy (no timing is asserted; the timeout only ends a hung test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
