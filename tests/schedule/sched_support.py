"""Helpers shared by the scheduling tests: constants of the trained home, times, polling, settings."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from fleetscore.catalog.sql import Catalog

T0 = "2026-01-01T00:00:00Z"
T4 = "2026-01-01T04:00:00Z"
MODELS = 18
ROWS_PER_HOUR = MODELS * 60
SHARDS = 3  # with shard_models = 6 below; tests read the actual shards with shard_sizes()
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


def shard_sizes(fleet: object, version: str = "v1") -> dict[int, int]:
    """Models per shard of a version, from its manifest (``fleet`` is a Fleet)."""
    shards = fleet.models(version).column("shard").to_pylist()  # type: ignore[attr-defined]
    return {s: shards.count(s) for s in sorted(set(shards))}


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


def check_lease_rules(catalog: "Catalog") -> None:
    """The lease rules every catalog backend must keep (a fake clock drives expiry)."""
    from fleetscore.catalog.leases import Leases, LeaseState

    now = [1000.0]
    leases = Leases(catalog, clock=lambda: int(now[0] * 1e6))
    assert leases.acquire("score:w1", "a", ttl_s=10)
    assert not leases.acquire("score:w1", "b", ttl_s=10)
    assert leases.acquire("score:w2", "b", ttl_s=100)  # other keys are free
    now[0] += 5
    assert leases.renew("score:w1", "a", ttl_s=10) is LeaseState.HELD  # now valid until 1015
    now[0] += 8
    assert not leases.acquire("score:w1", "b", ttl_s=10)
    now[0] += 4  # 1017: a stopped renewing (crashed); its lease expired at 1015
    assert leases.acquire("score:w1", "b", ttl_s=10)
    assert leases.renew("score:w1", "a", ttl_s=10) is LeaseState.LOST
    leases.set_run("score:w1", "b", "ab" * 8)
    assert leases.request_cancel("ab" * 8)
    assert leases.renew("score:w1", "b", ttl_s=10) is LeaseState.CANCEL
    leases.release("score:w1", "b")
    assert not leases.request_cancel("ab" * 8) and [x.key for x in leases.live()] == ["score:w2"]


def check_one_winner(catalog_url: str, racers: int = 8) -> None:
    """Threads with their own catalog connections race for one key at once: exactly one gets it."""
    import threading

    from fleetscore.catalog.leases import Leases
    from fleetscore.catalog.sql import Catalog

    catalogs = [Catalog(catalog_url) for _ in range(racers)]
    barrier = threading.Barrier(racers)
    wins: list[str] = []

    def race(i: int) -> None:
        barrier.wait()
        if Leases(catalogs[i]).acquire("score:race", f"h{i}", ttl_s=30):
            wins.append(f"h{i}")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(wins) == 1 and [x.holder for x in Leases(catalogs[0]).live("score:race")] == wins
    finally:
        for c in catalogs:
            c.close()
