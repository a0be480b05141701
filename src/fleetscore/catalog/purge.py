"""Deleting catalog rows for retention (``fleetscore gc``): runs with their tasks and per-model lists, window
commits, and model versions (kept as rows marked ``deleted``, so a version id is never reused)."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from fleetscore.catalog.sql import (
    Catalog,
    commits_table,
    failures_table,
    run_lists_table,
    runs_table,
    tasks_table,
    versions_table,
)

#: Status of a model version whose files retention removed.
DELETED = "deleted"
_CHUNK = 500


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]


def delete_runs(catalog: Catalog, run_ids: Iterable[str]) -> None:
    """Remove runs and their task records, model failures and other per-model lists."""
    with catalog.engine.begin() as conn:
        for chunk in _chunks(list(run_ids)):
            conn.execute(sa.delete(failures_table).where(failures_table.c.run_id.in_(chunk)))
            conn.execute(sa.delete(run_lists_table).where(run_lists_table.c.run_id.in_(chunk)))
            conn.execute(sa.delete(tasks_table).where(tasks_table.c.run_id.in_(chunk)))
            conn.execute(sa.delete(runs_table).where(runs_table.c.run_id.in_(chunk)))


def delete_commits(catalog: Catalog, windows: Iterable[tuple[str, str]]) -> None:
    """Forget which run a window was committed to (its predictions are gone)."""
    t = commits_table
    with catalog.engine.begin() as conn:
        for lo, hi in windows:
            conn.execute(sa.delete(t).where((t.c.window_from == lo) & (t.c.window_to == hi)))


def mark_versions_deleted(catalog: Catalog, versions: Iterable[str]) -> None:
    with catalog.engine.begin() as conn:
        for chunk in _chunks(list(versions)):
            conn.execute(sa.update(versions_table).where(versions_table.c.version.in_(chunk)).values(status=DELETED))
