"""Leases: at most one live holder per key (a window being scored, a schedule training), across processes.

A lease is a row inserted only if absent, with an expiry; its holder renews it while it works, so a
holder that crashes (kill -9) loses it when it expires and another process takes over. The row also
carries the run id and a cancel flag: ``runs cancel`` sets the flag and the holder, which reads it
when it renews, stops the run. Works the same on SQLite and PostgreSQL (SQLAlchemy Core, primary key
conflict = someone else holds it). Expiry is in wall-clock seconds whatever clock the catalog stamps
its rows with (``--now`` freezes that one): a lease is about a process being alive, in real time.

A run that is queued or running with no live lease naming it, and a version still training whose
``training:<version>`` lease expired, have lost their process: the catalog marks them abandoned
when it reads them (:mod:`fleetscore.catalog.sql`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import sqlalchemy as sa

from fleetscore.catalog.sql import Catalog, leases_table
from fleetscore.clock import Clock, wall_clock
from fleetscore.core.times import iso_us


class LeaseState(str, enum.Enum):
    """What a renewal found: still held, held with a cancel request, or lost to another holder."""

    HELD = "held"
    CANCEL = "cancel"
    LOST = "lost"


@dataclass(frozen=True)
class LeaseInfo:
    key: str
    holder: str
    run_id: str | None
    acquired_at: str
    expires_at: float
    cancel: bool


class Leases:
    """Acquire, renew, release and inspect leases in the catalog."""

    def __init__(self, catalog: Catalog, clock: Clock | None = None) -> None:
        self.catalog = catalog
        self.engine = catalog.engine
        self._clock = clock or wall_clock

    def clock(self) -> float:
        """Now in seconds, as lease expiries are stored (by the wall clock unless one is given)."""
        return self._clock() / 1e6

    def acquire(self, key: str, holder: str, ttl_s: float, run_id: str | None = None) -> bool:
        """Take ``key`` for ``ttl_s`` seconds if nobody holds it (an expired lease counts as free)."""
        now = self.clock()
        t = leases_table
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.delete(t).where((t.c.key == key) & (t.c.expires_at < now)))
                conn.execute(sa.insert(t).values(key=key, holder=holder, run_id=run_id, acquired_at=iso_us(self._clock()),
                                                 expires_at=now + ttl_s, cancel=False))
        except sa.exc.IntegrityError:
            return False
        return True

    def renew(self, key: str, holder: str, ttl_s: float) -> LeaseState:
        """Extend the lease; says whether it is still ours and whether a cancel was requested."""
        t = leases_table
        mine = (t.c.key == key) & (t.c.holder == holder)
        with self.engine.begin() as conn:
            cancel = conn.execute(sa.select(t.c.cancel).where(mine)).scalar()
            if cancel is None:
                return LeaseState.LOST
            conn.execute(sa.update(t).where(mine).values(expires_at=self.clock() + ttl_s))
        return LeaseState.CANCEL if cancel else LeaseState.HELD

    def set_run(self, key: str, holder: str, run_id: str) -> None:
        t = leases_table
        with self.engine.begin() as conn:
            conn.execute(sa.update(t).where((t.c.key == key) & (t.c.holder == holder)).values(run_id=run_id))

    def release(self, key: str, holder: str) -> None:
        t = leases_table
        with self.engine.begin() as conn:
            conn.execute(sa.delete(t).where((t.c.key == key) & (t.c.holder == holder)))

    def live(self, key: str | None = None, run_id: str | None = None) -> list[LeaseInfo]:
        """Unexpired leases, all or those of one key or one run."""
        t = leases_table
        query = sa.select(t).where(t.c.expires_at >= self.clock()).order_by(t.c.key)
        if key is not None:
            query = query.where(t.c.key == key)
        if run_id is not None:
            query = query.where(t.c.run_id == run_id)
        with self.engine.connect() as conn:
            return [LeaseInfo(**row) for row in conn.execute(query).mappings().all()]

    def request_cancel(self, run_id: str) -> bool:
        """Flag the live lease of ``run_id`` for cancelling; False when no live process holds the run."""
        t = leases_table
        with self.engine.begin() as conn:
            flagged = conn.execute(
                sa.update(t).where((t.c.run_id == run_id) & (t.c.expires_at >= self.clock())).values(cancel=True)
            ).rowcount
        return bool(flagged)
