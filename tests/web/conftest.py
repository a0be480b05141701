"""A home with a real scored fleet, shared by the web tests: runs that succeeded, one partial run, hostile ids."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from web_support import HOSTILE_IDS, T0


@dataclass(frozen=True)
class ScoredHome:
    path: Path
    run_ids: list[str]
    partial_id: str


def _with_hostile_ids(readings: pa.Table) -> pa.Table:
    source = readings.filter(pc.and_(pc.equal(readings.column("device"), "dev-00001"),
                                     pc.equal(readings.column("sensor"), "temperature")))
    parts = [readings]
    for device, sensor in HOSTILE_IDS:
        n = source.num_rows
        parts.append(source.set_column(1, "device", pa.array([device] * n)).set_column(2, "sensor", pa.array([sensor] * n)))
    return pa.concat_tables(parts, promote_options="permissive")


@pytest.fixture(scope="session")
def scored_home(tmp_path_factory: pytest.TempPathFactory) -> ScoredHome:
    """5 devices × 2 sensors (+2 hostile ids), trained on 4 h, 3 hourly runs; the last is partial (broken shard)."""
    from fleetscore.api import Fleet
    from fleetscore.core.simulate import simulate_fleet

    home = tmp_path_factory.mktemp("web") / "home"
    fleet = Fleet.open(home, workers=1, shard_models=4)
    readings = simulate_fleet(5, 2, T0, 7, 60.0, 0.03, 11).select(["ts", "device", "sensor", "value"])
    fleet.import_table(_with_hostile_ids(readings))
    fleet.train(T0, T0 + timedelta(hours=4), workers=1)
    runs = [fleet.score(T0 + timedelta(hours=h), T0 + timedelta(hours=h + 1), workers=1) for h in (4, 5)]
    shard = Path(fleet.config.storage.url) / "models" / "v1" / "shard-00001.npz"
    good = shard.read_bytes()
    shard.write_bytes(b"not a model file")
    partial = fleet.score(T0 + timedelta(hours=6), T0 + timedelta(hours=7), workers=1)
    shard.write_bytes(good)
    fleet.close()
    assert [r.status.value for r in runs] == ["succeeded", "succeeded"] and partial.status.value == "partial"
    return ScoredHome(home, [r.run_id for r in runs] + [partial.run_id], partial.run_id)


@pytest.fixture(scope="session")
def web_fleet(scored_home: ScoredHome):  # type: ignore[no-untyped-def]
    from fleetscore.api import Fleet

    fleet = Fleet.open(scored_home.path)
    yield fleet
    fleet.close()


@pytest.fixture
def make_client(web_fleet, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """An in-process client of ``create_app(fleet, **settings)`` (FLEETSCORE_TOKEN cleared unless set by the test)."""
    from fastapi.testclient import TestClient

    from fleetscore.web.app import create_app

    monkeypatch.delenv("FLEETSCORE_TOKEN", raising=False)
    clients = []

    def make(**settings):  # type: ignore[no-untyped-def]
        client = TestClient(create_app(web_fleet, **settings), follow_redirects=False)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client):  # type: ignore[no-untyped-def]
    return make_client()
