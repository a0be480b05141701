"""A `score` or `train` driver killed with kill -9 leaves no debris: its pool workers, fork server and
resource tracker end; its run is marked abandoned (and retried) or its half-trained version is
abandoned, and `gc` removes what is left, giving true reasons for what it keeps.

Every test starts a real `fleetscore` subprocess on a real home and kills only the driver process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fleetscore.api import Fleet
from fleetscore.core.simulate import simulate_fleet

T0, T4, T5 = "2026-01-01T00:00:00Z", "2026-01-01T04:00:00Z", "2026-01-01T05:00:00Z"
#: Two pool workers, many shards; a 2 s lease; a failed task waits a minute for its retry, so a run
#: with a broken shard is certainly still going (its pool alive) when its driver is killed.
SETTINGS = ('[executor]\nworkers = 2\nshard_models = 20\nin_process = "never"\n'
            '[schedule]\nlease = 2\nretries = 3\nretry_backoff = 60\n')
HANG_GUARD_S = 60.0  # polls give up after this: they end hung tests, they time nothing


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with 100 devices × 3 sensors × 8 h of minute readings and v1 trained on hours 0-4 (15 shards)."""
    home = tmp_path_factory.mktemp("killed-drivers") / "home"
    home.mkdir()
    (home / "fleetscore.toml").write_text(SETTINGS)
    fleet = Fleet.open(home)
    try:
        fleet.import_table(simulate_fleet(100, 3, datetime(2026, 1, 1, tzinfo=UTC), 8, 60.0, 0.02, 3)
                           .select(["ts", "device", "sensor", "value"]))
        assert fleet.train(T0, T4).shards > 2
    finally:
        fleet.close()
    return home


@pytest.fixture
def home(tmp_path: Path, template: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    shutil.copytree(template, home)
    monkeypatch.setenv("FLEETSCORE_HOME", str(home))
    for var in ("FLEETSCORE_STORAGE_URL", "FLEETSCORE_CATALOG_URL", "FLEETSCORE_EXECUTOR", "FLEETSCORE_WORKERS"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``fleetscore ARGS`` in its own process group; the group is killed at teardown (debris included)."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", "from fleetscore.cli.main import main; main()", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate(timeout=30)


def wait_for(condition: Callable[[], object], what: str) -> object:
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process from /proc, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[19])


def descendants(pid: int) -> set[tuple[int, int]]:
    """(pid, start time) of every process below ``pid``."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[1], []).append((int(entry.name), stat[2]))
    found: set[tuple[int, int]] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child[0])
    return found


def still_running(procs: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """Those of ``procs`` that still run (a zombie left for its reaper has ended)."""
    return {(pid, start) for pid, start in procs
            if (stat := _stat(pid)) is not None and stat[2] == start and stat[0] != "Z"}


def kill_driver(proc: subprocess.Popen[str], min_descendants: int) -> None:
    """kill -9 the driver alone once its pool is up; then every process it started must end by itself."""
    def pool_up() -> set[tuple[int, int]] | None:
        found = descendants(proc.pid)
        return found if len(found) >= min_descendants else None

    below = wait_for(pool_up, "the driver's fork server and workers")
    assert isinstance(below, set)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + HANG_GUARD_S
    while still_running(below) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:120] for pid, _ in still_running(below)}
    assert not left, f"processes of the killed driver live on: {left}"


def start_stuck_score(home: Path, spawn: Callable[..., subprocess.Popen[str]]) -> tuple[subprocess.Popen[str], str]:
    """A `score` whose shard 1 is unreadable: it waits a minute to retry that task, its pool up."""
    shard = home / "data" / "models" / "v1" / "shard-00001.npz"
    good = shard.read_bytes()
    shard.write_bytes(b"not a model")
    proc = spawn("score", "--from", T4, "--to", T5, "--json")
    fleet = Fleet.open(home)
    try:
        run_id = str(wait_for(lambda: next((r.run_id for r in fleet.runs()), None), "the run to start"))
        wait_for(lambda: any(t.status == "retrying" for t in fleet.run(run_id)[1]), "a task to wait for its retry")
        # and another task done, its file written: what a killed run leaves behind besides its record
        wait_for(lambda: any(t.status == "succeeded" for t in fleet.run(run_id)[1]), "a task to succeed")
    finally:
        fleet.close()
    shard.write_bytes(good)  # repaired now: a retry of the run can succeed
    return proc, run_id


def run_status(cli, run_id: str) -> str:  # type: ignore[no-untyped-def]
    return next(r["status"] for r in cli("runs", "list", "--json").json["runs"] if r["run_id"] == run_id)


def test_a_killed_score_driver_leaves_no_processes_and_its_run_is_abandoned_then_retried(  # type: ignore[no-untyped-def]
        cli, home: Path, spawn) -> None:
    proc, run_id = start_stuck_score(home, spawn)
    kill_driver(proc, min_descendants=3)  # fork server and two workers (and the resource tracker)
    wait_for(lambda: run_status(cli, run_id) == "abandoned", "the run to be found abandoned once its lease expired")
    shown = cli("runs", "show", run_id, "--json")
    assert shown.exit_code == 1 and shown.json["status"] == "abandoned" and "abandoned" in shown.json["error"]
    retried = cli("runs", "retry", run_id, "--json")
    assert retried.exit_code == 0, retried.stdout
    assert retried.json["status"] == "succeeded" and 1 in retried.json["retried_tasks"]
    assert run_status(cli, run_id) == "succeeded"


def test_gc_after_a_killed_score_removes_the_abandoned_run_and_claims_no_schedule(cli, home: Path, spawn) -> None:  # type: ignore[no-untyped-def]
    proc, run_id = start_stuck_score(home, spawn)
    kill_driver(proc, min_descendants=3)
    wait_for(lambda: run_status(cli, run_id) == "abandoned", "the run to be found abandoned")
    time.sleep(1.1)  # the run is now older than --keep 1s
    plan = cli("gc", "--keep", "1s", "--dry-run", "--json").json
    assert not any("schedule" in why for why in plan["kept"].values()), plan["kept"]  # there is no schedule
    assert run_id in plan["runs"] and f"{T4}..{T5}" in plan["predictions"], plan
    run_dir = next((home / "data" / "predictions").glob("window=*T04*")) / f"run={run_id}"
    assert run_dir.exists()  # the tasks that succeeded before the kill left their files
    done = cli("gc", "--keep", "1s", "--json")
    assert done.exit_code == 0 and run_id in done.json["runs"]
    assert not run_dir.exists() and not (home / "data" / "logs" / f"run={run_id}").exists()
    assert run_id not in [r["run_id"] for r in cli("runs", "list", "--json").json["runs"]]


def test_a_live_run_keeps_its_window_with_the_run_as_reason(cli, home: Path, spawn) -> None:  # type: ignore[no-untyped-def]
    proc, run_id = start_stuck_score(home, spawn)
    time.sleep(1.1)
    plan = cli("gc", "--keep", "1s", "--dry-run", "--json").json
    assert list(plan["kept"].values()).count(f"run {run_id} is still running") == 1, plan["kept"]
    assert run_id not in plan["runs"]
    proc.kill()


def version_status(cli, version: str) -> str | None:  # type: ignore[no-untyped-def]
    return next((v["status"] for v in cli("models", "versions", "--json").json["versions"] if v["version"] == version),
                None)


def test_a_killed_train_driver_leaves_an_abandoned_version_that_gc_removes(cli, home: Path, spawn) -> None:  # type: ignore[no-untyped-def]
    for _ in range(5):  # training can end before it is caught mid-way: train again (v2, v3, ...)
        proc = spawn("train", "--from", T0, "--to", T4, "--no-release", "--json")
        shards = wait_for(lambda proc=proc: proc.poll() is not None or [
            p for p in (home / "data" / "models").glob("v*/shard-*.npz") if p.parent.name != "v1"], "a shard file")
        if proc.poll() is None:
            break
        proc.communicate()
    else:
        raise AssertionError("training always ended before it could be killed")
    assert isinstance(shards, list)
    version = shards[0].parent.name
    kill_driver(proc, min_descendants=3)
    assert version_status(cli, version) in ("training", "abandoned")
    wait_for(lambda: version_status(cli, version) == "abandoned", "the version to be found abandoned")
    time.sleep(1.1)
    done = cli("gc", "--keep", "1s", "--json")
    assert done.exit_code == 0 and version in done.json["versions"], done.json
    assert not (home / "data" / "models" / version).exists()
    assert version_status(cli, version) == "deleted"
    assert version_status(cli, "v1") == "ready"  # released: kept
