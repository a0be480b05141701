"""Catalog commands: ``catalog status`` (its database and schema version, unchanged) and ``catalog upgrade``.

Every command upgrades an older catalog when it opens it; ``catalog upgrade`` does only that, so a
cluster can upgrade its shared catalog in one step (a Job) before rolling out the new version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from fleetscore.cli.output import HomeOpt, JsonOpt, emit, handle_errors, open_fleet, table


def catalog_state(url: str) -> dict[str, Any]:
    """The catalog at ``url`` as it is: database kind and schema version (None: no catalog yet)."""
    import sqlalchemy as sa

    from fleetscore.catalog.migrate import schema_version
    from fleetscore.catalog.sql import SCHEMA_VERSION, meta_table
    from fleetscore.errors import StorageError
    from fleetscore.redact import redact

    state: dict[str, Any] = {"catalog": redact(url), "schema_version": None, "supported_schema_version": SCHEMA_VERSION}
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return state | {"database": "sqlite", "up_to_date": False}
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            state["schema_version"] = schema_version(conn, meta_table)
    except sa.exc.SQLAlchemyError as exc:
        raise StorageError(redact(f"cannot open catalog {url}: {type(exc).__name__}: {exc}")) from exc
    finally:
        engine.dispose()
    return state | {"database": engine.dialect.name, "up_to_date": state["schema_version"] == SCHEMA_VERSION}


def register(app: typer.Typer) -> None:
    catalog_app = typer.Typer(help="The catalog database: its schema version, and upgrading it.", no_args_is_help=True)
    app.add_typer(catalog_app, name="catalog")

    def show(c, state: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
        c.print(table("catalog", ["field", "value"], [[k, v] for k, v in state.items()]))

    @catalog_app.command("status")
    @handle_errors
    def status(home: HomeOpt = None, json_out: JsonOpt = False) -> None:
        """Show the catalog's database and schema version (and the one this fleetscore writes), changing nothing."""
        state = catalog_state(open_fleet(home).config.catalog_url)
        emit(json_out, state, lambda c: show(c, state))

    @catalog_app.command("upgrade")
    @handle_errors
    def upgrade(home: HomeOpt = None, json_out: JsonOpt = False) -> None:
        """Create the catalog, or upgrade its schema to this fleetscore's version (older fleetscores then refuse it)."""
        fleet = open_fleet(home)
        before = catalog_state(fleet.config.catalog_url)["schema_version"]
        fleet.catalog.close()  # opening the catalog creates or upgrades it
        state = catalog_state(fleet.config.catalog_url) | {"upgraded_from": before}
        emit(json_out, state, lambda c: show(c, state))
