"""``[executor] task_timeout``: a task still running past it ends its worker, fails with that reason (and the
tasks in flight beside it fail as after any worker death), and the next tasks run on a new pool."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fleetscore.api import Fleet
from fleetscore.errors import ConfigError
from fleetscore.exec.base import TaskError
from fleetscore.exec.local import LocalExecutor


def nap(seconds: float) -> int:
    """Sleep (a hang when long), then return this worker's pid."""
    time.sleep(seconds)
    return os.getpid()


def test_a_hung_task_fails_with_the_time_limit_and_the_pool_recovers() -> None:
    executor = LocalExecutor(2, task_timeout_s=1)
    try:
        results = dict(executor.map(nap, [0.0, 0.0, 3600.0, 0.0]))
        assert sorted(results) == [0, 1, 2, 3]  # an answer for every task
        hung = results[2]
        assert isinstance(hung, TaskError), hung
        assert "task_timeout (1 s)" in hung.error and "worker was ended" in hung.error
        assert all(isinstance(r, int) for i, r in results.items() if i < 2)  # done before the hang broke the pool
        again = dict(executor.map(nap, [0.0, 0.0]))
        assert all(isinstance(r, int) for r in again.values()), again
    finally:
        executor.close()


def test_tasks_within_the_limit_are_untouched() -> None:
    executor = LocalExecutor(2, task_timeout_s=30)
    try:
        results = dict(executor.map(nap, [0.2] * 4))
        assert all(isinstance(r, int) for r in results.values()), results
    finally:
        executor.close()


def test_the_limit_comes_from_the_settings(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Fleet.open(home).config.executor.task_timeout_s == 3600  # the default: an hour
    home.mkdir(exist_ok=True)
    (home / "fleetscore.toml").write_text('[executor]\ntask_timeout = "90s"\nworkers = 2\n')
    ex = Fleet.open(home).executor()
    assert isinstance(ex, LocalExecutor) and ex.task_timeout_s == 90
    monkeypatch.setenv("FLEETSCORE_TASK_TIMEOUT", "0")
    assert Fleet.open(home).config.executor.task_timeout_s == 0  # off
    monkeypatch.setenv("FLEETSCORE_TASK_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="FLEETSCORE_TASK_TIMEOUT: bad duration 'soon'"):
        Fleet.open(home)
