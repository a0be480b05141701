"""Runs whose workers cannot see the run's storage fail loudly: refused up front when an executor's hosts are
elsewhere, each task checking the driver's marker in a local root, and a training that trains no model failing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fleetscore.api import Fleet
from fleetscore.errors import ConfigError, FleetscoreError
from fleetscore.exec.local import LocalExecutor
from fleetscore.exec.place import check_storage_reach, is_this_host, other_hosts
from fleetscore.exec.ray import RayExecutor
from fleetscore.services import runs
from fleetscore.services.train import train
from fleetscore.storage.fs import STORAGE_MARKER, open_storage

T0, T6, T7, T8 = "2026-01-01T00:00:00Z", "2026-01-01T06:00:00Z", "2026-01-01T07:00:00Z", "2026-01-01T08:00:00Z"
US_T0, US_T6 = 1_767_225_600_000_000, 1_767_225_600_000_000 + 6 * 3_600_000_000
REMOTE = "203.0.113.7"  # TEST-NET-3: never an address of this host


@pytest.fixture
def fleet(home: Path, small_fleet) -> Fleet:  # type: ignore[no-untyped-def]
    f = Fleet.open(home, workers=2, in_process="never")
    f.import_table(small_fleet.select(["ts", "device", "sensor", "value"]))
    return f


def test_this_host_is_told_from_other_hosts() -> None:
    import socket

    assert is_this_host("127.0.0.1") and is_this_host("localhost") and is_this_host(socket.gethostname())
    assert not is_this_host(REMOTE) and not is_this_host("no-such-node.invalid")
    assert other_hosts(["127.0.0.1", REMOTE, "", REMOTE, "node-b.invalid"]) == [REMOTE, "node-b.invalid"]


@pytest.mark.parametrize("address", [f"{REMOTE}:6379", f"ray://{REMOTE}:10001"])
def test_local_storage_is_refused_for_ray_on_another_host(cli, home: Path, fleet: Fleet,  # type: ignore[no-untyped-def]
                                                          address: str) -> None:
    fleet.train(T0, T6)
    for command in (["score", "--from", T6, "--to", T7], ["train", "--from", T0, "--to", T6]):
        r = cli(*command, "--executor", "ray", "--ray-address", address, "--json")
        assert r.exit_code == 2, r.stdout
        error = r.json["error"]
        assert f"storage {home / 'data'} is a local path" in error and f"other hosts ({REMOTE})" in error
        assert "s3://" in error and "[storage] shared = true" in error
        assert "cannot connect" not in error  # refused before any connection is tried


def test_shared_or_object_storage_is_not_refused(tmp_path: Path) -> None:
    ray = RayExecutor(1, address=f"{REMOTE}:6379")
    local = open_storage(str(tmp_path / "data"))
    with pytest.raises(ConfigError, match="other hosts"):
        check_storage_reach(local, False, ray)
    check_storage_reach(local, True, ray)  # [storage] shared = true: every node mounts the path
    check_storage_reach(local, False, LocalExecutor(2))  # workers of this host see its disk
    assert ray.warm is False  # none of this connected to Ray


def test_shared_is_read_from_the_toml_and_the_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home.mkdir()
    (home / "fleetscore.toml").write_text("[storage]\nshared = true\n")
    assert Fleet.open(home).config.storage.shared is True
    monkeypatch.setenv("FLEETSCORE_STORAGE_SHARED", "false")
    assert Fleet.open(home).config.storage.shared is False
    monkeypatch.setenv("FLEETSCORE_STORAGE_SHARED", "sometimes")
    with pytest.raises(ConfigError, match="FLEETSCORE_STORAGE_SHARED: expected true or false, got 'sometimes'"):
        Fleet.open(home)


@pytest.mark.parametrize("seen", ["missing", "unmarked"])
def test_a_worker_that_cannot_see_the_storage_fails_its_tasks_saying_so(fleet: Fleet, tmp_path: Path, seen: str) -> None:
    """The driver reads its own disk; the workers are sent a root they do not have (or an unrelated folder)."""
    elsewhere = tmp_path / "node-b-disk"
    if seen == "unmarked":
        elsewhere.mkdir()
    ctx = replace(fleet.context, config=fleet.config.with_overrides(storage_url=str(elsewhere)))
    ex = LocalExecutor(2)
    try:
        with pytest.raises(FleetscoreError) as failed:
            train(ctx, ex, US_T0, US_T6, kind="robust", features="raw")
    finally:
        ex.close()
    message = str(failed.value)
    assert "cannot see the run's storage" in message and str(elsewhere) in message
    assert ("does not exist" if seen == "missing" else f"has no {STORAGE_MARKER}") in message
    assert not elsewhere.exists() or list(elsewhere.iterdir()) == []  # the worker wrote nothing there


def test_scoring_tasks_check_the_storage_too(fleet: Fleet, tmp_path: Path) -> None:
    version = fleet.train(T0, T6).version
    ctx = replace(fleet.context, config=fleet.config.with_overrides(storage_url=str(tmp_path / "node-b-disk")))
    ex = LocalExecutor(2)
    try:
        run = runs.score_window(ctx, ex, US_T6, US_T6 + 3_600_000_000, version)
    finally:
        ex.close()
    assert run.status.value == "failed" and run.models == 0 and run.failed_models == 18, run
    assert "cannot see the run's storage" in str(run.error) + str(run.extra), run


def test_a_training_that_trains_no_model_fails_with_the_reason(fleet: Fleet, tmp_path: Path) -> None:
    """Workers on a node with a storage root of its own (marked, no readings): planned shards, nothing trained."""
    node_b = tmp_path / "node-b-disk"
    open_storage(str(node_b))  # once opened by a driver there: marked
    ctx = replace(fleet.context, config=fleet.config.with_overrides(storage_url=str(node_b)))
    ex = LocalExecutor(2)
    try:
        with pytest.raises(FleetscoreError, match="trained no model: its shards held no"):
            train(ctx, ex, US_T0, US_T6, kind="robust", features="raw")
    finally:
        ex.close()
    assert [v.status for v in fleet.versions()] == ["failed"]


def test_only_unhealthy_with_nothing_unhealthy_is_nothing_to_do(cli, fleet: Fleet) -> None:  # type: ignore[no-untyped-def]
    version = fleet.train(T0, T6).version
    run = fleet.score(T6, T7)
    assert run.extra["health"]["unhealthy"] == []
    r = cli("train", "--from", T0, "--to", T6, "--only-unhealthy", "--json")
    assert r.exit_code == 0, r.stdout
    assert r.json["version"] == version and "nothing to retrain" in r.json["nothing_to_do"]
    assert [v.version for v in fleet.versions()] == [version]
    r = cli("train", "--from", T0, "--to", T6, "--only-unhealthy")
    assert r.exit_code == 0 and r.stdout.startswith("nothing to do: ")
