"""Operations through the CLI: schedules, retries of failed shards, cancel, logs, backfill, exit codes."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sched_support import ROWS_PER_HOUR, set_schedule_settings, shard_path, shard_sizes, wait_for

from fleetscore.core.runs import MAX_LISTED

T5, T6, T7, T8 = "2026-01-01T05:00:00Z", "2026-01-01T06:00:00Z", "2026-01-01T07:00:00Z", "2026-01-01T08:00:00Z"


def run_dir(home: Path, run_id: str) -> Path:
    return next((home / "data" / "predictions").glob(f"window=*/run={run_id}"))


def test_schedule_add_list_pause_resume_remove(cli, home7) -> None:  # type: ignore[no-untyped-def]
    r = cli("schedule", "add", "hourly", "--cron", "5 * * * *", "--window", "1h", "--lag", "5m", "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json["name"] == "hourly" and r.json["version"] == "released" and r.json["lag"] == "5m"
    assert cli("schedule", "add", "pinned", "--cron", "@hourly", "--version", "v1", "--json").exit_code == 0
    listed = cli("schedule", "list", "--json").json["schedules"]
    assert [s["name"] for s in listed] == ["hourly", "pinned"] and listed[1]["version"] == "v1"
    assert all(s["next_fire"].endswith("Z") for s in listed)
    assert cli("schedule", "pause", "hourly", "--json").json == {"name": "hourly", "paused": True}
    assert cli("schedule", "list", "--json").json["schedules"][0]["paused"] is True
    assert cli("schedule", "resume", "hourly", "--json").json["paused"] is False
    assert cli("schedule", "remove", "pinned", "--json").exit_code == 0
    assert [s["name"] for s in cli("schedule", "list", "--json").json["schedules"]] == ["hourly"]
    human = cli("schedule", "list")
    assert human.exit_code == 0 and "schedules" in human.stdout


@pytest.mark.parametrize("args,needle", [
    (("--cron", "61 * * * *"), "out of range"),
    (("--cron", "5 * * *"), "expected 5 fields"),
    (("--cron", "5 * * * *", "--window", "soon"), "--window: bad duration"),
    (("--cron", "5 * * * *", "--version", "v9"), "unknown model version"),
    (("--cron", "5 * * * *", "--version", "v1", "--released"), "not both"),
    (("--cron", "5 * * * *", "--no-release"), "--train"),
])
def test_bad_schedules_exit_2_with_the_reason(cli, home7, args, needle) -> None:  # type: ignore[no-untyped-def]
    r = cli("schedule", "add", "s1", *args, "--json")
    assert r.exit_code == 2 and needle in r.json["error"], r.stdout
    assert cli("schedule", "list", "--json").json["schedules"] == []


def test_duplicate_and_unknown_schedules_exit_2(cli, home7) -> None:  # type: ignore[no-untyped-def]
    assert cli("schedule", "add", "s1", "--cron", "5 * * * *").exit_code == 0
    dup = cli("schedule", "add", "s1", "--cron", "5 * * * *", "--json")
    assert dup.exit_code == 2 and "exists" in dup.json["error"]
    for verb in ("pause", "resume", "remove"):
        r = cli("schedule", verb, "nope", "--json")
        assert r.exit_code == 2 and "unknown schedule" in r.json["error"]


def test_scheduler_once_runs_due_windows_and_says_what_it_did(cli, home7) -> None:  # type: ignore[no-untyped-def]
    cli("schedule", "add", "hourly", "--cron", "5 * * * *", "--start", "2026-01-01T05:30:00Z")
    r = cli("scheduler", "--once", "--now", "2026-01-01T07:06:00Z", "--json")
    assert r.exit_code == 0, r.stderr
    assert [w["window_from"] for w in r.json["ran"]] == [T5, T6]
    assert "hourly: scoring" in r.stderr
    again = cli("scheduler", "--once", "--now", "2026-01-01T07:06:00Z", "--json")
    assert again.json["ran"] == [] and again.json["planned"] == []
    windows = cli("schedule", "windows", "hourly", "--json").json["windows"]
    assert [(w["window_from"], w["status"]) for w in windows] == [(T6, "succeeded"), (T5, "succeeded")]


def test_a_failing_shard_is_retried_and_only_it_reruns(cli, home7, fleet7) -> None:  # type: ignore[no-untyped-def]
    sizes = shard_sizes(fleet7)
    set_schedule_settings(home7, retries=2, retry_backoff=0.05)
    good = shard_path(home7, 1).read_bytes()
    shard_path(home7, 1).write_bytes(b"this is not a model file")
    r = cli("score", "--from", T6, "--to", T7, "--json")
    assert r.exit_code == 3, r.stderr  # partial
    run = r.json
    assert run["status"] == "partial" and run["rows"] == ROWS_PER_HOUR - 60 * sizes[1]
    shown = cli("runs", "show", run["run_id"], "--json").json
    failed = [t for t in shown["tasks"] if t["status"] == "failed"]
    assert [(t["task"], t["attempts"]) for t in failed] == [(1, 3)]  # first try + 2 retries
    assert "shard-00001.npz" in failed[0]["error"]
    assert {f["reason"] for f in shown["failures"]} == {failed[0]["error"]} and failed[0]["failed_models"] == sizes[1]
    assert len(shown["failures"]) == min(sizes[1], MAX_LISTED)  # a failed shard lists a sample of its models
    before = {t["task"]: t for t in shown["tasks"]}
    files = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir(home7, run["run_id"]).iterdir()}
    assert sorted(files) == [f"task-{t:05d}.parquet" for t in sizes if t != 1]

    shard_path(home7, 1).write_bytes(good)
    r = cli("runs", "retry", run["run_id"], "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json["retried_tasks"] == [1] and r.json["status"] == "succeeded" and r.json["rows"] == ROWS_PER_HOUR
    after = {t["task"]: t for t in cli("runs", "show", run["run_id"], "--json").json["tasks"]}
    for task in (t for t in sizes if t != 1):  # untouched: same record, same file
        assert after[task] == before[task]
        path = run_dir(home7, run["run_id"]) / f"task-{task:05d}.parquet"
        assert (path.stat().st_mtime_ns, path.read_bytes()) == files[path.name]
    assert after[1]["status"] == "succeeded" and after[1]["attempts"] == 4
    out = home7 / "p.parquet"
    assert cli("predictions", "--from", T6, "--to", T7, "--out", out).exit_code == 0
    table = pq.read_table(out)
    assert table.num_rows == ROWS_PER_HOUR and set(table.column("run_id").to_pylist()) == {run["run_id"]}
    # a second retry has nothing left to do
    assert cli("runs", "retry", run["run_id"], "--json").json["retried_tasks"] == []


def test_a_failing_task_succeeds_on_a_later_attempt(fleet7, home7) -> None:  # type: ignore[no-untyped-def]
    set_schedule_settings(home7, retries=2, retry_backoff=1)
    good = shard_path(home7, 2).read_bytes()
    shard_path(home7, 2).write_bytes(b"broken for a moment")

    def repair() -> None:  # the storage comes back while the run waits to retry
        wait_for(lambda: list((home7 / "data" / "logs").glob("run=*/task-00002/attempt-1.jsonl")), what="attempt 1")
        shard_path(home7, 2).write_bytes(good)

    fixer = threading.Thread(target=repair)
    fixer.start()
    from fleetscore.api import Fleet

    fleet = Fleet.open(home7)  # reads the settings written above
    run = fleet.score(T6, T7)
    fixer.join()
    tasks = {t.task: t for t in fleet.run(run.run_id)[1]}
    fleet.close()
    assert run.status.value == "succeeded" and run.rows == ROWS_PER_HOUR
    assert tasks[2].attempts == 2 and tasks[0].attempts == tasks[1].attempts == 1


def test_runs_retry_refuses_a_run_whose_window_was_scored_again(cli, home7) -> None:  # type: ignore[no-untyped-def]
    first = cli("score", "--from", T6, "--to", T7, "--json").json
    cli("score", "--from", T6, "--to", T7)
    r = cli("runs", "retry", first["run_id"], "--json")
    assert r.exit_code == 2 and "score the window again" in r.json["error"]
    assert cli("runs", "retry", "ffffffffffffffff", "--json").exit_code == 2
    assert cli("runs", "retry", "../etc", "--json").exit_code == 2


def test_cancel_stops_a_run_waiting_to_retry(cli, home7) -> None:  # type: ignore[no-untyped-def]
    set_schedule_settings(home7, retries=3, retry_backoff=60)
    shard_path(home7, 0).write_bytes(b"broken")
    from fleetscore.api import Fleet
    from fleetscore.exec.control import RunStopped

    fleet = Fleet.open(home7)
    outcome: list[BaseException] = []

    def score() -> None:
        try:
            fleet.score(T6, T7)
        except RunStopped as exc:
            outcome.append(exc)

    worker = threading.Thread(target=score)
    worker.start()
    try:
        run_id = wait_for(lambda: next((r.run_id for r in fleet.runs()), None), what="the run")
        wait_for(lambda: any(t.status == "retrying" for t in fleet.run(run_id)[1]), what="a retry wait")
        busy = cli("score", "--from", T6, "--to", T7, "--json")  # the window is taken meanwhile
        assert busy.exit_code == 2 and run_id in busy.json["error"]
        r = cli("runs", "cancel", run_id, "--json")
    finally:
        worker.join(timeout=120)
    assert r.exit_code == 0 and r.json == {"run_id": run_id, "status": "cancelled"}
    assert outcome and outcome[0].reason == "cancelled"
    run = cli("runs", "show", run_id, "--json").json
    assert run["status"] == "cancelled"
    again = cli("runs", "cancel", run_id, "--json")
    assert again.exit_code == 2 and "already cancelled" in again.json["error"]
    fleet.close()


def test_runs_logs_of_a_partial_run(cli, home7, fleet7) -> None:  # type: ignore[no-untyped-def]
    set_schedule_settings(home7, retries=1, retry_backoff=0.05)
    shard_path(home7, 1).write_bytes(b"broken")
    run = cli("score", "--from", T6, "--to", T7, "--json").json
    logs = cli("runs", "logs", run["run_id"], "--json").json["lines"]
    events = [line["event"] for line in logs]
    assert events[0] == "run.start" and events[-1] == "run.end" and logs[-1]["status"] == "partial"
    assert events.count("task.end") == len(shard_sizes(fleet7)) and "task.retry" in events
    end = next(line for line in logs if line["event"] == "task.end" and line["task"] == 1)
    assert end["level"] == "error" and "shard-00001.npz" in end["error"] and "Traceback" in end["traceback"]
    ok = next(line for line in logs if line["event"] == "task.end" and line["task"] == 0)
    assert {"wall_s", "cpu_s", "load_data_s", "load_models_s", "score_s", "write_s", "worker", "rows"} <= set(ok)
    attempts = cli("runs", "logs", run["run_id"], "--task", "1", "--json").json["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2]
    assert [line["event"] for line in attempts[0]["lines"]] == ["task.start", "task.error"]
    human = cli("runs", "logs", run["run_id"])
    assert human.exit_code == 0 and "run.end" in human.stdout and "partial" in human.stdout
    assert "task 1 attempt 2" in cli("runs", "logs", run["run_id"], "--task", "1").stdout
    assert cli("runs", "logs", "0123456789abcdef", "--json").exit_code == 2


def test_runs_logs_follow_ends_with_the_run(cli, home7) -> None:  # type: ignore[no-untyped-def]
    set_schedule_settings(home7, retries=1, retry_backoff=2)
    shard_path(home7, 1).write_bytes(b"broken")
    from fleetscore.api import Fleet

    fleet = Fleet.open(home7)
    worker = threading.Thread(target=fleet.score, args=(T6, T7))
    worker.start()
    try:
        run_id = wait_for(lambda: next((r.run_id for r in fleet.runs()), None), what="the run")
        r = cli("runs", "logs", run_id, "--follow", "--json")  # returns once the run has finished
    finally:
        worker.join(timeout=120)
        fleet.close()
    assert r.exit_code == 0
    events = [line["event"] for line in r.json["lines"]]
    assert events[0] == "run.start" and events[-1] == "run.end"


def test_backfill_one_run_per_window_and_rerun_replaces(cli, home7) -> None:  # type: ignore[no-untyped-def]
    first = cli("backfill", "--from", T5, "--to", T8, "--every", "1h", "--json")
    assert first.exit_code == 0, first.stderr
    assert len(first.json["runs"]) == 3 and first.json["statuses"] == ["succeeded"] * 3
    second = cli("backfill", "--from", T5, "--to", T8, "--json").json
    assert set(second["runs"]).isdisjoint(first.json["runs"])
    out = home7 / "b.parquet"
    assert cli("predictions", "--from", T5, "--to", T8, "--out", out).exit_code == 0
    table = pq.read_table(out)
    assert table.num_rows == 3 * ROWS_PER_HOUR and set(table.column("run_id").to_pylist()) == set(second["runs"])
    runs = cli("runs", "list", "--json").json["runs"]
    assert sorted(r["window_from"] for r in runs) == sorted([T5, T6, T7] * 2)


@pytest.mark.parametrize("args,needle", [
    (("--from", T5, "--to", "2026-01-01T05:30:00Z", "--every", "1h"), "whole number"),
    (("--from", T6, "--to", T5), "must be after"),
    (("--from", T5, "--to", T6, "--every", "0s"), "--every"),
    (("--from", T5, "--to", T6, "--version", "v7"), "unknown model version"),
])
def test_bad_backfills_exit_2(cli, home7, args, needle) -> None:  # type: ignore[no-untyped-def]
    r = cli("backfill", *args, "--json")
    assert r.exit_code == 2 and needle in r.json["error"], r.stdout
    assert cli("runs", "list", "--json").json["runs"] == []
