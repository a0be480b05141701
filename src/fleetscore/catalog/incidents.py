"""Incidents in the catalog: the incidents with their sensors, their marks, and the per-window fragments they are built from.

``incident_fragments`` holds one row per scored window: each device's groups of flags in it; re-scoring
a window replaces its fragments in the same transaction that updates the incidents built from
them (:meth:`IncidentStore.window_update`), so a window counts once however often it is scored.
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

import sqlalchemy as sa

from fleetscore.catalog.dialect import transaction_lock, upsert
from fleetscore.catalog.sql import Catalog, metadata
from fleetscore.core.incidents import (
    ACKNOWLEDGED,
    ACTIVE,
    MARKS,
    OPEN,
    STATUSES,
    SUPERSEDED,
    Fragment,
    Incident,
    Mark,
    SensorShare,
)
from fleetscore.errors import InputError, NotFoundError

#: ``list(status=...)`` also takes this: open or acknowledged.
ACTIVE_FILTER = "active"
#: Longest operator name and note kept with an acknowledgement or mark.
MAX_BY, MAX_NOTE = 200, 4000
#: PostgreSQL advisory lock held while a window's incidents are rebuilt (SQLite serialises writers itself).
INCIDENTS_LOCK = 0x666C7449
_CHUNK = 500  # devices per IN (...) query

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
fragments_table = sa.Table(
    "incident_fragments",
    metadata,
    sa.Column("window_from", sa.BigInteger, primary_key=True),
    sa.Column("window_to", sa.BigInteger, primary_key=True),
    # JSON [[device, start_us, last_us, flags, severity, [[sensor, flags], ...]], ...]: one row per window, so
    # replacing a window's fragments is one write however many devices flagged
    sa.Column("fragments", sa.Text, nullable=False),
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
        f = fragments_table
        key = (f.c.window_from == from_us) & (f.c.window_to == to_us)
        return {g[0] for r in self.conn.execute(sa.delete(f).where(key).returning(f.c.fragments)) for g in json.loads(r[0])}

    def put_fragments(self, from_us: int, to_us: int, fragments: Sequence[Fragment]) -> None:
        if fragments:
            rows = [[g.device, g.start_us, g.last_us, g.flags, g.severity, [[s.sensor, s.flags] for s in g.sensors]]
                    for g in fragments]
            self.conn.execute(sa.insert(fragments_table).values(window_from=from_us, window_to=to_us,
                                                                fragments=json.dumps(rows)))

    def fragments(self, devices: Iterable[str], lo_us: int, hi_us: int) -> dict[str, list[Fragment]]:
        """Fragments of ``devices`` (of every window) that meet [lo, hi], per device."""
        f = fragments_table
        wanted = set(devices)
        out: dict[str, list[Fragment]] = {}
        query = sa.select(f.c.fragments).where((f.c.window_to > lo_us) & (f.c.window_from <= hi_us))
        for (text,) in self.conn.execute(query):
            for d, start, last, flags, severity, shares in json.loads(text):
                if d in wanted and last >= lo_us and start <= hi_us:
                    out.setdefault(d, []).append(Fragment(d, start, last, flags, severity,
                                                          _share_values(tuple(map(tuple, shares)))))
        return out

    def incidents(self, devices: Iterable[str], lo_us: int, hi_us: int) -> dict[str, list[Incident]]:
        """Incidents (not superseded) of ``devices`` that meet [lo, hi], per device."""
        t = incidents_table
        out: dict[str, list[Incident]] = {}
        for chunk in _chunks(devices):
            query = sa.select(t).where(t.c.device.in_(chunk) & (t.c.status != SUPERSEDED) & (t.c.last_us >= lo_us)
                                       & (t.c.start_us <= hi_us))
            for inc in _load(self.conn, self.conn.execute(query).mappings().all(), marks=False):
                out.setdefault(inc.device, []).append(inc)
        return out

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


def _load(conn: sa.Connection, rows: Sequence[Any], marks: bool = True) -> list[Incident]:
    """Incident rows with their marks (one more query for all of them), or without (``marks=False``)."""
    found = _marks(conn, [r["id"] for r in rows]) if marks else {}
    return [Incident(id=r["id"], device=r["device"], start_us=r["start_us"], last_us=r["last_us"], status=r["status"],
                     severity=r["severity"], flags=r["flags"], sensors=_shares(r["sensors"]), updated_us=r["updated_us"],
                     acknowledged_by=r["acknowledged_by"], acknowledged_us=r["acknowledged_us"],
                     resolved_us=r["resolved_us"],
                     superseded_by=() if r["superseded_by"] == "[]" else tuple(json.loads(r["superseded_by"])),
                     marks=tuple(found.get(r["id"], ())), interval_s=r["interval_s"])
            for r in rows]


def _chunks(items: Iterable[str]) -> Iterator[list[str]]:
    items = sorted(set(items))
    for a in range(0, len(items), _CHUNK):
        yield items[a:a + _CHUNK]


def _name(by: str) -> str:
    """An operator's name as given (trimmed); InputError if empty or too long."""
    name = by.strip()
    if not name or len(name) > MAX_BY or any(ord(c) < 32 for c in name):
        raise InputError(f"--by must be a name of 1 to {MAX_BY} printable characters, got {by[:40]!r}")
    return name
