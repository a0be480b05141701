"""The public surface: exported names, every command's --help, every command in the README, fast import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command

import fleetscore
from fleetscore.cli.main import app

ROOT = Path(__file__).resolve().parents[1]


def all_commands() -> list[list[str]]:
    root = get_command(app)
    out: list[list[str]] = []

    def walk(cmd, path):  # type: ignore[no-untyped-def]
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, path + [name])
        else:
            out.append(path)

    walk(root, [])
    return out


def test_exports_resolve() -> None:
    assert fleetscore.__all__ == sorted(fleetscore.__all__)
    for name in fleetscore.__all__:
        assert getattr(fleetscore, name) is not None


@pytest.mark.parametrize("path", all_commands(), ids=lambda p: " ".join(p))
def test_every_command_has_help_and_json(cli, path) -> None:  # type: ignore[no-untyped-def]
    r = cli(*path, "--help")
    assert r.exit_code == 0, r.stderr
    assert "--json" in r.stdout, f"{' '.join(path)} lacks --json"


def test_every_command_is_documented_in_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [" ".join(p) for p in all_commands() if p[-1] not in readme]
    assert not missing, f"commands not mentioned in README.md: {missing}"


def test_import_and_help_stay_light() -> None:
    heavy = "('sklearn', 'pyarrow', 'numba', 'ray', 'fastapi')"
    code = f"import sys, fleetscore.cli.main; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
