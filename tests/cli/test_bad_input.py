"""Bad input through the CLI: clear message on stderr, exit 2, good rows kept, nothing crashes."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

T0, T6, T7 = "2026-01-01T00:00:00Z", "2026-01-01T06:00:00Z", "2026-01-01T07:00:00Z"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_unreadable_files_exit_2(cli, home, tmp_path: Path) -> None:
    missing = cli("import", tmp_path / "nope.csv", "--json")
    assert missing.exit_code == 2 and "no such file" in missing.json["error"]
    empty = cli("import", write(tmp_path / "empty.csv", ""))
    assert empty.exit_code == 2 and "empty" in empty.stderr
    binary = tmp_path / "garbage.parquet"
    binary.write_bytes(b"PAR1\x00\xff\xfe garbage")
    r = cli("import", binary)
    assert r.exit_code == 2 and "Parquet" in r.stderr
    nocols = cli("import", write(tmp_path / "x.csv", "a,b\n1,2\n"))
    assert nocols.exit_code == 2 and "--columns" in nocols.stderr


def test_bad_rows_are_quarantined_with_reasons(cli, home, tmp_path: Path) -> None:
    hostile = "x" * 10_000
    text = (
        "ts,device,sensor,value\n"
        "2026-01-01T00:00:00Z,d1,temp,1.5\n"          # good
        "not-a-time,d1,temp,1.0\n"                      # bad ts
        "2026-01-01T00:01:00Z,d1,temp,NaN\n"            # NaN
        "2026-01-01T00:02:00Z,d1,temp,inf\n"            # inf
        "2026-01-01T00:03:00Z,d1,temp,hello\n"          # text
        "2026-01-01T00:04:00Z,,temp,1.0\n"              # empty id
        f"2026-01-01T00:05:00Z,{hostile},temp,1.0\n"    # 10 kB id
        "2026-01-01T00:06:00Z,../x,temp,2.0\n"          # path-like id: data, not a path
        "2026-01-01T00:07:00Z,d1,temp\n"                # malformed row
        "2026-01-01 00:08:00,d1,temp,3\n"               # no zone = UTC, good
    )
    r = cli("import", write(tmp_path / "bad.csv", text), "--json")
    assert r.exit_code == 0, r.stderr
    out = r.json
    assert out["accepted"] == 3 and out["rejected"] == 7
    reasons = out["quarantine"]["reasons"]
    assert reasons["value is not finite (NaN or inf)"] == 2
    assert reasons["value is not a number"] == 1
    assert reasons["timestamp is not a valid ISO 8601 time"] == 1
    assert reasons["device id is empty"] == 1
    assert any(k.startswith("device id is longer") for k in reasons)
    assert any(k.startswith("malformed CSV row") for k in reasons)
    listed = cli("quarantine", "list", "--json").json
    assert listed["count"] == 7
    # the path-like id never became a path
    assert not any(p.name == "x" for p in home.rglob("x"))
    exported = tmp_path / "r.parquet"
    assert cli("readings", "--from", T0, "--to", T6, "--out", exported).exit_code == 0
    assert sorted(pq.read_table(exported).column("device").to_pylist()) == ["../x", "d1", "d1"]


def test_nul_in_ids_is_rejected(cli, home, tmp_path: Path) -> None:
    table = pa.table({"ts": ["2026-01-01T00:00:00Z"] * 2, "device": ["ok", "bad\x00id"], "sensor": ["s", "s"],
                      "value": [1.0, 2.0]})
    path = tmp_path / "nul.parquet"
    pq.write_table(table, path)
    r = cli("import", path, "--json")
    assert r.json["accepted"] == 1 and r.json["quarantine"]["reasons"] == {"device id contains control characters": 1}


def test_classic_header_and_column_mapping(cli, home, tmp_path: Path) -> None:
    classic = write(tmp_path / "classic.csv", "TS,Device,Tag,Value\n2026-01-01T00:00:00Z,d,t,1\n")
    assert cli("import", classic, "--json").json["accepted"] == 1
    custom = write(tmp_path / "custom.csv", "when,who,what,v\n2026-01-01T00:00:01Z,d,t,2\n")
    r = cli("import", custom, "--columns", "ts=when,device=who,sensor=what,value=v", "--json")
    assert r.json["accepted"] == 1
    bad_map = cli("import", custom, "--columns", "ts=when,device=who", "--json")
    assert bad_map.exit_code == 2 and "sensor" in bad_map.json["error"]
    wrong = cli("import", custom, "--columns", "ts=nope,device=who,sensor=what,value=v")
    assert wrong.exit_code == 2 and "nope" in wrong.stderr


@pytest.mark.parametrize("args,needle", [
    (("score", "--from", "yesterday", "--to", T7), "ISO 8601"),
    (("score", "--from", T7, "--to", T6), "must be after"),
    (("readings", "--from", T0, "--to", "2026-13-01", "--out", "x.csv"), "ISO 8601"),
    (("train", "--from", T0, "--to", T6, "--features", "window:0s"), "duration"),
    (("train", "--from", T0, "--to", T6, "--nu", "2"), "nu"),
    (("train", "--from", T0, "--to", T6, "--gamma", "-1"), "gamma"),
])
def test_bad_arguments_exit_2(cli, home, args, needle) -> None:  # type: ignore[no-untyped-def]
    r = cli(*args)
    assert r.exit_code == 2
    assert needle in r.stderr


def test_unknown_version_run_and_missing_model(cli, home, fleet_csv, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    no_version = cli("score", "--from", T6, "--to", T7, "--json")
    assert no_version.exit_code == 2 and "train" in no_version.json["error"]
    cli("import", fleet_csv)
    cli("train", "--from", T0, "--to", T6, "--workers", "1")
    for bad in ("v99", "../v1", "x" * 10_000):
        r = cli("score", "--from", T6, "--to", T7, "--version", bad, "--json")
        assert r.exit_code == 2, bad
    for bad in ("0123456789abcdef", "../../etc/passwd", "a\x00b"):
        r = cli("runs", "show", bad, "--json")
        assert r.exit_code == 2 and "run" in r.json["error"]
    missing = cli("models", "show", "no-such-device", "temperature", "--json")
    assert missing.exit_code == 2 and "no model" in missing.json["error"]


def test_empty_window_and_readings_without_model(cli, home, fleet_csv, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli("import", fleet_csv)
    cli("train", "--from", T0, "--to", T6, "--workers", "1")
    empty = cli("score", "--from", "2027-01-01T00:00:00Z", "--to", "2027-01-01T01:00:00Z", "--workers", "1", "--json")
    assert empty.exit_code == 0 and empty.json["rows"] == 0 and empty.json["status"] == "succeeded"
    stranger = write(tmp_path / "new.csv", "ts,device,sensor,value\n2026-01-01T06:30:00Z,new-device,temperature,1.0\n")
    cli("import", stranger)
    run = cli("score", "--from", T6, "--to", T7, "--workers", "1", "--json").json
    assert run["unmatched_rows"] == 1
    assert run["extra"]["unmatched"] == [
        {"device": "new-device", "sensor": "temperature", "reason": "no model for this device and sensor in the version",
         "rows": 1}
    ]


def test_training_with_no_data_is_an_input_error(cli, home) -> None:
    r = cli("train", "--from", T0, "--to", T6, "--json")
    assert r.exit_code == 2 and "no readings" in r.json["error"]


def test_corrupt_shard_fails_its_models_only(cli, home, fleet_csv, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FLEETSCORE_SHARD_MODELS", "6")
    cli("import", fleet_csv)
    trained = cli("train", "--from", T0, "--to", T6, "--workers", "1", "--json").json
    assert trained["shards"] == 3
    shard = home / "data" / "models" / "v1" / "shard-00001.npz"
    shard.write_bytes(b"not a model")
    r = cli("score", "--from", T6, "--to", T7, "--workers", "1", "--json")
    assert r.exit_code == 3, r.stdout
    run = r.json
    assert run["status"] == "partial" and run["models"] == 12 and run["failed_models"] == 6
    shown = cli("runs", "show", run["run_id"], "--json").json
    assert len(shown["failures"]) == 6 and all("not a readable model file" in f["reason"] for f in shown["failures"])
    assert [t["status"] for t in shown["tasks"]] == ["succeeded", "failed", "succeeded"]
    monkeypatch.setenv("COLUMNS", "200")
    human = cli("runs", "show", run["run_id"]).stdout
    assert "task errors" in human and "times in ms" in human
    error_rows = [line for line in human.split("task errors", 1)[1].splitlines() if "not a readable model file" in line]
    assert error_rows and error_rows[0].split("│")[1].strip() == "1"  # the failed task's whole error, by its number


def run_cli(*args: object, env: dict[str, str] | None = None) -> tuple[int, list[dict], str]:
    """``fleetscore ARGS`` in a real process: exit code, the JSON objects on stdout (one per line), stderr."""
    import json
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "from fleetscore.cli.main import main; main()", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=os.environ | (env or {}))
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines() if line.strip()], proc.stderr


def test_import_of_nanosecond_and_bad_parquet_keeps_the_json_contract(home, tmp_path: Path) -> None:
    ns = 1_767_225_600_000_000_000
    stamps = pa.array([ns + 1, ns + 999, ns + 1_000_000_001], pa.timestamp("ns"))  # the pandas default unit
    pq.write_table(pa.table({"ts": stamps, "device": ["d"] * 3, "sensor": ["s"] * 3, "value": [1.0, 2.0, 3.0]}),
                   tmp_path / "ns.parquet")
    code, out, err = run_cli("import", tmp_path / "ns.parquet", "--json")
    assert (code, len(out)) == (0, 1), err
    assert out[0]["accepted"] == 2 and out[0]["duplicates"] == 1  # the first two truncate to the same µs
    pq.write_table(pa.table({"ts": ["2026-01-01T00:00:00Z"], "device": ["d"], "sensor": ["s"],
                             "value": pa.array([{"celsius": 1.0}])}), tmp_path / "struct.parquet")
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes((tmp_path / "ns.parquet").read_bytes()[:-40])
    for path, needle in ((tmp_path / "struct.parquet", "column 'value' has type struct<celsius: double>"),
                         (truncated, "Parquet")):
        code, out, err = run_cli("import", path, "--json")
        assert code == 2 and len(out) == 1 and needle in out[0]["error"] and str(path) in out[0]["error"]
        assert "Traceback" not in err and needle in err


@pytest.mark.parametrize("url,needle,code", [
    ("nosuch://x", "unknown database kind 'nosuch'", 2),
    ("not a url at all", "not a database URL", 2),
    ("postgresql+psycopg://fleet:s3cret-pw@127.0.0.1:1/fleet", "cannot open catalog postgresql+psycopg://fleet:***@", 1),
])
def test_bad_catalog_url_is_a_clear_message_and_one_json_object(home, url: str, needle: str, code: int) -> None:
    for args in (("runs", "list"), ("catalog", "status"), ("import", "missing.csv")):
        rc, out, err = run_cli(*args, "--json", env={"FLEETSCORE_CATALOG_URL": url})
        assert rc == code and len(out) == 1 and needle in out[0]["error"], (args, out, err)
        assert "Traceback" not in err and "s3cret" not in err + str(out) and "Background on this error" not in err
