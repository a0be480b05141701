"""Alerting state in the catalog: the outbox of notifications, what each rule fired for, and silences.

``alert_outbox`` holds one row per notification, unique by its idempotency key (rule, receiver,
incident, state), so queueing the same notification twice stores it once. A row goes
``pending`` → ``sending`` (claimed by one deliverer with a lease: a compare-and-set UPDATE, so two
processes never both hold it; a holder killed mid-send loses it when the lease expires) → ``sent``,
or back to ``pending`` with a later ``next_at`` after a failure, or ``dead`` after the receiver's
last attempt. ``suppressed`` rows were silenced when queued and are never sent. ``alert_tracks``
keeps, per (rule, incident) that fired, the incident's last flag and whether it was resolved, for
the recovery window. ``alert_silences`` are operators' silences and maintenance windows.
Delivery times (``next_at``, ``lease_until``) are wall-clock seconds, like lease expiries.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import sqlalchemy as sa

from fleetscore.catalog.dialect import upsert
from fleetscore.catalog.sql import Catalog, metadata
from fleetscore.core.times import iso
from fleetscore.errors import InputError, NotFoundError

PENDING, SENDING, SENT, DEAD, SUPPRESSED = "pending", "sending", "sent", "dead", "suppressed"
FIRING, RESOLVED = "firing", "resolved"

outbox_table = sa.Table(
    "alert_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(64), nullable=False, unique=True),
    sa.Column("rule", sa.String(64), nullable=False),
    sa.Column("receiver", sa.String(64), nullable=False),
    sa.Column("incident", sa.String(128), nullable=False, index=True),
    sa.Column("device", sa.String(256), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("failures", sa.Integer, nullable=False, default=0),
    sa.Column("next_at", sa.Float, nullable=False, index=True),
    sa.Column("lease_holder", sa.String(64)),
    sa.Column("lease_until", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("sent_at", sa.String(32)),
)
tracks_table = sa.Table(
    "alert_tracks",
    metadata,
    sa.Column("rule", sa.String(64), primary_key=True),
    sa.Column("incident", sa.String(128), primary_key=True),
    sa.Column("last_us", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
)
silences_table = sa.Table(
    "alert_silences",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device", sa.String(256), nullable=False),
    sa.Column("sensor", sa.String(256)),
    sa.Column("start_us", sa.BigInteger, nullable=False),
    sa.Column("end_us", sa.BigInteger, nullable=False, index=True),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)


@dataclass(frozen=True)
class Notification:
    """One outbox row: a (rule, receiver, incident, state) notification and how its delivery went."""

    id: int
    key: str
    rule: str
    receiver: str
    incident: str
    device: str
    state: str
    status: str
    attempts: int
    failures: int
    next_at: float
    error: str | None
    payload: dict[str, Any]
    created_at: str
    sent_at: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "key": self.key, "rule": self.rule, "receiver": self.receiver,
                "incident": self.incident, "device": self.device, "state": self.state, "status": self.status,
                "attempts": self.attempts, "failures": self.failures, "error": self.error,
                "created_at": self.created_at, "sent_at": self.sent_at}


@dataclass(frozen=True)
class NewNotification:
    """What :meth:`AlertStore.save` stores: the key, its parts and the JSON body to send."""

    key: str
    rule: str
    receiver: str
    incident: str
    device: str
    state: str
    payload: dict[str, Any]
    suppressed: bool = False


@dataclass(frozen=True)
class Track:
    """A (rule, incident) that fired: the incident as last seen and whether it was resolved."""

    rule: str
    incident: str
    last_us: int
    state: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Silence:
    """A silence or maintenance window: notifications of matching incidents in [start, end) are not sent."""

    id: int
    device: str
    sensor: str | None
    start_us: int
    end_us: int
    note: str
    created_by: str
    created_at: str

    def covers(self, device: str, sensors: Sequence[str], at_us: int) -> bool:
        """Whether this silence applies to an incident of ``device`` on ``sensors`` at ``at_us``."""
        if not (self.start_us <= at_us < self.end_us and fnmatchcase(device, self.device)):
            return False
        return self.sensor is None or any(fnmatchcase(s, self.sensor) for s in sensors)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "device": self.device, "sensor": self.sensor, "start": iso(self.start_us),
                "end": iso(self.end_us), "note": self.note, "created_by": self.created_by,
                "created_at": self.created_at}


class AlertStore:
    """The outbox, the tracks and the silences of one catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.engine = catalog.engine

    # --- the outbox ----------------------------------------------------------------------------
    def save(self, items: Sequence[NewNotification], tracks: Sequence[Track], now_s: float) -> int:
        """In one transaction: store the notifications whose key is new (pending, or suppressed) and the
        tracks; returns how many notifications were new."""
        from sqlalchemy.dialects import postgresql, sqlite

        t, added, created = outbox_table, 0, self.catalog.now()
        insert: Any = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        with self.engine.begin() as conn:
            for n in items:
                added += len(conn.execute(insert(t).values(
                    key=n.key, rule=n.rule, receiver=n.receiver, incident=n.incident, device=n.device, state=n.state,
                    status=SUPPRESSED if n.suppressed else PENDING, attempts=0, failures=0, next_at=now_s,
                    payload=_json(n.payload), created_at=created,
                ).on_conflict_do_nothing(index_elements=["key"]).returning(t.c.id)).all())
            upsert(conn, tracks_table, [{"rule": k.rule, "incident": k.incident, "last_us": k.last_us, "state": k.state,
                                         "payload": _json(k.payload), "updated_at": created} for k in tracks])
        return added

    def claim(self, token: str, now_s: float, lease_s: float, limit: int) -> list[Notification]:
        """Take up to ``limit`` due notifications (pending and due, or sending with an expired lease) under
        ``token``, which must be new for every claim (a resolved notification waits for its firing one to be
        sent or dead): one UPDATE whose condition is re-checked per row, so
        two deliverers claiming at once never take the same row."""
        t = outbox_table
        f = outbox_table.alias("firing")
        firing_open = sa.exists().where((f.c.rule == t.c.rule) & (f.c.receiver == t.c.receiver)
                                        & (f.c.incident == t.c.incident) & (f.c.state == FIRING)
                                        & f.c.status.in_((PENDING, SENDING)))
        due = (((t.c.status == PENDING) & (t.c.next_at <= now_s)) | ((t.c.status == SENDING) & (t.c.lease_until < now_s))
               ) & ((t.c.state != RESOLVED) | ~firing_open)  # a resolved one never overtakes its firing
        picked = sa.select(t.c.id).where(due).order_by(t.c.next_at, t.c.id).limit(limit).scalar_subquery()
        with self.engine.begin() as conn:
            conn.execute(sa.update(t).where(t.c.id.in_(picked) & due)
                         .values(status=SENDING, lease_holder=token, lease_until=now_s + lease_s))
            rows = conn.execute(sa.select(t).where((t.c.lease_holder == token) & (t.c.status == SENDING))
                                .order_by(t.c.id)).mappings().all()
        return [_notification(r) for r in rows]

    def finish(self, token: str, sent: Sequence[int], failed: Sequence[tuple[Notification, str, float | None]]) -> None:
        """Record a batch's outcome: ``sent`` ids, and per failure its error and next attempt (None: dead letter)."""
        t = outbox_table
        ours = (t.c.lease_holder == token) & (t.c.status == SENDING)
        with self.engine.begin() as conn:
            if sent:
                conn.execute(sa.update(t).where(t.c.id.in_(sent) & ours).values(
                    status=SENT, sent_at=self.catalog.now(), attempts=t.c.attempts + 1, lease_holder=None,
                    lease_until=None, error=None))
            for n, error, next_at in failed:
                conn.execute(sa.update(t).where((t.c.id == n.id) & ours).values(
                    status=DEAD if next_at is None else PENDING, next_at=next_at or n.next_at, error=error,
                    attempts=t.c.attempts + 1, failures=t.c.failures + 1, lease_holder=None, lease_until=None))

    def notifications(self, status: str | None = None, limit: int = 100) -> list[Notification]:
        """Notifications, newest first (of one status, or all)."""
        t = outbox_table
        query = sa.select(t).order_by(t.c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(t.c.status == status)
        with self.engine.connect() as conn:
            return [_notification(r) for r in conn.execute(query).mappings().all()]

    def redrive(self, ids: Sequence[int] | None, now_s: float) -> int:
        """Dead letters back to pending with fresh attempts (the given ids, or all); returns how many."""
        t = outbox_table
        where = t.c.status == DEAD
        if ids is not None:
            with self.engine.connect() as conn:
                found = dict(conn.execute(sa.select(t.c.id, t.c.status).where(t.c.id.in_(ids))).all())
            for i in ids:
                if i not in found:
                    raise NotFoundError(f"unknown notification {i} (see `fleetscore alerts dead-letters list`)")
                if found[i] != DEAD:
                    raise InputError(f"notification {i} is {found[i]}, not a dead letter")
            where &= t.c.id.in_(ids)
        with self.engine.begin() as conn:
            return conn.execute(sa.update(t).where(where).values(status=PENDING, attempts=0, next_at=now_s)).rowcount

    def counts(self) -> dict[str, int]:
        """Notifications per status, and ``failed``: failed delivery attempts in total."""
        t = outbox_table
        with self.engine.connect() as conn:
            per: dict[str, int] = dict(conn.execute(sa.select(t.c.status, sa.func.count()).group_by(t.c.status)).all())
            failed = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(t.c.failures), 0))).scalar()
        return {"sent": per.get(SENT, 0), "failed": int(failed or 0), "dead": per.get(DEAD, 0),
                "pending": per.get(PENDING, 0) + per.get(SENDING, 0), "suppressed": per.get(SUPPRESSED, 0)}

    def next_due_s(self) -> float | None:
        """When the next notification may be claimed (wall seconds: its next attempt, or its claim's lease
        expiry), or None when none is pending."""
        t = outbox_table
        with self.engine.connect() as conn:
            due = sa.case((t.c.status == SENDING, t.c.lease_until), else_=t.c.next_at)
            return conn.execute(sa.select(sa.func.min(due)).where(t.c.status.in_((PENDING, SENDING)))).scalar()

    # --- tracks --------------------------------------------------------------------------------
    def get_tracks(self, incidents: Sequence[str]) -> dict[tuple[str, str], Track]:
        """The tracks of these incidents, by (rule, incident)."""
        t, out = tracks_table, {}
        with self.engine.connect() as conn:
            for lo in range(0, len(incidents), 500):
                for r in conn.execute(sa.select(t).where(t.c.incident.in_(incidents[lo:lo + 500]))).mappings():
                    out[(r["rule"], r["incident"])] = _track(r)
        return out

    def tracks(self, state: str) -> list[Track]:
        t = tracks_table
        with self.engine.connect() as conn:
            return [_track(r) for r in conn.execute(sa.select(t).where(t.c.state == state)).mappings().all()]

    # --- silences ------------------------------------------------------------------------------
    def add_silence(self, device: str, sensor: str | None, start_us: int, end_us: int, note: str, by: str) -> Silence:
        if end_us <= start_us:
            raise InputError("--end must be after --start")
        with self.engine.begin() as conn:
            key = conn.execute(sa.insert(silences_table).values(
                device=device, sensor=sensor, start_us=start_us, end_us=end_us, note=note, created_by=by,
                created_at=self.catalog.now())).inserted_primary_key
        assert key is not None
        return self.silence(int(key[0]))

    def silence(self, silence_id: int) -> Silence:
        t = silences_table
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.id == silence_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"unknown silence {silence_id} (see `fleetscore alerts silence list`)")
        return Silence(**dict(row))

    def silences(self, active_at_us: int | None = None) -> list[Silence]:
        """Silences by start (those not yet over at ``active_at_us``, if given)."""
        t = silences_table
        query = sa.select(t).order_by(t.c.start_us, t.c.id)
        if active_at_us is not None:
            query = query.where(t.c.end_us > active_at_us)
        with self.engine.connect() as conn:
            return [Silence(**dict(r)) for r in conn.execute(query).mappings().all()]

    def remove_silence(self, silence_id: int) -> Silence:
        found = self.silence(silence_id)
        with self.engine.begin() as conn:
            conn.execute(sa.delete(silences_table).where(silences_table.c.id == silence_id))
        return found


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _track(row: Any) -> Track:
    return Track(row["rule"], row["incident"], row["last_us"], row["state"], json.loads(row["payload"]))


def _notification(row: Any) -> Notification:
    return Notification(id=row["id"], key=row["key"], rule=row["rule"], receiver=row["receiver"],
                        incident=row["incident"], device=row["device"], state=row["state"], status=row["status"],
                        attempts=row["attempts"], failures=row["failures"], next_at=row["next_at"],
                        error=row["error"], payload=json.loads(row["payload"]), created_at=row["created_at"],
                        sent_at=row["sent_at"])
