"""Entry point: the root typer app, made of the command modules of this package."""

import typer

from fleetscore.cli import alertcmds, catalogcmds, data, demo, evalcmds, incidentcmds, ingestcmds, modelcmds, runcmds, schedcmds
from fleetscore.cli.groups import Group

app = typer.Typer(
    name="fleetscore",
    cls=Group,
    help="Train, schedule and run batch anomaly scoring for IoT fleets: one small model per (device, sensor).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain click help and usage errors: typer's Rich rendering imports rich.markdown, pygments and
    # rich.traceback (~170 ms, half of a `--help`) for the same text in boxes
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(data.commands)
app.add_typer(data.quarantine, name="quarantine", cls=Group)
app.add_typer(modelcmds.commands)
app.add_typer(modelcmds.models, name="models", cls=Group)
app.add_typer(runcmds.commands)
app.add_typer(runcmds.runs, name="runs", cls=Group)
app.add_typer(demo.commands)
app.add_typer(ingestcmds.commands)
app.add_typer(ingestcmds.ingest, name="ingest", cls=Group)
app.add_typer(schedcmds.schedule, name="schedule", cls=Group)
app.add_typer(schedcmds.commands)
app.add_typer(evalcmds.commands)
app.add_typer(catalogcmds.catalog, name="catalog", cls=Group)
app.add_typer(alertcmds.alerts, name="alerts", cls=Group)
app.add_typer(incidentcmds.incidents, name="incidents", cls=Group)


def _print_version(value: bool) -> None:
    """``--version``: eager, so it answers before click asks for a command."""
    if value:
        from fleetscore.version import __version__

        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
    """The root: its only option is ``--version``."""


def main() -> None:
    app()
