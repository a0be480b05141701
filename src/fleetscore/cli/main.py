"""Entry point: the root typer app, made of the command modules of this package."""

from __future__ import annotations

import typer

from fleetscore.cli import alertcmds, catalogcmds, data, demo, evalcmds, incidentcmds, ingestcmds, modelcmds, runcmds, schedcmds

app = typer.Typer(
    name="fleetscore",
    help="Train, schedule and run batch anomaly scoring for IoT fleets: one small model per (device, sensor).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(data.commands)
app.add_typer(data.quarantine, name="quarantine")
app.add_typer(modelcmds.commands)
app.add_typer(modelcmds.models, name="models")
app.add_typer(runcmds.commands)
app.add_typer(runcmds.runs, name="runs")
app.add_typer(demo.commands)
app.add_typer(ingestcmds.commands)
app.add_typer(ingestcmds.ingest, name="ingest")
app.add_typer(schedcmds.schedule, name="schedule")
app.add_typer(schedcmds.commands)
app.add_typer(evalcmds.commands)
app.add_typer(catalogcmds.catalog, name="catalog")
app.add_typer(alertcmds.alerts, name="alerts")
app.add_typer(incidentcmds.incidents, name="incidents")


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        from fleetscore.version import __version__

        typer.echo(__version__)
        raise typer.Exit(0)


def main() -> None:
    app()
