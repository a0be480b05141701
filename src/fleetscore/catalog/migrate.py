"""Catalog schema versions: create a fresh catalog, or upgrade an older one step by step.

The version lives in the ``meta`` table (key ``schema``). Opening a catalog:

* fresh database: every table is created at its current shape, version = ``SCHEMA_VERSION``;
* older version N: the steps N+1 .. SCHEMA_VERSION alter the tables that already exist, then the
  tables it lacks are created;
* newer version: refused (an older fleetscore must not write a schema it does not know).

A table added to the metadata needs no step (it is created when missing); changing a table that
exists does: add a function to :data:`STEPS` under the new version number and bump
``SCHEMA_VERSION``. The upgrade runs in one transaction under a lock (a PostgreSQL advisory lock,
SQLite ``BEGIN IMMEDIATE``), so processes that open the catalog at the same time upgrade it once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from fleetscore.catalog.dialect import check_dialect, transaction_lock, upsert
from fleetscore.catalog.runlists import list_row, run_lists_table
from fleetscore.core.runs import MAX_LISTED
from fleetscore.errors import StorageError

SCHEMA_KEY = "schema"
#: Key of the PostgreSQL advisory lock held while the schema is created or upgraded.
SCHEMA_LOCK = 0x666C7431


def _add_task_node(conn: sa.Connection) -> None:
    """v2: tasks record the node (machine or Ray node) they ran on, apart from the worker process."""
    if "node" not in {c["name"] for c in sa.inspect(conn).get_columns("tasks")}:
        conn.execute(sa.text("ALTER TABLE tasks ADD COLUMN node VARCHAR(128) NOT NULL DEFAULT ''"))


def _move_run_lists(conn: sa.Connection) -> None:
    """v3: the unhealthy models and keys without a model that run records listed (up to 1,000 and 50) move to
    ``run_lists``; each record keeps the first `MAX_LISTED` of each list beside its total (``unhealthy_models``,
    ``unmatched_keys``: for an older run, the keys its record listed)."""
    run_lists_table.create(conn, checkfirst=True)
    runs = sa.table("runs", sa.column("run_id"), sa.column("extra"))
    listing = runs.c.extra.like('%"unhealthy": [{%') | runs.c.extra.like('%"unmatched": [{%')
    for run_id in conn.execute(sa.select(runs.c.run_id).where(listing)).scalars().all():
        extra = json.loads(conn.execute(sa.select(runs.c.extra).where(runs.c.run_id == run_id)).scalar_one())
        health = extra.get("health", {})
        lists = {"unhealthy": health.get("unhealthy", []), "unmatched": extra.get("unmatched", [])}
        rows = [list_row(run_id, name, None, entries) for name, entries in lists.items() if entries]
        conn.execute(sa.insert(run_lists_table), rows)
        extra["unmatched"], extra["unmatched_keys"] = lists["unmatched"][:MAX_LISTED], len(lists["unmatched"])
        if health:
            extra["health"] = health | {"unhealthy": lists["unhealthy"][:MAX_LISTED],
                                        "unhealthy_models": health.get("unhealthy_models", len(lists["unhealthy"]))}
        conn.execute(sa.update(runs).where(runs.c.run_id == run_id).values(extra=json.dumps(extra)))


#: version -> the step that upgrades a catalog from version - 1 to it; the module owning the tables a step
#: changes may add it (v4: `fleetscore.catalog.incidents`, which the catalog package imports with its tables).
STEPS: dict[int, Callable[[sa.Connection], None]] = {2: _add_task_node, 3: _move_run_lists}


def schema_version(conn: sa.Connection, meta: sa.Table) -> int | None:
    """The catalog's recorded schema version; None for a database without a catalog.

    Tables without a recorded version are version 1 (its tables and its version row were not
    created in one transaction on SQLite).
    """
    inspector = sa.inspect(conn)
    if inspector.has_table(meta.name):
        value = conn.execute(sa.select(meta.c.value).where(meta.c.key == SCHEMA_KEY)).scalar()
        if value is not None:
            return int(value)
    return 1 if inspector.has_table("runs") else None


def upgrade(engine: sa.Engine, metadata: sa.MetaData, target: int) -> int | None:
    """Bring the catalog at ``engine`` to schema ``target``; returns the version found (None: fresh)."""
    check_dialect(engine)
    meta = metadata.tables["meta"]
    with engine.connect() as conn:
        found = schema_version(conn, meta)
        missing = set(metadata.tables) - set(sa.inspect(conn).get_table_names())
    if found == target and not missing:
        return found
    with _schema_lock(engine) as conn:
        found = schema_version(conn, meta)  # again: another process may have upgraded meanwhile
        if found is not None and found > target:
            raise StorageError(
                f"the catalog has schema version {found} but this fleetscore knows versions up to {target}: "
                "upgrade fleetscore (every process sharing a catalog must run the same version or newer)"
            )
        for version in range((found or target) + 1, target + 1):
            STEPS[version](conn)
        metadata.create_all(conn)
        upsert(conn, meta, [{"key": SCHEMA_KEY, "value": str(target)}])
    return found


@contextmanager
def _schema_lock(engine: sa.Engine) -> Iterator[sa.Connection]:
    """One transaction that no other process runs at the same time (DDL included, on both databases)."""
    if engine.dialect.name == "sqlite":
        # pysqlite runs DDL outside transactions by default: take the write lock explicitly
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")
        return
    with engine.begin() as conn:
        transaction_lock(conn, SCHEMA_LOCK)
        yield conn
