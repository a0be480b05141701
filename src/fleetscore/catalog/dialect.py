"""What differs between the two catalog databases, SQLite (one machine) and PostgreSQL (a cluster).

Two helpers make concurrent writers safe on both: :func:`upsert` (one ``INSERT ... ON CONFLICT DO
UPDATE`` statement, so two processes saving the same row never both insert it) and
:func:`transaction_lock` (a PostgreSQL advisory lock held to the end of the transaction; SQLite needs
none because it runs one write transaction at a time).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from fleetscore.errors import ConfigError

DIALECTS = ("sqlite", "postgresql")


def check_dialect(engine: sa.Engine) -> None:
    if engine.dialect.name not in DIALECTS:
        raise ConfigError(f"catalog database {engine.dialect.name!r} is not supported; use sqlite:/// or postgresql://")


def upsert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows``, replacing the existing rows with the same primary key."""
    if not rows:
        return
    from sqlalchemy.dialects import postgresql, sqlite

    insert: Any = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    keys = [c.name for c in table.primary_key]
    stmt = insert(table)
    update = {name: stmt.excluded[name] for name in rows[0] if name not in keys}
    conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=update), rows)


def code_point_order(dialect: str, *columns: sa.ColumnElement[Any]) -> list[sa.ColumnElement[Any]]:
    """``columns`` to order text by code point, as Python sorts it (SQLite's default; PostgreSQL's collation "C")."""
    return [sa.collate(c, "C") for c in columns] if dialect == "postgresql" else list(columns)


def transaction_lock(conn: sa.Connection, key: int) -> None:
    """Hold lock ``key`` until ``conn``'s transaction ends (PostgreSQL; SQLite serialises writers itself)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
