"""Starting the CLI stays light: loading it and showing any command's --help imports no heavy module (issue 17).

Wall time is measured by bench/cli_start.py; these tests guard the causes instead: what is imported, and
that typer gets evaluated annotations rather than strings to compile on every start.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from typing import Any

from typer.main import get_command

from fleetscore.cli.main import app

#: Packages (and fleetscore modules) that only running a command may load; prefixes match submodules.
HEAVY = ("pyarrow", "numpy", "polars", "pandas", "sklearn", "pydantic", "rich", "fastapi", "uvicorn", "ray",
         "fleetscore.api", "fleetscore.services", "fleetscore.storage", "fleetscore.catalog", "fleetscore.exec",
         "fleetscore.config", "fleetscore.web", "fleetscore.ingest", "fleetscore.schedule")

#: Runs in a fresh interpreter: imports the CLI, shows the --help of each command path read from stdin
#: (as the ``fleetscore`` script would, in-process), and reports which HEAVY modules (argv) were loaded.
PROBE = """
import json, sys
from typer.testing import CliRunner
from fleetscore.cli.main import app

heavy = tuple(sys.argv[1:])
def loaded():
    return sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))

after_import = loaded()
failed = []
for path in json.load(sys.stdin):
    r = CliRunner().invoke(app, path + ["--help"])
    if r.exit_code != 0 or "Usage: " not in r.stdout:
        failed.append([path, r.exit_code, r.stdout + r.stderr])
print(json.dumps({"after_import": after_import, "after_help": loaded(), "failed": failed}))
"""

#: What the ``fleetscore`` console script runs.
ENTRY = "import sys; from fleetscore.cli.main import main; sys.exit(main())"


def commands() -> list[tuple[list[str], Any]]:
    """Every (path, click command) of the CLI: the root, each group and each command."""
    found: list[tuple[list[str], Any]] = []

    def walk(cmd: Any, path: list[str]) -> None:
        found.append((path, cmd))
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            walk(sub, path + [name])

    walk(get_command(app), [])
    return found


def test_import_and_every_help_load_no_heavy_module() -> None:
    paths = [path for path, _ in commands()]
    assert len(paths) > 50
    out = subprocess.run([sys.executable, "-c", PROBE, *HEAVY], input=json.dumps(paths), capture_output=True, text=True,
                         check=True).stdout
    report = json.loads(out)
    assert report["after_import"] == []
    assert report["failed"] == []
    assert report["after_help"] == []


def test_console_entry_prints_help_of_root_and_nested_commands() -> None:
    root = subprocess.run([sys.executable, "-c", ENTRY, "--help"], capture_output=True, text=True)
    assert root.returncode == 0, root.stderr
    assert root.stdout.startswith("Usage: ")
    top = {path[0] for path, _ in commands() if path}
    assert all(f"  {name} " in root.stdout for name in top), root.stdout
    nested = subprocess.run([sys.executable, "-c", ENTRY, "alerts", "silence", "add", "-h"], capture_output=True, text=True)
    assert nested.returncode == 0, nested.stderr
    assert "alerts silence add" in nested.stdout and "--json" in nested.stdout


def test_command_annotations_are_evaluated_at_import() -> None:
    """No command module uses string annotations: typer would compile and evaluate each one on every start."""
    stringly = [f"{' '.join(path) or '<root>'}: {name}" for path, cmd in commands() if cmd.callback is not None
                for name, hint in inspect.unwrap(cmd.callback).__annotations__.items() if isinstance(hint, str)]
    assert stringly == []


def test_version_answers_without_a_command() -> None:
    from fleetscore.version import __version__

    r = subprocess.run([sys.executable, "-c", "from fleetscore.cli.main import main; main()", "--version"],
                       capture_output=True, text=True)
    assert (r.returncode, r.stdout.strip()) == (0, __version__)
