"""Output and error conventions shared by every command.

With ``--json`` a command prints exactly one JSON object on stdout; otherwise rich tables. Errors
go to stderr with exit code 2 (input), 3 (run partial) or 1 (failure); with ``--json`` the error is
also the one JSON object on stdout.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

HomeOpt = Annotated[
    Optional[Path],
    typer.Option("--home", envvar="FLEETSCORE_HOME", help="Home directory (default ./fleetscore-home).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]

EXIT_OK, EXIT_FAILURE, EXIT_INPUT, EXIT_PARTIAL = 0, 1, 2, 3


def _default(obj: Any) -> Any:
    if isinstance(obj, (datetime, date)):
        return obj.isoformat().replace("+00:00", "Z")
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    if hasattr(obj, "value"):
        return obj.value
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _clean(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def to_json(obj: Any) -> str:
    return json.dumps(_clean(json.loads(json.dumps(obj, default=_default))), separators=(",", ":"))


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def emit(json_mode: bool, payload: dict[str, Any], human: Callable[[Any], None]) -> None:
    if json_mode:
        sys.stdout.write(to_json(payload) + "\n")
    else:
        human(console())


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Any:
    from rich.table import Table

    t = Table(title=title, show_lines=False, header_style="bold")
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*["" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)) for v in row])
    return t


def fail(message: str, code: int, json_mode: bool) -> None:
    if json_mode:
        sys.stdout.write(to_json({"error": message, "exit_code": code}) + "\n")
    console(stderr=True).print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    raise typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Map fleetscore errors to messages and exit codes; nothing ends in a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from fleetscore.errors import FleetscoreError

        json_mode = bool(kwargs.get("json_out"))
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except FleetscoreError as exc:
            fail(_escape(str(exc)), exc.exit_code, json_mode)
        except KeyboardInterrupt:
            fail("interrupted", 130, json_mode)

    return wrapper  # type: ignore[return-value]


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def progress_bar(json_mode: bool, description: str) -> Any:
    """A rich progress bar on stderr (silent with --json); yields a ``(done, total)`` callback."""
    import contextlib

    @contextlib.contextmanager
    def bar() -> Any:
        if json_mode or not sys.stderr.isatty():
            yield None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console(stderr=True), transient=True) as progress:
            task = progress.add_task(description, total=None)
            yield lambda done, total: progress.update(task, completed=done, total=total)

    return bar()


def open_fleet(home: Path | None, **overrides: Any) -> Any:
    from fleetscore.api import Fleet

    return Fleet.open(home, **overrides)
