"""The local executor: a worker process killed mid-task (kill -9, the OOM killer) fails that task with a
clear reason, and the executor replaces its broken pool so the retry and later runs go on."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from fleetscore.api import Fleet
from fleetscore.core.simulate import simulate_fleet
from fleetscore.exec.base import TaskError
from fleetscore.exec.local import LocalExecutor

T = TypeVar("T")


def die_once(marker: str) -> int:
    """Kill the worker running this the first time it is called for ``marker``; then return its pid."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def test_a_killed_worker_fails_its_task_and_the_pool_recovers(tmp_path: Path) -> None:
    specs = [str(tmp_path / f"task-{i}") for i in range(6)]
    for i in (0, 2, 3, 4, 5):  # only task 1 dies
        Path(specs[i]).write_text("ran before")
    executor = LocalExecutor(2)
    try:
        first = dict(executor.map(die_once, specs))
        assert sorted(first) == list(range(6))  # one answer per task, none lost
        failed = sorted(i for i, r in first.items() if isinstance(r, TaskError))
        assert 1 in failed
        assert "worker process died" in first[1].error and "out of memory" in first[1].error
        # what failed with the broken pool runs again on a new one (as a run's retry does)
        again = dict(executor.map(die_once, [specs[i] for i in failed]))
        assert all(isinstance(r, int) for r in again.values()), again
        later = dict(executor.map(die_once, specs))  # and the executor stays usable
        assert all(isinstance(r, int) for r in later.values())
    finally:
        executor.close()


def test_one_worker_runs_in_process_and_keeps_task_errors_as_data() -> None:
    executor = LocalExecutor(1)
    results = dict(executor.map(int, ["1", "x", "3"]))
    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], TaskError) and "invalid literal" in results[1].error


def pool_workers(min_age_s: float = 0.05) -> list[int]:
    """Pids of this process's pool workers (children of its multiprocessing fork server, not of the
    brokers or servers other tests started) once every one is ``min_age_s`` old: the pool is
    established, as when the OOM killer strikes mid-run. (A kill while CPython is still spawning a
    pool's workers can wedge the pool or its fork server: a CPython limitation, not tested here.)"""
    from multiprocessing import forkserver

    server = forkserver._forkserver._forkserver_pid
    if server is None:
        return []
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    ticks = os.sysconf("SC_CLK_TCK")
    workers, ages = [], []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == server:
                workers.append(int(entry.name))
                ages.append(uptime - int(fields[19]) / ticks)
    return workers if len(workers) >= 2 and min(ages) >= min_age_s else []


T0, T2, T3 = "2026-01-01T00:00:00Z", "2026-01-01T02:00:00Z", "2026-01-01T03:00:00Z"


def small_fleet(home: Path) -> Fleet:
    """12 devices × 2 sensors × 3 h of minute readings, imported into a home with 2 workers, 1 model a shard."""
    fleet = Fleet.open(home, workers=2, shard_models=1, in_process="never")  # on the pool, however small
    fleet.import_table(simulate_fleet(12, 2, datetime(2026, 1, 1, tzinfo=UTC), 3, 60.0, 0.02, 4)
                       .select(["ts", "device", "sensor", "value"]))
    return fleet


def run_killing_a_worker(job: Callable[[], T]) -> T:
    """Run ``job`` in a thread and SIGKILL one pool worker while it goes; retried until a kill lands."""
    for _ in range(10):  # a job can end before a worker is caught: run again
        result: list[T] = []
        thread = threading.Thread(target=lambda result=result: result.append(job()))
        thread.start()
        killed = None
        while thread.is_alive() and killed is None:
            workers = pool_workers()
            if workers:
                os.kill(workers[0], signal.SIGKILL)
                killed = workers[0]
            time.sleep(0.001)
        thread.join(300)
        if killed:
            assert result, "the job raised (see the thread's traceback above)"
            return result[0]
    raise AssertionError("no pool worker was caught while the job ran")


def test_worker_killed_during_a_run_its_tasks_run_again_and_every_reading_is_scored_once(tmp_path: Path) -> None:
    (tmp_path / "fleetscore.toml").write_text('[schedule]\nretries = 3\nretry_backoff = 0.05\n')
    fleet = small_fleet(tmp_path)
    fleet.train(T0, T2)
    t2, t3 = T2, T3
    key = [("device", "ascending"), ("sensor", "ascending"), ("ts", "ascending")]
    expected = fleet.predictions(run_id=fleet.score(t2, t3, workers=1).run_id).sort_by(key).drop_columns(["run_id"])
    record = run_killing_a_worker(lambda: fleet.score(t2, t3))
    assert record.status.value == "succeeded", record.error
    _, tasks, failures = fleet.run(record.run_id)
    assert not failures and all(t.status == "succeeded" for t in tasks)
    got = fleet.predictions(run_id=record.run_id).sort_by(key).drop_columns(["run_id"])
    assert got.num_rows == record.rows == expected.num_rows
    assert got.equals(expected)  # nothing lost, nothing twice
    fleet.close()


def test_worker_killed_during_training_its_shards_train_again(tmp_path: Path) -> None:
    fleet = small_fleet(tmp_path)
    result = run_killing_a_worker(lambda: fleet.train(T0, T2, release=False))
    assert result.models == 24 and result.failed == 0
    manifest = fleet.models(result.version)
    assert manifest.num_rows == 24 and set(manifest.column("status").to_pylist()) == {"ok"}
    fleet.close()
