"""Schedules and their windows in the catalog: what each schedule must run, and what became of it.

``schedules`` holds one row per schedule with its cursor (the last fire time planned).
``schedule_windows`` holds one row per (schedule, window): pending → running (with its run id) →
the run's final status; the primary key makes planning a window twice impossible, and the cursor
only moves forward by a compare-and-set, so two schedulers planning at once plan each fire once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa

from fleetscore.catalog.sql import Catalog, metadata
from fleetscore.core.schedule import Plan, ScheduleSpec
from fleetscore.core.times import iso, parse_time
from fleetscore.errors import InputError, NotFoundError

PENDING, RUNNING, SKIPPED = "pending", "running", "skipped"
#: Window rows a scheduler still has to run (or resume).
OPEN_STATUSES = (PENDING, RUNNING)

schedules_table = sa.Table(
    "schedules",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("cron", sa.String(120), nullable=False),
    sa.Column("window_s", sa.Integer, nullable=False),
    sa.Column("lag_s", sa.Integer, nullable=False),
    sa.Column("version", sa.String(16)),
    sa.Column("release", sa.Boolean, nullable=False),
    sa.Column("paused", sa.Boolean, nullable=False),
    sa.Column("cursor_us", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)
windows_table = sa.Table(
    "schedule_windows",
    metadata,
    sa.Column("schedule", sa.String(64), primary_key=True),
    sa.Column("window_from", sa.String(32), primary_key=True),
    sa.Column("window_to", sa.String(32), nullable=False),
    sa.Column("fire_at", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("run_id", sa.String(32), index=True),
    sa.Column("version", sa.String(16)),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", sa.String(32), nullable=False),
)


#: The window rows' times: µs since the epoch in the program, ISO 8601 text in the catalog and in `WindowRow.as_dict`.
WINDOW_TIMES = ("window_from", "window_to", "fire_at", "updated_at")


@dataclass(frozen=True)
class WindowRow:
    """One (schedule, window): its status, the run that scores it (or the version a training made)."""

    schedule: str
    window_from: int  # µs since the epoch, like every time below
    window_to: int
    fire_at: int
    status: str
    run_id: str | None = None
    version: str | None = None
    attempts: int = 0
    error: str | None = None
    updated_at: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The row with its times as ISO 8601 text (JSON, tables)."""
        return self.__dict__ | {name: iso(getattr(self, name)) for name in WINDOW_TIMES}


_SPEC_FIELDS = [f.name for f in fields(ScheduleSpec)]


class ScheduleStore:
    """Schedules and their window rows."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.engine = catalog.engine

    # --- schedules -----------------------------------------------------------------------------
    def add(self, spec: ScheduleSpec) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(schedules_table).values(**(spec.as_dict() | {"created_at": self.catalog.now()})))
        except sa.exc.IntegrityError:
            raise InputError(f"schedule {spec.name!r} exists (remove it first, or pick another name)") from None

    def get(self, name: str) -> ScheduleSpec:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(schedules_table).where(schedules_table.c.name == name)).mappings().first()
        if row is None:
            raise NotFoundError(f"unknown schedule {name[:64]!r} (see `fleetscore schedule list`)")
        return _spec(row)

    def all(self) -> list[ScheduleSpec]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(schedules_table).order_by(schedules_table.c.name)).mappings().all()
        return [_spec(r) for r in rows]

    def remove(self, name: str) -> None:
        """Delete the schedule and its window rows (its runs and predictions stay)."""
        self.get(name)
        with self.engine.begin() as conn:
            conn.execute(sa.delete(windows_table).where(windows_table.c.schedule == name))
            conn.execute(sa.delete(schedules_table).where(schedules_table.c.name == name))

    def set_paused(self, name: str, paused: bool) -> ScheduleSpec:
        self.get(name)
        with self.engine.begin() as conn:
            conn.execute(sa.update(schedules_table).where(schedules_table.c.name == name).values(paused=paused))
        return self.get(name)

    def record_plan(self, spec: ScheduleSpec, plan: Plan) -> bool:
        """Store the plan's windows as pending and move the cursor, if nobody moved it since ``spec`` was read.

        Returns False (and changes nothing) when another scheduler planned first.
        """
        now = self.catalog.now()
        s, w = schedules_table, windows_table
        with self.engine.begin() as conn:
            moved = conn.execute(
                sa.update(s).where((s.c.name == spec.name) & (s.c.cursor_us == spec.cursor_us))
                .values(cursor_us=plan.cursor_us)
            ).rowcount
            if not moved:
                return False
            rows = [(d.from_us, d.to_us, d.fire_us, PENDING) for d in plan.due]
            if plan.skipped:
                rows.insert(0, (plan.skipped[0], plan.skipped[1], plan.cursor_us, SKIPPED))
            for lo, hi, fire, status in rows:
                key = (w.c.schedule == spec.name) & (w.c.window_from == iso(lo))
                if conn.execute(sa.select(w.c.status).where(key)).first() is None:
                    conn.execute(sa.insert(w).values(schedule=spec.name, window_from=iso(lo), window_to=iso(hi),
                                                     fire_at=iso(fire), status=status, attempts=0, updated_at=now))
        return True

    # --- windows -------------------------------------------------------------------------------
    def open_windows(self) -> list[WindowRow]:
        """Windows still to run or resume, oldest first."""
        w = windows_table
        return self._windows(sa.select(w).where(w.c.status.in_(OPEN_STATUSES)).order_by(w.c.window_from, w.c.schedule))

    def window(self, name: str, window_from: int) -> WindowRow | None:
        w = windows_table
        found = self._windows(sa.select(w).where((w.c.schedule == name) & (w.c.window_from == iso(window_from))))
        return found[0] if found else None

    def windows(self, name: str | None = None, limit: int = 100) -> list[WindowRow]:
        """Most recent windows first, of one schedule or all."""
        w = windows_table
        query = sa.select(w).order_by(w.c.window_from.desc(), w.c.schedule).limit(limit)
        if name is not None:
            query = query.where(w.c.schedule == name)
        return self._windows(query)

    def windows_of_run(self, run_id: str) -> list[WindowRow]:
        w = windows_table
        return self._windows(sa.select(w).where(w.c.run_id == run_id))

    def update_window(self, name: str, window_from: int, **values: Any) -> None:
        w = windows_table
        with self.engine.begin() as conn:
            conn.execute(sa.update(w).where((w.c.schedule == name) & (w.c.window_from == iso(window_from)))
                         .values(updated_at=self.catalog.now(), **values))

    def delete_windows(self, keys: Iterable[tuple[str, int]]) -> None:
        w = windows_table
        with self.engine.begin() as conn:
            for name, window_from in keys:
                conn.execute(sa.delete(w).where((w.c.schedule == name) & (w.c.window_from == iso(window_from))))

    def _windows(self, query: Any) -> list[WindowRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [WindowRow(**(dict(r) | {name: parse_time(r[name], name) for name in WINDOW_TIMES})) for r in rows]


def _spec(row: Any) -> ScheduleSpec:
    """A schedules row as a spec (its creation time in µs; 0 where an older row has none)."""
    values = {k: row[k] for k in _SPEC_FIELDS}
    return ScheduleSpec(**(values | {"created_at": parse_time(values["created_at"]) if values["created_at"] else 0}))
