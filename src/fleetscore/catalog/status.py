"""The catalog as it is, read without creating or upgrading it: database kind and schema version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from fleetscore.catalog.migrate import schema_version
from fleetscore.catalog.sql import SCHEMA_VERSION, create_engine, meta_table, open_error
from fleetscore.redact import redact


def catalog_state(url: str) -> dict[str, Any]:
    """The catalog at ``url``: database kind and schema version (None: no catalog yet), and the one this writes."""
    state: dict[str, Any] = {"catalog": redact(url), "schema_version": None, "supported_schema_version": SCHEMA_VERSION}
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return state | {"database": "sqlite", "up_to_date": False}
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            state["schema_version"] = schema_version(conn, meta_table)
    except sa.exc.SQLAlchemyError as exc:
        raise open_error(url, exc) from exc
    finally:
        engine.dispose()
    return state | {"database": engine.dialect.name, "up_to_date": state["schema_version"] == SCHEMA_VERSION}
