"""The Ray executor on a real two-node Ray cluster: same results as local, retries after a killed worker,
credentials forwarded to workers without reaching Ray's logs, and the CLI contract."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from fleetscore.api import Fleet
from fleetscore.core.runs import RunRecord
from fleetscore.core.simulate import simulate_fleet
from fleetscore.core.times import parse_time
from fleetscore.storage import layout

pytestmark = pytest.mark.backend

START = datetime(2026, 1, 1, tzinfo=UTC)
T0, T2, T3, T4 = "2026-01-01T00:00:00Z", "2026-01-01T02:00:00Z", "2026-01-01T03:00:00Z", "2026-01-01T04:00:00Z"
KEY = ["device", "sensor", "ts"]


def readings() -> pa.Table:
    """6 devices × 2 sensors × 4 h of minute readings: 12 models, tiny data."""
    return simulate_fleet(6, 2, START, 4, 60.0, 0.02, 7).select(["ts", "device", "sensor", "value"])


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home on local disk (shared by both nodes of the test cluster) with a version of 6 one-device shards
    (the defaults keep a device's sensors in one shard, whatever ``shard_models``)."""
    home = tmp_path_factory.mktemp("ray-home")
    fleet = Fleet.open(home, storage_url=str(home / "data"), catalog_url=f"sqlite:///{home / 'catalog.db'}",
                       executor="local", workers=1, shard_models=1)
    fleet.import_table(readings())
    assert fleet.train(T0, T2).shards == 6
    fleet.close()
    return home


def open_fleet(home: Path, **overrides: Any) -> Fleet:
    return Fleet.open(home, storage_url=str(home / "data"), catalog_url=f"sqlite:///{home / 'catalog.db'}",
                      workers=2, **overrides)


def sorted_predictions(fleet: Fleet, run: RunRecord) -> pa.Table:
    return fleet.predictions(run_id=run.run_id).sort_by([(k, "ascending") for k in KEY]).drop_columns(["run_id"])


def test_ray_predictions_and_records_equal_local_ones(trained_home: Path, ray_cluster) -> None:  # type: ignore[no-untyped-def]
    fleet = open_fleet(trained_home, ray_address=ray_cluster.address)
    local = fleet.score(T2, T3, executor="local")
    expected = sorted_predictions(fleet, local)
    remote = fleet.score(T2, T3, executor="ray")
    got = sorted_predictions(fleet, remote)
    print(f"\nscoring {T2}..{T3}, {remote.tasks} tasks: local {local.elapsed_s:.2f} s, ray {remote.elapsed_s:.2f} s")

    assert remote.executor == "ray" and remote.status.value == local.status.value == "succeeded"
    for name in ("models", "rows", "anomalies", "unmatched_rows", "failed_models", "tasks"):
        assert getattr(remote, name) == getattr(local, name), name
    assert got.num_rows == remote.rows > 0
    assert got.equals(expected)
    _, tasks, failures = fleet.run(remote.run_id)
    assert not failures and len(tasks) == remote.tasks
    assert all(t.status == "succeeded" and t.attempts == 1 for t in tasks)
    assert all(t.node.startswith(f"{ray_cluster.address.split(':')[0]}/") for t in tasks)  # the Ray node ran it
    assert all(t.worker and t.wall_s > 0 for t in tasks)
    fleet.close()


def test_executor_yields_results_errors_and_refuses_another_fleetscore(ray_cluster,  # type: ignore[no-untyped-def]
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from fleetscore.exec.base import TaskError
    from fleetscore.exec.ray import RayExecutor

    executor = RayExecutor(2, address=ray_cluster.address)
    results = dict(executor.map(len, ["a", "abc", 5, ""]))
    assert {i: results[i] for i in (0, 1, 3)} == {0: 1, 1: 3, 3: 0}
    assert isinstance(results[2], TaskError) and results[2].error.startswith("TypeError")
    assert results[2].attempts == 1  # an exception is the task's result: Ray does not run it again
    monkeypatch.setattr("fleetscore.version.__version__", "0.0.0-other")  # the driver now differs from the workers
    [(_, refused)] = list(executor.map(len, ["abc"]))
    assert isinstance(refused, TaskError) and "0.0.0-other on the driver" in refused.error
    executor.close()


def test_a_hung_task_ends_its_ray_worker_at_the_time_limit_and_fails_after_its_retries(ray_cluster) -> None:  # type: ignore[no-untyped-def]
    from fleetscore.exec.base import TaskError
    from fleetscore.exec.ray import RayExecutor

    executor = RayExecutor(2, address=ray_cluster.address, max_retries=1, task_timeout_s=1)
    results = dict(executor.map(time.sleep, [0, 3600, 0.1]))
    assert results[0] is None and results[2] is None  # the others finish
    hung = results[1]
    assert isinstance(hung, TaskError) and hung.attempts == 2, hung
    assert "task_timeout (1 s)" in hung.error, hung.error
    executor.close()


def kill_a_busy_worker(cluster, run: threading.Thread) -> int | None:  # type: ignore[no-untyped-def]
    """SIGKILL a worker process while it runs a task; None when the run ended before one was caught.

    The worker is stopped first, then its title is read again: still ``ray::fleetscore.*`` means
    it is inside a task (it cannot finish while stopped), so the kill lands mid-task.
    """
    while run.is_alive():
        for pid in cluster.busy_workers():
            try:
                os.kill(pid, signal.SIGSTOP)
                busy = Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::fleetscore.")
                os.kill(pid, signal.SIGKILL if busy else signal.SIGCONT)
            except (ProcessLookupError, FileNotFoundError):
                continue
            if busy:
                return pid
        time.sleep(0.002)
    return None


def test_killed_worker_tasks_are_retried_and_scored_exactly_once(trained_home: Path, ray_cluster) -> None:  # type: ignore[no-untyped-def]
    fleet = open_fleet(trained_home, ray_address=ray_cluster.address)
    expected = sorted_predictions(fleet, fleet.score(T3, T4, executor="local"))
    for _ in range(3):  # a run on warm workers can end before a busy worker is caught: run again
        result: dict[str, RunRecord] = {}
        run = threading.Thread(target=lambda result=result: result.update(run=fleet.score(T3, T4, executor="ray")))
        run.start()
        killed = kill_a_busy_worker(ray_cluster, run)
        run.join(300)
        if killed:
            break
    assert killed, "no worker was caught running a task"
    record = result["run"]
    assert record.status.value == "succeeded", record.error
    _, tasks, failures = fleet.run(record.run_id)
    assert not failures and sorted(t.task for t in tasks) == list(range(record.tasks))
    assert max(t.attempts for t in tasks) >= 2  # the killed worker's task ran again
    assert all(t.status == "succeeded" for t in tasks)

    got = sorted_predictions(fleet, record)
    assert got.num_rows == record.rows == expected.num_rows
    assert got.group_by(KEY).aggregate([([], "count_all")]).column("count_all").to_pylist() == [1] * got.num_rows
    assert got.equals(expected)
    lo, hi = parse_time(T3), parse_time(T4)
    files = fleet.storage.list(layout.run_predictions_dir(lo, hi, record.run_id))
    assert len(files) == record.tasks  # one file per task, a retried task rewrote its own
    fleet.close()


def test_workers_get_storage_credentials_from_the_driver_only(ray_cluster, moto, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The nodes were started without credentials: tasks reading S3 get them from the driver, and
    Ray's own files (logs, session data) never contain the secret."""
    for name, value in moto.env.items():
        monkeypatch.setenv(name, value)
    secret = moto.env["AWS_SECRET_ACCESS_KEY"]
    home = tmp_path / "home"
    fleet = Fleet.open(home, storage_url=moto.bucket() + "/fleet", executor="ray", workers=2, shard_models=4,
                       ray_address=ray_cluster.address)
    fleet.import_table(readings())
    trained = fleet.train(T0, T2)  # training runs on Ray too
    assert trained.models == 12 and trained.shards > 1
    run = fleet.score(T2, T3)
    assert run.status.value == "succeeded" and run.rows == 12 * 60
    assert fleet.predictions(start=T2, end=T3).num_rows == run.rows
    fleet.close()
    leaked = [p for p in Path(ray_cluster.temp_dir).rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == []
    assert "AWS_SECRET_ACCESS_KEY" not in ray_cluster.node_env


def fleetscore_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "from fleetscore.cli.main import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("how", ["--ray-address", "RAY_ADDRESS=ray://"])
def test_cli_score_on_ray_prints_one_json_object(trained_home: Path, ray_cluster, how: str) -> None:  # type: ignore[no-untyped-def]
    env = os.environ | {"FLEETSCORE_HOME": str(trained_home)}
    args = ["score", "--from", T2, "--to", T3, "--executor", "ray", "--workers", "2", "--json"]
    if how == "--ray-address":
        args += ["--ray-address", ray_cluster.address]
    else:  # no address: the executor joins the instance RAY_ADDRESS names, here through Ray Client
        env["RAY_ADDRESS"] = ray_cluster.client_address
    # (Ray Client's proxy start-up races, e.g. two clusters' proxies on one port: connect() retries them)
    done = fleetscore_cli(*args, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout)
    assert run["executor"] == "ray" and run["status"] == "succeeded" and run["rows"] == 12 * 60


def test_unreachable_ray_address_fails_clearly(trained_home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.2", 0))
        address = f"127.0.0.2:{s.getsockname()[1]}"
    r = cli("score", "--from", T2, "--to", T3, "--executor", "ray", "--ray-address", address,
            "--home", trained_home, "--json")
    assert r.exit_code == 1
    assert "cannot connect to Ray at " + address in r.json["error"]


@pytest.mark.parametrize(("failures", "message", "calls", "connects"), [
    (2, "Initialization failure from server: psutil.ZombieProcess", 3, True),  # a proxy start-up race: again
    (1, "Starting Ray client server failed", 2, True),
    (3, "Initialization failure from server", 3, False),  # still failing after the last attempt
    (1, "Version mismatch: The cluster was started with Python 3.12", 1, False),  # a real error: at once
])
def test_connect_retries_ray_client_start_up_races_only(monkeypatch: pytest.MonkeyPatch, failures: int,
                                                        message: str, calls: int, connects: bool) -> None:
    import ray

    from fleetscore.errors import FleetscoreError
    from fleetscore.exec import ray as ray_executor

    seen: list[str | None] = []

    def init(address: str | None = None, **_: Any) -> None:
        seen.append(address)
        if len(seen) <= failures:
            raise ConnectionAbortedError(message)

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_executor, "_check_reachable", lambda address: None)
    monkeypatch.setattr(ray_executor.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(ray_executor._Connection, "opened", False)
    monkeypatch.setattr(ray_executor._Connection, "address", None)
    if connects:
        ray_executor.connect("ray://127.0.0.2:10001", 1)
        assert ray_executor._Connection.address == "ray://127.0.0.2:10001"
    else:
        with pytest.raises(FleetscoreError, match="cannot connect to Ray at ray://127.0.0.2:10001"):
            ray_executor.connect("ray://127.0.0.2:10001", 1)
    assert len(seen) == calls


def test_a_killed_ray_driver_s_window_is_taken_over_and_completes_once(trained_home: Path, ray_cluster,  # type: ignore[no-untyped-def]
                                                                       tmp_path: Path) -> None:
    """The scheduler driving Ray is killed mid-run (kill -9 of its process group); once its lease expires, the
    next scheduler resumes the same run on Ray and runs only the task that had not succeeded."""
    home = tmp_path / "home"
    shutil.copytree(trained_home, home)
    env = os.environ | {"FLEETSCORE_HOME": str(home)}

    def settings(backoff: str) -> None:  # a 2 s lease; shard 1's retry waits `backoff`
        (home / "fleetscore.toml").write_text(
            f'[executor]\nkind = "ray"\nray_address = "{ray_cluster.address}"\nworkers = 2\nin_process = "never"\n'
            f'[schedule]\nlease = "2s"\nretries = 3\nretry_backoff = {backoff}\n')

    settings('"60s"')
    by_hand = Fleet.open(home, executor="local")
    earlier = by_hand.score(T2, T3).run_id  # the window was scored by hand before: the scheduled run replaces it
    by_hand.close()
    shard = home / "data" / "models" / "v1" / "shard-00001.npz"
    good = shard.read_bytes()
    shard.write_bytes(b"not a model")
    added = fleetscore_cli("schedule", "add", "hourly", "--cron", "5 * * * *", "--start", T3, env=env)
    assert added.returncode == 0, added.stderr[-2000:]
    now = "2026-01-01T03:06:00Z"  # the one window due: [02:00, 03:00), fired at 03:05
    code = "from fleetscore.cli.main import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, "scheduler", "--now", now], env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    fleet = Fleet.open(home)
    try:
        deadline = time.monotonic() + 240  # ends a hung test; times nothing
        run_id = None
        while time.monotonic() < deadline and proc.poll() is None:
            runs = fleet.runs()
            if runs and {t.task: t.status for t in fleet.run(runs[0].run_id)[1]} == {
                    t: "retrying" if t == 1 else "succeeded" for t in range(6)}:
                run_id = runs[0].run_id
                break
            time.sleep(0.2)
        assert run_id, f"the run never reached shard 1's retry: {proc.poll()} {fleet.runs()}"
        before = {t.task: t for t in fleet.run(run_id)[1]}
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert fleet.run(run_id)[0].status.value in ("running", "abandoned")  # nobody finished it
        shard.write_bytes(good)  # the operator repairs the shard
        settings("0.05")

        taken = None
        while time.monotonic() < deadline:  # left alone until the dead scheduler's lease expires (2 s)
            done = fleetscore_cli("scheduler", "--once", "--now", now, "--json", env=env)
            assert done.returncode in (0, 3), done.stderr[-3000:]
            if json.loads(done.stdout)["ran"]:
                taken = json.loads(done.stdout)["ran"]
                break
            time.sleep(0.5)
        assert taken and [w["run_id"] for w in taken] == [run_id], taken  # the same run, resumed
        run, tasks, failures = fleet.run(run_id)
        assert run.status.value == "succeeded" and run.executor == "ray" and not failures, run
        assert [r.run_id for r in fleet.runs() if r.schedule == "hourly"] == [run_id]  # one scheduled run, resumed
        assert fleet.run(earlier)[0].status.value == "succeeded"  # the hand-scored run it replaced is left as it was
        assert fleet.catalog.committed_runs()[(run.window_from, run.window_to)] == run_id
        for t in tasks:
            if t.task == 1:
                assert t.attempts >= 2 and t.status == "succeeded"
            else:  # tasks that had succeeded did not run again
                assert (t.worker, t.wall_s, t.attempts) == (before[t.task].worker, before[t.task].wall_s, 1)
        table = fleet.predictions(run_id=run_id)
        assert table.num_rows == run.rows == 12 * 60
        assert table.group_by(KEY).aggregate([([], "count_all")]).column("count_all").to_pylist() == [1] * run.rows
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        fleet.close()
