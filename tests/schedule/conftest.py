"""Fixtures for scheduling and operations: a trained home (3 shards of 6 models), copied per test.

The home is trained once per session on hours 0-4 of the shared small fleet (6 devices × 3 sensors,
8 h of minute readings), with one worker and small shards, so every scoring run has 3 tasks and
runs in-process; retries, backoff and leases are short so failure paths stay fast.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sched_support import MODELS, SECRET_ENV, SHARDS, T0, T4, settings_toml


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory: pytest.TempPathFactory, small_fleet) -> Path:  # type: ignore[no-untyped-def]
    from fleetscore.api import Fleet

    home = tmp_path_factory.mktemp("sched-template") / "home"
    home.mkdir()
    (home / "fleetscore.toml").write_text(settings_toml())
    fleet = Fleet.open(home)
    try:
        fleet.import_table(small_fleet.select(["ts", "device", "sensor", "value"]))
        result = fleet.train(T0, T4, workers=1)
        assert result.shards >= SHARDS and result.models == MODELS  # several tasks per run
    finally:
        fleet.close()
    return home


@pytest.fixture
def home7(tmp_path: Path, trained_template: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the trained home; FLEETSCORE_HOME points at it (also for subprocesses)."""
    home = tmp_path / "home"
    shutil.copytree(trained_template, home)
    monkeypatch.setenv("FLEETSCORE_HOME", str(home))
    for var in ("FLEETSCORE_STORAGE_URL", "FLEETSCORE_CATALOG_URL", "FLEETSCORE_EXECUTOR", "FLEETSCORE_WORKERS",
                *SECRET_ENV):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def fleet7(home7: Path):  # type: ignore[no-untyped-def]
    from fleetscore.api import Fleet

    fleet = Fleet.open(home7)
    yield fleet
    fleet.close()


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start ``fleetscore ARGS`` as a subprocess in its own process group; all are killed at teardown."""
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", "from fleetscore.cli.main import main; main()", *args],
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True, env=os.environ.copy())
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
