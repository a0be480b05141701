"""Catalog commands: ``catalog status`` (its database and schema version, unchanged) and ``catalog upgrade``.

Every command upgrades an older catalog when it opens it; ``catalog upgrade`` does only that, so a
cluster can upgrade its shared catalog in one step (a Job) before rolling out the new version.
"""

from typing import Any

import typer

from fleetscore.cli.output import HomeOpt, JsonOpt, emit, handle_errors, open_fleet, table

catalog = typer.Typer(help="The catalog database: its schema version, and upgrading it.", no_args_is_help=True)


def _show(c: Any, state: dict[str, Any]) -> None:
    c.print(table("catalog", ["field", "value"], [[k, v] for k, v in state.items()]))


@catalog.command("status")
@handle_errors
def status(home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """Show the catalog's database and schema version (and the one this fleetscore writes), changing nothing."""
    state = open_fleet(home).catalog_state()
    emit(json_out, state, lambda c: _show(c, state))


@catalog.command("upgrade")
@handle_errors
def upgrade(home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """Create the catalog, or upgrade its schema to this fleetscore's version (older fleetscores then refuse it)."""
    state = open_fleet(home).upgrade_catalog()
    emit(json_out, state, lambda c: _show(c, state))
