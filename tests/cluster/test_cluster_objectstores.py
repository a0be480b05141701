"""The whole core flow (import, train, score, predictions) with the home's data on S3 (moto server) and
Azure Blob (Azurite), and credentials that never reach a file, an object, a catalog row or a message."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from fleetscore.core.times import parse_time
from fleetscore.storage import layout
from fleetscore.storage.fs import open_storage

pytestmark = pytest.mark.backend

T0, T2, T3 = "2026-01-01T00:00:00Z", "2026-01-01T02:00:00Z", "2026-01-01T03:00:00Z"
SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AZURE_STORAGE_CONNECTION_STRING")


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    """4 devices × 2 sensors × 3 h of minute readings (every object store request counts: keep it small)."""
    from fleetscore.core.simulate import simulate_fleet
    from fleetscore.storage.files import write_table

    path = tmp_path / "fleet.csv"
    write_table(simulate_fleet(4, 2, datetime(2026, 1, 1, tzinfo=UTC), 3, 60.0, 0.02, 5), path)
    return path


def secrets_of(env: Mapping[str, str]) -> list[str]:
    """The secret values: the S3 secret key; the Azure connection string and the account key in it."""
    values = [env[v] for v in SECRET_VARS if env.get(v)]
    return values + [part.split("=", 1)[1] for v in values for part in v.split(";") if part.startswith("AccountKey=")]


def test_whole_flow_on_object_storage(store, home: Path, cli, small_csv: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    url = store.bucket() + "/fleet"
    monkeypatch.setenv("FLEETSCORE_STORAGE_URL", url)
    home.mkdir()
    (home / "fleetscore.toml").write_text("[schedule]\nretries = 0\n")  # a failed task fails at once
    outputs = []

    def run(*args: object) -> dict:
        r = cli(*args, "--json")
        outputs.extend([r.stdout, r.stderr])
        assert r.exit_code == 0, r.stderr
        return r.json

    imported = run("import", small_csv)
    assert imported["accepted"] == 4 * 2 * 180 and imported["rejected"] == 0
    assert run("import", small_csv)["duplicates"] == imported["accepted"]  # dedup reads back what is stored
    bad = tmp_path / "bad.csv"
    bad.write_text("ts,device,sensor,value\n2026-01-01T00:00:00Z,d1,s1,not-a-number\n")
    quarantined = run("import", bad)
    assert quarantined["rejected"] == 1 and quarantined["quarantine"]["paths"][0].startswith(url + "/quarantine/")

    trained = run("train", "--from", T0, "--to", T2, "--workers", "2")
    assert trained["models"] == 8 and trained["failed"] == 0 and trained["shards"] >= 2
    first = run("score", "--from", T2, "--to", T3, "--workers", "2")
    second = run("score", "--from", T2, "--to", T3, "--workers", "2")
    assert first["status"] == second["status"] == "succeeded" and first["rows"] == second["rows"] == 8 * 60

    # the window now holds only the second run: the first run's objects are gone, nothing is duplicated
    storage = open_storage(url)
    window = layout.predictions_dir(parse_time(T2), parse_time(T3))
    assert storage.list_dirs(window) == [f"run={second['run_id']}"]
    assert len(storage.list(f"{window}/run={second['run_id']}")) == second["tasks"]
    out = tmp_path / "range.parquet"
    assert run("predictions", "--from", T2, "--to", T3, "--out", out)["rows"] == second["rows"]
    table = pq.read_table(out)
    assert set(table.column("run_id").to_pylist()) == {second["run_id"]}
    assert table.group_by(["device", "sensor", "ts"]).aggregate([([], "count_all")]).num_rows == table.num_rows
    shown = run("runs", "show", second["run_id"])
    assert sum(t["rows"] for t in shown["tasks"]) == second["rows"]
    assert all(t["node"] and t["worker"] for t in shown["tasks"])

    # a task that fails (its shard file is gone) is recorded with its error, still without secrets
    storage.delete(layout.shard_key(trained["version"], 0))
    r = cli("score", "--from", T2, "--to", T3, "--workers", "2", "--json")
    outputs.extend([r.stdout, r.stderr])
    assert r.exit_code == 3 and r.json["status"] == "partial" and "shard file" in r.json["error"]

    assert_no_secret(secrets_of(store.env), home, storage, outputs)


def assert_no_secret(secrets: list[str], home: Path, storage, outputs: list[str]) -> None:  # type: ignore[no-untyped-def]
    """No secret in any file under the home, any object fleetscore wrote, any catalog row or CLI output."""
    assert secrets and all(len(s) >= 8 for s in secrets)
    blobs = {str(p): p.read_bytes() for p in home.rglob("*") if p.is_file()}
    blobs |= {key: storage.read_bytes(key) for key in storage.list("")}
    engine = sa.create_engine(f"sqlite:///{home / 'catalog.db'}")
    with engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            rows = conn.execute(sa.text(f'SELECT * FROM "{table}"')).all()
            blobs[f"catalog:{table}"] = repr(rows).encode()
    engine.dispose()
    blobs |= {f"output {i}": text.encode() for i, text in enumerate(outputs)}
    assert any(key.startswith("logs/") for key in blobs)  # the run logs were written to the store, and checked
    for secret in secrets:
        assert [name for name, data in blobs.items() if secret.encode() in data] == []


def test_storage_errors_name_the_place_not_the_credentials(store, home: Path, cli, small_csv: Path,  # type: ignore[no-untyped-def]
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    if store.scheme == "az":  # a wrong account key: Azurite refuses every request
        wrong = "AccountKey=" + "V3JvbmdLZXk" * 8 + "=="
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                           ";".join(wrong if p.startswith("AccountKey=") else p
                                    for p in store.env["AZURE_STORAGE_CONNECTION_STRING"].split(";")))
        url, expected = store.bucket() + "/fleet", "cannot"
    else:  # moto accepts any key: a bucket that does not exist
        url, expected = "s3://no-such-bucket-here/fleet", "does not exist"
    monkeypatch.setenv("FLEETSCORE_STORAGE_URL", url)
    r = cli("import", small_csv, "--json")
    assert r.exit_code == 1
    message = r.json["error"]
    assert expected in message and url.split("/")[2] in message
    for secret in secrets_of(os.environ):
        assert secret not in message and secret not in r.stderr


def test_listings_see_what_other_processes_wrote(store) -> None:  # type: ignore[no-untyped-def]
    """No stale directory cache: workers and importers in other processes write the same store."""
    url = store.bucket() + "/p"
    storage = open_storage(url)
    storage.write_bytes("a/x", b"1")
    assert storage.list_dirs("") == ["a"] and not storage.exists("b/y")
    code = (f"from fleetscore.storage.fs import open_storage as o; s = o({url!r}); "
            "s.write_bytes('b/y', b'2'); s.write_bytes('a/z', b'3')")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert storage.list_dirs("") == ["a", "b"] and storage.exists("b/y")
    assert storage.list("a") == ["a/x", "a/z"]
    storage.delete("a", recursive=True)
    assert storage.list_dirs("") == ["b"] and storage.list("") == ["b/y"]
