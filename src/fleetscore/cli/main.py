"""Entry point: the root typer app; each module in this package adds its own commands."""

from __future__ import annotations

import typer

from fleetscore.cli import catalogcmds, data, demo, evalcmds, ingestcmds, modelcmds, runcmds, schedcmds

app = typer.Typer(
    name="fleetscore",
    help="Train, schedule and run batch anomaly scoring for IoT fleets: one small model per (device, sensor).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

for module in (data, modelcmds, runcmds, demo, ingestcmds, schedcmds, evalcmds, catalogcmds):  # schedcmds after runcmds (adds to `runs`), evalcmds after modelcmds (`models`)
    module.register(app)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        from fleetscore import __version__

        typer.echo(__version__)
        raise typer.Exit(0)


def main() -> None:
    app()
