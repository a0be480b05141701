"""Incidents in the catalog: the incidents with their sensors, their marks, and the per-window fragments they are built from.

``incident_parts`` holds one row per scored window: each device's groups of flags in it, as one Arrow
IPC stream (a `fleetscore.core.incidents.FRAGMENTS` table; schemas before 4 kept them as JSON text in
``incident_fragments``); re-scoring a window replaces its fragments in the same transaction that
updates the incidents built from them (:meth:`IncidentStore.window_update`), so a window counts once
however often it is scored.
``incident_windows`` records the windows that were built, whose newest end is the horizon quiet
periods are measured against. Incidents are never deleted: a re-score that splits or removes one
marks it ``superseded``. Times are µs since the epoch (BigInteger), so spans are range queries.
"""

from __future__ import annotations

import builtins
import functools
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from fleetscore.catalog.dialect import transaction_lock, upsert
from fleetscore.catalog.migrate import STEPS
from fleetscore.catalog.sql import Catalog, metadata
from fleetscore.core.incidents import (
    ACKNOWLEDGED,
    ACTIVE,
    FRAGMENTS,
    MARKS,
    OPEN,
    STATUSES,
    SUPERSEDED,
    Fragment,
    Incident,
    Mark,
    SensorShare,
    fragment_table,
    lookup,
)
from fleetscore.errors import InputError, NotFoundError

#: ``list(status=...)`` also takes this: open or acknowledged.
ACTIVE_FILTER = "active"
#: Longest operator name and note kept with an acknowledgement or mark.
MAX_BY, MAX_NOTE = 200, 4000
#: PostgreSQL advisory lock held while a window's incidents are rebuilt (SQLite serialises writers itself).
INCIDENTS_LOCK = 0x666C7449
_CHUNK = 500  # devices per IN (...) query
_NEAR_CHUNK = 10_000  # devices per query of a rebuild's incidents (within SQLite's and PostgreSQL's bound parameters)

incidents_table = sa.Table(
    "incidents",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("device", sa.String(300), nullable=False, index=True),
    sa.Column("start_us", sa.BigInteger, nullable=False, index=True),
    sa.Column("last_us", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("severity", sa.Float),
    sa.Column("flags", sa.Integer, nullable=False),
    sa.Column("sensors", sa.Text, nullable=False),  # JSON [[sensor, flags], ...], most flags first
    sa.Column("interval_s", sa.Float, nullable=False),
    sa.Column("updated_us", sa.BigInteger, nullable=False),
    sa.Column("acknowledged_by", sa.String(MAX_BY)),
    sa.Column("acknowledged_us", sa.BigInteger),
    sa.Column("resolved_us", sa.BigInteger),
    sa.Column("superseded_by", sa.Text, nullable=False, default="[]"),
)
marks_table = sa.Table(
    "incident_marks",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("incident_id", sa.String(32), nullable=False, index=True),
    sa.Column("mark", sa.String(16), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("by", sa.String(MAX_BY), nullable=False),
    sa.Column("at_us", sa.BigInteger, nullable=False),
)
parts_table = sa.Table(
    "incident_parts",
    metadata,
    sa.Column("window_from", sa.BigInteger, primary_key=True),
    sa.Column("window_to", sa.BigInteger, primary_key=True),
    # the window's FRAGMENTS table as a compressed Arrow IPC stream: one row per window, so replacing a window's
    # fragments is one write however many devices flagged, and reading them back decodes columns, not objects
    sa.Column("fragments", sa.LargeBinary, nullable=False),
)
built_table = sa.Table(
    "incident_windows",
    metadata,
    sa.Column("window_from", sa.BigInteger, primary_key=True),
    sa.Column("window_to", sa.BigInteger, primary_key=True),
    sa.Column("run_id", sa.String(32), nullable=False),
    sa.Column("built_us", sa.BigInteger, nullable=False),
)


class IncidentStore:
    """Incidents with their sensors and marks; acknowledging and marking them; the window updates that build them."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.engine = catalog.engine

    def list(self, status: str | None = None, device: str | None = None, since_us: int | None = None,
             limit: int = 100, sensor: str | None = None, min_severity: float | None = None) -> list[Incident]:
        """Incidents, active first, then newest first. Superseded ones only when ``status`` asks for them.

        ``since_us``: those whose last flag is at or after it; ``sensor``: those involving it;
        ``min_severity``: those whose peak is at least it.
        """
        t = incidents_table
        query = sa.select(t)
        if status is None:
            query = query.where(t.c.status != SUPERSEDED)
        elif status == ACTIVE_FILTER:
            query = query.where(t.c.status.in_(sorted(ACTIVE)))
        elif status in STATUSES:
            query = query.where(t.c.status == status)
        else:
            raise InputError(f"status {status[:40]!r} is not one of {', '.join((*STATUSES, ACTIVE_FILTER))}")
        if device is not None:
            query = query.where(t.c.device == device)
        if since_us is not None:
            query = query.where(t.c.last_us >= since_us)
        if min_severity is not None:
            query = query.where(t.c.severity >= min_severity)
        if sensor is not None:  # its entry in the sensors JSON, found exactly (no LIKE wildcards or case folding)
            find = sa.func.strpos if self.engine.dialect.name == "postgresql" else sa.func.instr
            query = query.where(find(t.c.sensors, "[" + json.dumps(sensor) + ", ") > 0)
        if not 1 <= limit <= 100_000:
            raise InputError(f"limit must be between 1 and 100000, got {limit}")
        active_first = sa.case((t.c.status.in_(sorted(ACTIVE)), 0), else_=1)
        query = query.order_by(active_first, t.c.start_us.desc(), t.c.id).limit(limit)
        with self.engine.connect() as conn:
            return _load(conn, conn.execute(query).mappings().all())

    def get(self, incident_id: str) -> Incident:
        with self.engine.connect() as conn:
            found = _load(conn, conn.execute(sa.select(incidents_table).where(incidents_table.c.id == incident_id))
                          .mappings().all())
        if not found:
            raise NotFoundError(f"unknown incident {incident_id[:64]!r} (see `fleetscore incidents list`)")
        return found[0]

    def acknowledge(self, incident_id: str, by: str, at_us: int) -> Incident:
        """An operator takes the incident: an open one becomes ``acknowledged`` (until it resolves)."""
        by = _name(by)
        incident = self.get(incident_id)
        if incident.status == SUPERSEDED:
            raise InputError(f"incident {incident_id} was superseded by {', '.join(incident.superseded_by) or 'nothing'}"
                             " (a re-score regrouped its flags): acknowledge those instead")
        t = incidents_table
        with self.engine.begin() as conn:  # under the rebuild's lock: a rebuild never writes back a stale row over it
            transaction_lock(conn, INCIDENTS_LOCK)
            mine = t.c.id == incident_id
            conn.execute(sa.update(t).where(mine & (t.c.status != SUPERSEDED)).values(acknowledged_by=by,
                                                                                      acknowledged_us=at_us))
            conn.execute(sa.update(t).where(mine & (t.c.status == OPEN)).values(status=ACKNOWLEDGED))
        return self.get(incident_id)

    def mark(self, incident_id: str, mark: str, note: str, by: str, at_us: int) -> Incident:
        """Keep an operator's verdict (``true``, ``false`` or ``ignore``) with its note, name and time."""
        if mark not in MARKS:
            raise InputError(f"mark {mark[:40]!r} is not one of {', '.join(MARKS)}")
        if len(note) > MAX_NOTE:
            raise InputError(f"note is longer than {MAX_NOTE} characters")
        by = _name(by)
        self.get(incident_id)
        with self.engine.begin() as conn:
            conn.execute(sa.insert(marks_table).values(incident_id=incident_id, mark=mark, note=note, by=by, at_us=at_us))
        return self.get(incident_id)

    def marked_spans(self, mark: str) -> builtins.list[tuple[str, int, int, tuple[str, ...]]]:
        """(device, start, last flag, sensors) of the incidents whose latest mark is ``mark``."""
        if mark not in MARKS:
            raise InputError(f"mark {mark[:40]!r} is not one of {', '.join(MARKS)}")
        m, t = marks_table, incidents_table
        latest = sa.select(m.c.incident_id, sa.func.max(m.c.seq).label("seq")).group_by(m.c.incident_id).subquery()
        query = (sa.select(t.c.device, t.c.start_us, t.c.last_us, t.c.sensors)
                 .join(latest, latest.c.incident_id == t.c.id).join(m, m.c.seq == latest.c.seq)
                 .where(m.c.mark == mark).order_by(t.c.device, t.c.start_us))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [(r.device, int(r.start_us), int(r.last_us), tuple(s.sensor for s in _shares(r.sensors))) for r in rows]

    def count_active(self) -> int:
        t = incidents_table
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.status.in_(sorted(ACTIVE))))
                       .scalar() or 0)

    @contextmanager
    def window_update(self) -> Iterator[WindowUpdate]:
        """One transaction that rebuilds a window's part of the incidents; nobody else rebuilds meanwhile."""
        with self.engine.begin() as conn:
            transaction_lock(conn, INCIDENTS_LOCK)
            yield WindowUpdate(conn)


class WindowUpdate:
    """Reads and writes of one window's rebuild, inside its transaction (:meth:`IncidentStore.window_update`)."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn

    def take_fragments(self, from_us: int, to_us: int) -> set[str]:
        """Delete the window's fragments (its first write: SQLite then holds the write lock); their devices."""
        p = parts_table
        key = (p.c.window_from == from_us) & (p.c.window_to == to_us)
        return {d for r in self.conn.execute(sa.delete(p).where(key).returning(p.c.fragments))
                for d in pc.unique(decode_fragments(r[0]).column("device")).to_pylist()}

    def put_fragments(self, from_us: int, to_us: int, fragments: pa.Table) -> None:
        """Store the window's :data:`FRAGMENTS` table (nothing when it has none)."""
        if fragments.num_rows:
            self.conn.execute(sa.insert(parts_table).values(window_from=from_us, window_to=to_us,
                                                            fragments=encode_fragments(fragments)))

    def fragments(self, devices: Iterable[str], lo_us: int, hi_us: int) -> pa.Table:
        """Fragments of ``devices`` (of every window) that meet [lo, hi], as one :data:`FRAGMENTS` table."""
        p = parts_table
        query = sa.select(p.c.fragments).where((p.c.window_to > lo_us) & (p.c.window_from <= hi_us))
        tables = [decode_fragments(blob) for (blob,) in self.conn.execute(query)]
        if not tables:
            return FRAGMENTS.empty_table()
        found = pa.concat_tables(tables)
        wanted = lookup(found.column("device"), sorted(set(devices))) >= 0
        meets = pc.and_(pc.greater_equal(found.column("last_us"), lo_us), pc.less_equal(found.column("start_us"), hi_us))
        return found.filter(pc.and_(pa.array(wanted), meets))

    def incidents(self, devices: Iterable[str], lo_us: int, hi_us: int) -> pa.Table:
        """Incidents (not superseded) of ``devices`` that meet [lo, hi], as columns (:func:`incident_values` makes
        values of those that change); ``sensors`` stays JSON text, compared as it is."""
        t = incidents_table
        rows: list[Any] = []
        for chunk in _chunks(devices, _NEAR_CHUNK):
            query = sa.select(t).where(t.c.device.in_(chunk) & (t.c.status != SUPERSEDED) & (t.c.last_us >= lo_us)
                                       & (t.c.start_us <= hi_us))
            rows += self.conn.execute(query).all()
        columns = list(zip(*rows)) if rows else [()] * len(INCIDENT_COLUMNS)
        return pa.table([pa.array(c, f.type) for c, f in zip(columns, INCIDENT_COLUMNS)], schema=INCIDENT_COLUMNS)

    def with_marks(self, incidents: Sequence[Incident]) -> list[Incident]:
        """The incidents with their stored marks (the rebuild reads incidents without them)."""
        marks = _marks(self.conn, [i.id for i in incidents])
        return [i.with_changes(marks=tuple(marks[i.id])) if i.id in marks else i for i in incidents]

    def quiet(self, quiet_period: int, horizon_us: int) -> list[Incident]:
        """Active incidents whose device has been quiet for ``quiet_period`` of its readings by ``horizon_us``."""
        t = incidents_table
        query = sa.select(t).where(t.c.status.in_(sorted(ACTIVE))
                                   & (t.c.last_us + quiet_period * t.c.interval_s * 1e6 <= horizon_us))
        return _load(self.conn, self.conn.execute(query).mappings().all())

    def built(self, from_us: int, to_us: int, run_id: str, at_us: int) -> int:
        """Record the window as built by ``run_id``; returns the horizon: the newest built window's end."""
        upsert(self.conn, built_table, [{"window_from": from_us, "window_to": to_us, "run_id": run_id, "built_us": at_us}])
        return int(self.conn.execute(sa.select(sa.func.max(built_table.c.window_to))).scalar() or to_us)

    def save(self, incidents: Sequence[Incident]) -> None:
        """Insert or replace the incidents (their marks are kept apart, never rewritten)."""
        upsert(self.conn, incidents_table, [_row(i) for i in incidents])

    def insert(self, incidents: pa.Table) -> None:
        """Insert new incidents given as columns (`fleetscore.core.incidents.new_incidents`)."""
        if not incidents.num_rows:
            return
        table = _complete(incidents.sort_by("id"))  # in key order: the primary key's B-tree fills at its end
        statement = sa.insert(incidents_table).compile(dialect=self.conn.dialect)
        if statement.positional:  # the rows straight to the driver, as tuples: no bound parameters built per row
            rows: list[Any] = list(zip(*[table.column(name).to_pylist() for name in statement.positiontup or ()]))
        else:
            rows = table.to_pylist()
        self.conn.exec_driver_sql(str(statement), rows)


#: The incidents table's columns as Arrow types (:meth:`WindowUpdate.incidents`).
INCIDENT_COLUMNS = pa.schema([(c.name, pa.string() if isinstance(c.type, (sa.String, sa.Text)) else
                               pa.float64() if isinstance(c.type, sa.Float) else pa.int64())
                              for c in incidents_table.columns])
_IPC = pa.ipc.IpcWriteOptions(compression="zstd")


def encode_fragments(fragments: pa.Table) -> bytes:
    """A :data:`FRAGMENTS` table as a compressed Arrow IPC stream (what ``incident_parts`` keeps)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, FRAGMENTS, options=_IPC) as writer:
        writer.write_table(fragments.cast(FRAGMENTS))
    return sink.getvalue().to_pybytes()


def decode_fragments(blob: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(blob)).read_all()


def legacy_fragments(text: str) -> pa.Table:
    """The JSON fragments of a window before schema 4 (``[[device, start, last, flags, severity, [[sensor, flags], ...]], ...]``)
    as a :data:`FRAGMENTS` table (the v4 migration)."""
    return fragment_table([Fragment(d, start, last, flags, severity, _share_values(tuple(map(tuple, shares))))
                           for d, start, last, flags, severity, shares in json.loads(text)])


def incident_values(table: pa.Table) -> list[Incident]:
    """Incidents as columns (:meth:`WindowUpdate.incidents`, or new ones) as values (without their marks)."""
    return _load(None, _complete(table).to_pylist())


def _complete(table: pa.Table) -> pa.Table:
    """Incident columns with those left out added: nulls, ``superseded_by`` none."""
    n = table.num_rows
    columns = [table.column(f.name) if f.name in table.column_names else
               pa.array(["[]"] * n, f.type) if f.name == "superseded_by" else pa.nulls(n, f.type)
               for f in INCIDENT_COLUMNS]
    return pa.table(columns, schema=INCIDENT_COLUMNS)


def _row(i: Incident) -> dict[str, Any]:
    return {"id": i.id, "device": i.device, "start_us": i.start_us, "last_us": i.last_us, "status": i.status,
            "severity": i.severity, "flags": i.flags, "sensors": _shares_json(i.sensors), "interval_s": i.interval_s,
            "updated_us": i.updated_us, "acknowledged_by": i.acknowledged_by, "acknowledged_us": i.acknowledged_us,
            "resolved_us": i.resolved_us, "superseded_by": json.dumps(list(i.superseded_by))}


def _shares_json(shares: Sequence[SensorShare]) -> str:
    return json.dumps([[s.sensor, s.flags] for s in shares])


@functools.lru_cache(maxsize=4096)
def _shares(text: str) -> tuple[SensorShare, ...]:
    """A sensors JSON column as values (cached: most small incidents share a handful of these texts)."""
    return _share_values(tuple(map(tuple, json.loads(text))))


@functools.lru_cache(maxsize=4096)
def _share_values(pairs: tuple[tuple[str, int], ...]) -> tuple[SensorShare, ...]:
    return tuple([SensorShare(s, int(n)) for s, n in pairs])


def _marks(conn: sa.Connection, ids: Sequence[str]) -> dict[str, list[Mark]]:
    marks: dict[str, list[Mark]] = {}
    for chunk in _chunks(ids):
        m = marks_table
        for r in conn.execute(sa.select(m).where(m.c.incident_id.in_(chunk)).order_by(m.c.seq)).mappings():
            marks.setdefault(r["incident_id"], []).append(Mark(r["mark"], r["note"], r["by"], int(r["at_us"])))
    return marks


def _load(conn: sa.Connection | None, rows: Sequence[Any]) -> list[Incident]:
    """Incident rows with their marks (one more query on ``conn`` for all of them), or without (``conn`` None)."""
    found = _marks(conn, [r["id"] for r in rows]) if conn is not None else {}
    return [Incident(id=r["id"], device=r["device"], start_us=r["start_us"], last_us=r["last_us"], status=r["status"],
                     severity=r["severity"], flags=r["flags"], sensors=_shares(r["sensors"]), updated_us=r["updated_us"],
                     acknowledged_by=r["acknowledged_by"], acknowledged_us=r["acknowledged_us"],
                     resolved_us=r["resolved_us"],
                     superseded_by=() if r["superseded_by"] == "[]" else tuple(json.loads(r["superseded_by"])),
                     marks=tuple(found.get(r["id"], ())), interval_s=r["interval_s"])
            for r in rows]


def _chunks(items: Iterable[str], size: int = _CHUNK) -> Iterator[list[str]]:
    items = sorted(set(items))
    for a in range(0, len(items), size):
        yield items[a:a + size]


def _name(by: str) -> str:
    """An operator's name as given (trimmed); InputError if empty or too long."""
    name = by.strip()
    if not name or len(name) > MAX_BY or any(ord(c) < 32 for c in name):
        raise InputError(f"--by must be a name of 1 to {MAX_BY} printable characters, got {by[:40]!r}")
    return name


def _fragments_as_arrow(conn: sa.Connection) -> None:
    """Catalog v4: each window's incident fragments as one Arrow IPC blob (``incident_parts``) instead of JSON
    text (``incident_fragments``): the JSON rows are converted, then their table dropped."""
    parts_table.create(conn, checkfirst=True)
    if not sa.inspect(conn).has_table("incident_fragments"):
        return
    rows = conn.execute(sa.text("SELECT window_from, window_to, fragments FROM incident_fragments")).all()
    parts = [{"window_from": a, "window_to": b, "fragments": encode_fragments(legacy_fragments(text))}
             for a, b, text in rows]
    if parts:
        conn.execute(sa.insert(parts_table), parts)
    conn.execute(sa.text("DROP TABLE incident_fragments"))


STEPS[4] = _fragments_as_arrow
