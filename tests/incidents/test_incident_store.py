"""The incident store on its own: filters (sensor names that look like wildcards or JSON), order, marks, spans,
window fragments (their migration and both databases: tests/cluster/test_incident_catalog.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetscore.catalog.incidents import IncidentStore
from fleetscore.catalog.sql import Catalog
from fleetscore.core.incidents import OPEN, RESOLVED, SUPERSEDED, Fragment, Incident, SensorShare, fragment_table, fragments
from fleetscore.errors import InputError, NotFoundError

TRICKY = ["te%p", "te_p", "Temp", "temp", 'a", 1], ["b', "\u00e9t\u00e9", "x\\y"]


def make(i: int, sensors: list[str], status: str = OPEN, severity: float | None = 50.0) -> Incident:
    return Incident(id=f"i{i}", device=f"dev <{i}>", start_us=i * 1000, last_us=i * 1000 + 10, status=status,
                    severity=severity, flags=len(sensors), sensors=tuple(SensorShare(s, 1) for s in sensors),
                    updated_us=0)


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    s = IncidentStore(catalog)
    with s.window_update() as tx:
        tx.save([make(k, [name]) for k, name in enumerate(TRICKY)]
                + [make(20, ["temp"], RESOLVED, None), make(21, ["temp"], SUPERSEDED)])
    yield s
    catalog.close()


def test_sensor_filter_is_exact_for_any_name(store: IncidentStore) -> None:
    for k, name in enumerate(TRICKY):
        found = store.list(sensor=name)
        expected = {f"i{k}"} | ({"i20"} if name == "temp" else set())
        assert {i.id for i in found} == expected, name
    assert store.list(sensor="te") == [] and store.list(sensor="%") == []


def test_order_status_and_severity_filters(store: IncidentStore) -> None:
    listed = store.list()
    assert [i.status for i in listed][-1] == RESOLVED and "i21" not in {i.id for i in listed}
    assert [i.id for i in store.list(status=SUPERSEDED)] == ["i21"]
    assert {i.id for i in store.list(status="active")} == {f"i{k}" for k in range(len(TRICKY))}
    assert "i20" not in {i.id for i in store.list(min_severity=0)}  # no severity: below every threshold
    assert store.count_active() == len(TRICKY)
    assert [i.id for i in store.list(status="active", limit=2)] == [f"i{len(TRICKY) - 1}", f"i{len(TRICKY) - 2}"]
    with pytest.raises(InputError, match="status 'nope'"):
        store.list(status="nope")
    with pytest.raises(InputError, match="limit"):
        store.list(limit=0)


def test_ack_mark_and_spans(store: IncidentStore) -> None:
    assert store.acknowledge("i0", " ann ", 5).acknowledged_by == "ann"
    with pytest.raises(InputError, match="superseded"):
        store.acknowledge("i21", "ann", 5)
    with pytest.raises(NotFoundError, match="unknown incident"):
        store.mark("zz", "true", "", "ann", 5)
    with pytest.raises(InputError, match="--by"):
        store.mark("i1", "true", "", "a\nb", 5)
    store.mark("i1", "true", "first", "ann", 6)
    store.mark("i1", "false", "then", "bo", 7)
    store.mark("i2", "true", "", "bo", 8)
    assert store.get("i1").mark == "false" and [m.by for m in store.get("i1").marks] == ["ann", "bo"]
    assert store.marked_spans("true") == [("dev <2>", 2000, 2010, ("Temp",))]
    assert store.marked_spans("false") == [("dev <1>", 1000, 1010, ("te_p",))]


def test_window_fragments_round_trip_and_are_replaced(store: IncidentStore) -> None:
    parts = fragment_table([Fragment("pump", 10, 20, 3, 7.5, (SensorShare("flow", 2), SensorShare("t", 1))),
                            Fragment("fan \"1\"", 5, 5, 1, None, (SensorShare("rpm", 1),))])
    with store.window_update() as tx:
        assert tx.take_fragments(0, 100) == set()
        tx.put_fragments(0, 100, parts)
        tx.put_fragments(100, 200, fragment_table([Fragment("pump", 150, 150, 1, 1.0, (SensorShare("t", 1),))]))
    with store.window_update() as tx:
        assert tx.fragments(["pump", "fan \"1\""], 0, 99).to_pylist() == parts.to_pylist()
        assert tx.fragments(["pump"], 15, 150).column("start_us").to_pylist() == [10, 10, 150]  # both windows meet it
        assert tx.fragments(["valve"], 0, 200).num_rows == 0
        assert tx.take_fragments(0, 100) == {"pump", "fan \"1\""}
        assert fragments(tx.fragments(["pump"], 0, 200)) == [Fragment("pump", 150, 150, 1, 1.0, (SensorShare("t", 1),))]

