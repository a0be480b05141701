"""Shared fixtures: a fresh home, a CLI runner that returns parsed JSON, a small simulated fleet."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("FLEETSCORE_HOME", str(h))
    for var in ("FLEETSCORE_STORAGE_URL", "FLEETSCORE_CATALOG_URL", "FLEETSCORE_EXECUTOR", "FLEETSCORE_WORKERS"):
        monkeypatch.delenv(var, raising=False)
    return h


@pytest.fixture
def cli():  # type: ignore[no-untyped-def]
    """Run ``fleetscore ARGS`` in-process; returns exit code, stdout and stderr separately."""
    from typer.testing import CliRunner

    from fleetscore.cli.main import app

    runner = CliRunner()

    def run(*args: str) -> CliResult:
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return run


@pytest.fixture(scope="session")
def small_fleet():  # type: ignore[no-untyped-def]
    """6 devices × 3 sensors × 8 h of minute readings, with labelled anomalies."""
    from fleetscore.core.simulate import simulate_fleet

    return simulate_fleet(6, 3, START, 8, 60.0, 0.02, 3)


@pytest.fixture
def fleet_csv(tmp_path: Path, small_fleet) -> Path:  # type: ignore[no-untyped-def]
    from fleetscore.storage.files import write_table

    path = tmp_path / "fleet.csv"
    write_table(small_fleet, path)
    return path
