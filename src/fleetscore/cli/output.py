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
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

HomeOpt = Annotated[
    Path | None,
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
    """A Rich console that prints strings literally: no markup, emoji codes or highlighting from data.

    Styling is explicit (``print(..., style=...)`` or Text objects), so an id like ``[/]`` or
    ``[link=...]`` is text, never a tag.
    """
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True, markup=False, emoji=False)


def emit(json_mode: bool, payload: dict[str, Any] | list[Any], human: Callable[[Any], None]) -> None:
    if json_mode:
        sys.stdout.write(to_json(payload) + "\n")
    else:
        human(console())


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Any:
    """A Rich table whose title and cells are plain Text: values from data are never read as markup."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=None if title is None else Text(title), show_lines=False, header_style="bold")
    for col in columns:
        t.add_column(Text(col), overflow="fold")
    for row in rows:
        t.add_row(*[Text("" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))) for v in row])
    return t


def fail(message: str, code: int, json_mode: bool) -> None:
    """Report ``message`` (printed literally) on stderr, and with --json as the one object on stdout; exit ``code``."""
    from rich.text import Text

    if json_mode:
        sys.stdout.write(to_json({"error": message, "exit_code": code}) + "\n")
    console(stderr=True).print(Text.assemble(("error:", "bold red"), f" {message}"))
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
            fail(str(exc), exc.exit_code, json_mode)
        except KeyboardInterrupt:
            fail("interrupted", 130, json_mode)

    return wrapper  # type: ignore[return-value]


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


NowOpt = Annotated[str | None, typer.Option(
    "--now", help="Act as if the time were T (ISO 8601), e.g. to replay a day; the clock then stands still.")]
WorkersOpt = Annotated[int | None, typer.Option(help="Worker processes (default: cores).", min=1, max=1024)]
ExecutorOpt = Annotated[str | None, typer.Option(help="local or ray.")]
RayAddressOpt = Annotated[str | None, typer.Option("--ray-address", help="Ray cluster address (with --executor ray).")]
MaxFailedOpt = Annotated[str | None, typer.Option(
    "--max-failed-models", help="Abort a run past this many failed models: a count (1000) or a share of its models "
                                "(5%) (default: [schedule] max_failed_models, else never).")]
#: Longest window a flag takes (a training span) and longest retention period.
MAX_WINDOW_S = 366 * 86_400
MAX_KEEP_S = 100 * 366 * 86_400


def open_fleet(home: Path | None, now: str | None = None, **overrides: Any) -> Any:
    """The Fleet of ``home`` with flag overrides; ``now`` (``--now``): a clock standing still at that time."""
    from fleetscore.api import Fleet

    if overrides.get("max_failed_models") is not None:
        from fleetscore.config.schedule import failure_limit

        overrides["max_failed_models"] = failure_limit(overrides["max_failed_models"], "--max-failed-models")

    if now is None:
        return Fleet.open(home, **overrides)
    frozen = parse_time_flag(now, "--now")
    return Fleet.open(home, clock=lambda: frozen, **overrides)


def parse_time_flag(text: str, option: str) -> int:
    """An ISO 8601 time given to ``option``, in µs; InputError naming the option."""
    from fleetscore.core.times import parse_time

    return parse_time(text, option)


def duration(text: str, option: str, max_s: int = MAX_WINDOW_S, allow_zero: bool = False) -> int:
    """A duration flag (``30s``, ``5m``, ``1h``, ``7d``) in whole seconds; InputError naming the option."""
    from fleetscore.core.times import parse_duration
    from fleetscore.errors import InputError

    if allow_zero and text.strip() in ("0", "0s"):
        return 0
    try:
        return parse_duration(text, max_s)
    except InputError as exc:
        raise InputError(f"{option}: {exc}") from None


def export(json_mode: bool, tbl: Any, out: Path, what: str, fmt: str | None = None) -> None:
    """Write ``tbl`` to ``out`` (CSV or Parquet by ``fmt`` or the file name) and say so: ``wrote N <what> to out``."""
    from fleetscore.storage.files import write_table

    written = write_table(tbl, out, fmt)
    emit(json_mode, {"out": str(out), "format": written, "rows": tbl.num_rows},
         lambda c: c.print(f"wrote {tbl.num_rows:,} {what} to {out}"))


def exit_for(*statuses: str) -> None:
    """After the output: exit 1 if any run failed or was abandoned, else 3 if any is partial."""
    from fleetscore.core.runs import FAILED_STATUSES

    if any(s.value in statuses for s in FAILED_STATUSES):
        raise typer.Exit(EXIT_FAILURE)
    if "partial" in statuses:
        raise typer.Exit(EXIT_PARTIAL)
