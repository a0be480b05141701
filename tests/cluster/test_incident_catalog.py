"""Incident storage on both catalog databases: window fragments as Arrow, new incidents inserted as columns,
the rebuild's incidents read as columns, and the migration of an older catalog's JSON fragments."""

from __future__ import annotations

import json

import sqlalchemy as sa

from fleetscore.catalog.incidents import IncidentStore, incident_values
from fleetscore.catalog.sql import SCHEMA_VERSION, Catalog
from fleetscore.core.incidents import OPEN, RESOLVED, Fragment, Rules, SensorShare, fragment_table, fragments, new_incidents

MIN = 60_000_000
PARTS = [Fragment("pump \"7\"", 10 * MIN, 20 * MIN, 3, 7.5, (SensorShare("flow", 2), SensorShare("t\u00e9", 1))),
         Fragment("fan", 5 * MIN, 5 * MIN, 1, None, (SensorShare("rpm", 1),))]


def test_fragments_and_new_incidents_as_columns(catalog_url: str) -> None:
    catalog = Catalog(catalog_url)
    store = IncidentStore(catalog)
    try:
        groups = fragment_table(sorted(PARTS, key=lambda f: (f.device, f.start_us)))
        rules = Rules.counted(60.0, 5, 30, horizon_us=40 * MIN)
        new = new_incidents(groups, dict.fromkeys(("fan", "pump \"7\""), rules), lambda n: [f"i{k}" for k in range(n)], 9)
        with store.window_update() as tx:
            tx.put_fragments(0, 60 * MIN, groups)
            tx.insert(new)
        with store.window_update() as tx:
            assert fragments(tx.fragments(["fan", "pump \"7\""], 0, 60 * MIN)) == fragments(groups)
            near = tx.incidents(["pump \"7\"", "fan"], 0, 60 * MIN)
            assert tx.take_fragments(0, 60 * MIN) == {"fan", "pump \"7\""}
        assert sorted(i.id for i in incident_values(near)) == ["i0", "i1"]
        fan, pump = store.get("i0"), store.get("i1")
        assert (fan.device, fan.status, fan.severity, fan.resolved_us, fan.superseded_by) == ("fan", RESOLVED, None, 35 * MIN, ())
        assert (pump.status, pump.flags, pump.sensors, pump.updated_us) == (OPEN, 3, PARTS[0].sensors, 9)
        assert [i.id for i in store.list(sensor="t\u00e9")] == ["i1"]
    finally:
        catalog.close()


def test_json_fragments_of_an_older_catalog_become_arrow(catalog_url: str) -> None:
    Catalog(catalog_url).close()
    old = [[f.device, f.start_us, f.last_us, f.flags, f.severity, [[s.sensor, s.flags] for s in f.sensors]] for f in PARTS]
    engine = sa.create_engine(catalog_url)
    with engine.begin() as conn:  # the shape schema 3 left: JSON text per window
        conn.execute(sa.text("DROP TABLE incident_parts"))
        conn.execute(sa.text("CREATE TABLE incident_fragments (window_from BIGINT NOT NULL, window_to BIGINT NOT NULL, "
                             "fragments TEXT NOT NULL, PRIMARY KEY (window_from, window_to))"))
        conn.execute(sa.text("INSERT INTO incident_fragments VALUES (0, 100, :f)"), {"f": json.dumps(old)})
        conn.execute(sa.text("UPDATE meta SET value = '3' WHERE key = 'schema'"))
    engine.dispose()
    catalog = Catalog(catalog_url)
    try:
        with IncidentStore(catalog).window_update() as tx:
            assert fragments(tx.fragments([f.device for f in PARTS], 0, 100 * MIN)) == PARTS
        with catalog.engine.connect() as conn:
            assert not sa.inspect(conn).has_table("incident_fragments")
            assert conn.execute(sa.text("SELECT value FROM meta WHERE key = 'schema'")).scalar() == str(SCHEMA_VERSION)
    finally:
        catalog.close()
