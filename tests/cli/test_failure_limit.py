"""``--max-failed-models N|P%`` (``[schedule] max_failed_models``): a run past the limit stops starting tasks,
ends ``failed`` with the reason and commits nothing; within it a run ends as before. A failed shard is one task
record with its model count and a bounded sample of its models."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fleetscore.api import Fleet
from fleetscore.config import load_config
from fleetscore.core.runs import MAX_LISTED, FailureLimit
from fleetscore.core.simulate import simulate_fleet
from fleetscore.errors import ConfigError, InputError

START = datetime(2026, 1, 1, tzinfo=UTC)
T0, T5, T6, T7 = "2026-01-01T00:00:00Z", "2026-01-01T05:00:00Z", "2026-01-01T06:00:00Z", "2026-01-01T07:00:00Z"
SHARDS, PER_SHARD = 12, 6  # 36 devices x 2 sensors in shards of 6 models


@pytest.fixture
def fleet12(home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """72 models in 12 shards, scored without retries; ``break_shards(n)`` corrupts the first n shard files."""
    monkeypatch.setenv("FLEETSCORE_SHARD_MODELS", str(PER_SHARD))
    home.mkdir(exist_ok=True)
    (home / "fleetscore.toml").write_text('[schedule]\nretries = 0\n[executor]\nin_process = "never"\nworkers = 2\n')
    fleet = Fleet.open(home)
    fleet.import_table(simulate_fleet(36, 2, START, 7, 60.0, 0.0, 3).select(["ts", "device", "sensor", "value"]))
    version = fleet.train(T0, T5, kind="robust").version
    files = sorted((home / "data" / "models" / version).glob("shard-*.npz"))
    assert len(files) == SHARDS

    def break_shards(n: int) -> None:
        for f in files[:n]:
            f.write_bytes(b"not a model file")

    yield {"fleet": fleet, "version": version, "break_shards": break_shards, "files": files}
    fleet.close()


def test_a_run_past_the_limit_stops_early_fails_and_commits_nothing(cli, fleet12) -> None:  # type: ignore[no-untyped-def]
    fleet12["break_shards"](SHARDS)  # every shard fails: a systemic failure
    r = cli("score", "--from", T6, "--to", T7, "--max-failed-models", "5", "--json")
    assert r.exit_code == 1, r.stderr
    run = r.json
    assert run["status"] == "failed"
    assert run["error"].startswith(f"aborted: {PER_SHARD} failed models of {SHARDS * PER_SHARD} exceed "
                                   "--max-failed-models 5 (at most 5)"), run["error"]
    tasks = cli("runs", "show", run["run_id"], "--json").json["tasks"]
    statuses = sorted(t["status"] for t in tasks)
    # the first failure stopped the run: no other task was recorded, those not started never start
    assert statuses == ["failed"] + ["queued"] * (SHARDS - 1), statuses
    assert fleet12["fleet"].catalog.committed_runs() == {}  # nothing committed: the window keeps what it had
    events = [e["event"] for e in cli("runs", "logs", run["run_id"], "--json").json["lines"]]
    assert "run.aborted" in events


def test_a_share_of_the_run_s_models(cli, fleet12) -> None:  # type: ignore[no-untyped-def]
    fleet12["break_shards"](1)  # 6 of 72 models fail: 8.3%
    within = cli("score", "--from", T6, "--to", T7, "--max-failed-models", "10%", "--json")
    assert within.exit_code == 3 and within.json["status"] == "partial", within.stderr
    assert within.json["failed_models"] == PER_SHARD and not within.json["error"].startswith("aborted")
    past = cli("score", "--from", T6, "--to", T7, "--max-failed-models", "5%", "--json")
    assert past.exit_code == 1 and past.json["status"] == "failed", past.stderr
    assert "exceed --max-failed-models 5% (at most 3)" in past.json["error"]
    # the earlier partial run stays the committed one
    assert list(fleet12["fleet"].catalog.committed_runs().values()) == [within.json["run_id"]]


def test_the_limit_comes_from_the_settings_and_a_retry_keeps_it(cli, fleet12, home: Path,  # type: ignore[no-untyped-def]
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fleet12["break_shards"](2)
    toml = home / "fleetscore.toml"
    toml.write_text(toml.read_text().replace("retries = 0\n", 'retries = 0\nmax_failed_models = "0"\n'))
    r = cli("score", "--from", T6, "--to", T7, "--json")
    assert r.exit_code == 1 and "exceed --max-failed-models 0 (at most 0)" in r.json["error"], r.json
    monkeypatch.setenv("FLEETSCORE_MAX_FAILED_MODELS", "50%")  # the environment over the file
    again = cli("runs", "retry", r.json["run_id"], "--json")
    assert again.exit_code == 3 and again.json["status"] == "partial", again.stdout
    assert again.json["failed_models"] == 2 * PER_SHARD
    strict = cli("runs", "retry", r.json["run_id"], "--max-failed-models", "1", "--json")  # the flag over both
    assert strict.exit_code == 1 and "exceed --max-failed-models 1" in strict.json["error"], strict.stdout


def test_a_failed_shard_is_one_record_with_a_bounded_sample(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETSCORE_SHARD_MODELS", "100")
    fleet = Fleet.open(home, workers=1)
    fleet.import_table(simulate_fleet(40, 2, START, 7, 60.0, 0.0, 3).select(["ts", "device", "sensor", "value"]))
    version = fleet.train(T0, T5, kind="robust").version
    (home / "data" / "models" / version / "shard-00000.npz").write_bytes(b"junk")
    run = fleet.score(T6, T7)
    _, tasks, failures = fleet.run(run.run_id)
    assert run.status.value == "failed" and run.failed_models == 80 == sum(t.failed_models for t in tasks)
    assert len(failures) == MAX_LISTED and {f.reason for f in failures} == {tasks[0].error}
    expected = sorted((r["device"], r["sensor"]) for r in fleet.models(version, 0).to_pylist())[:MAX_LISTED]
    assert [(f.device, f.sensor) for f in failures] == expected  # the first models by key
    fleet.close()


@pytest.mark.parametrize(("value", "allowed_of_200"), [(0, 0), (7, 7), ("12", 12), ("5%", 10), ("0%", 0),
                                                        ("100%", 200), (" 2.5% ", 5)])
def test_limits_parse(value: Any, allowed_of_200: int) -> None:
    assert FailureLimit.parse(value).allowed(200) == allowed_of_200


@pytest.mark.parametrize("value", [-1, True, 1.5, "", "lots", "-3", "101%", "%", "5 %x", "1e3", None])
def test_bad_limits_say_what_is_expected(value: Any) -> None:
    with pytest.raises(InputError, match=r"expected a number of models \(e\.g\. 1000\) or a share"):
        FailureLimit.parse(value)


def test_bad_limits_name_where_they_are(cli, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    home.mkdir(exist_ok=True)
    (home / "fleetscore.toml").write_text('[schedule]\nmax_failed_models = "many"\n')
    with pytest.raises(ConfigError, match=r"\[schedule\] max_failed_models: expected a number of models"):
        load_config(home)
    (home / "fleetscore.toml").write_text("[schedule]\nmax_failed_models = 100\n")
    assert load_config(home).schedule.max_failed_models == FailureLimit(count=100)
    monkeypatch.setenv("FLEETSCORE_MAX_FAILED_MODELS", "200%")
    with pytest.raises(ConfigError, match="FLEETSCORE_MAX_FAILED_MODELS: expected a number of models"):
        load_config(home)
    monkeypatch.delenv("FLEETSCORE_MAX_FAILED_MODELS")
    r = cli("score", "--from", T6, "--to", T7, "--max-failed-models", "half", "--json")
    assert r.exit_code == 2 and "--max-failed-models: expected a number of models" in r.json["error"], r.stdout
