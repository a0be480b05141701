"""Totals over all recorded runs, computed by the database in one query (what ``/metrics`` exports).

Runs are written by many processes (CLI, scheduler, workers), so the web server does not count
events itself: every scrape asks the catalog. The query is one aggregate over the runs table, so its
cost does not grow with what Python has to hold, only with what the database scans.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from fleetscore.catalog.sql import Catalog, runs_table
from fleetscore.core.runs import RunStatus
from fleetscore.core.times import parse_time
from fleetscore.errors import StorageError

#: Upper bounds (seconds) of the run duration histogram's buckets; +Inf is implied.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class StatusTotals:
    """Runs in one status and what they scored."""

    runs: int = 0
    models: int = 0
    rows: int = 0
    anomalies: int = 0
    failed_models: int = 0


@dataclass(frozen=True)
class RunStats:
    """Totals per status, the duration histogram of finished runs, and the last successful run."""

    by_status: dict[str, StatusTotals]
    #: cumulative counts of finished runs with ``elapsed_s`` ≤ each bound of ``buckets`` (Prometheus style)
    duration_buckets: tuple[float, ...]
    duration_counts: tuple[int, ...]
    duration_count: int
    duration_sum: float
    last_success_at: int | None = None  # µs
    totals: StatusTotals = field(default_factory=StatusTotals)


def run_stats(catalog: Catalog, buckets: tuple[float, ...] = DURATION_BUCKETS) -> RunStats:
    """Aggregate the runs table: per status counts and sums, a duration histogram, last success."""
    r = runs_table.c
    per_status = sa.select(
        r.status, sa.func.count(), sa.func.sum(r.models), sa.func.sum(r.rows),
        sa.func.sum(r.anomalies), sa.func.sum(r.failed_models),
    ).group_by(r.status)
    finished = r.status.in_([s.value for s in (RunStatus.SUCCEEDED, RunStatus.PARTIAL, RunStatus.FAILED)])
    timed = sa.and_(finished, r.elapsed_s.is_not(None))
    histogram = sa.select(
        *[sa.func.sum(sa.case((sa.and_(timed, r.elapsed_s <= b), 1), else_=0)) for b in buckets],
        sa.func.sum(sa.case((timed, 1), else_=0)),
        sa.func.sum(sa.case((timed, r.elapsed_s), else_=0.0)),
        sa.func.max(sa.case((r.status == RunStatus.SUCCEEDED.value, r.finished_at), else_=None)),
    )
    try:
        with catalog.engine.connect() as conn:
            groups = conn.execute(per_status).all()
            hist = conn.execute(histogram).one()
    except sa.exc.SQLAlchemyError as exc:
        raise StorageError(f"cannot read run totals from the catalog: {exc.__class__.__name__}") from exc
    by_status = {status: StatusTotals(*(int(v or 0) for v in values)) for status, *values in groups}
    totals = StatusTotals(*(sum(getattr(t, f) for t in by_status.values()) for f in StatusTotals.__dataclass_fields__))
    n = len(buckets)
    return RunStats(
        by_status=by_status,
        duration_buckets=tuple(buckets),
        duration_counts=tuple(int(v or 0) for v in hist[:n]),
        duration_count=int(hist[n] or 0),
        duration_sum=float(hist[n + 1] or 0.0),
        last_success_at=None if hist[n + 2] is None else parse_time(hist[n + 2]),
        totals=totals,
    )
