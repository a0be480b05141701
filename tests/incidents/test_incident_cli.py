"""`fleetscore incidents list|show|ack|mark` over a scored window, and the `[incidents]` settings, with bad input."""

from __future__ import annotations

import getpass
import shutil
from pathlib import Path

import pytest

from fleetscore.config import load_config
from fleetscore.errors import ConfigError

T6, T7 = "2026-01-01T06:00:00Z", "2026-01-01T07:00:00Z"


@pytest.fixture(scope="module")
def scored_home(tmp_path_factory, small_fleet) -> Path:  # type: ignore[no-untyped-def]
    from fleetscore.api import Fleet

    home = tmp_path_factory.mktemp("incidents-cli") / "home"
    fleet = Fleet.open(home, workers=1)
    fleet.import_table(small_fleet.select(["ts", "device", "sensor", "value"]))
    fleet.train("2026-01-01T00:00:00Z", T6)
    fleet.score(T6, T7)
    fleet.close()
    return home


@pytest.fixture
def scored(scored_home: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COLUMNS", "400")  # wide enough that no table cell is folded
    shutil.copytree(scored_home, home)
    return home


def test_list_filters_and_orders_active_first(cli, scored) -> None:  # type: ignore[no-untyped-def]
    r = cli("incidents", "list", "--json")
    assert r.exit_code == 0, r.stderr
    rows = r.json["incidents"]
    assert rows and {"id", "device", "start", "end", "status", "severity", "flags", "sensors"} <= set(rows[0])
    active = [x["status"] in ("open", "acknowledged") for x in rows]
    assert active == sorted(active, reverse=True)
    for x in rows:
        assert (x["end"] is None) == (x["status"] == "open")
        assert sum(s["flags"] for s in x["sensors"]) == x["flags"]
    device = rows[0]["device"]
    mine = cli("incidents", "list", "--device", device, "--json").json["incidents"]
    assert mine and {x["device"] for x in mine} == {device}
    assert all(x["status"] == "resolved" for x in cli("incidents", "list", "--status", "resolved", "--json").json["incidents"])
    assert len(cli("incidents", "list", "--limit", "1", "--json").json["incidents"]) == 1
    late = cli("incidents", "list", "--since", "2026-01-01T06:40:00Z", "--json").json["incidents"]
    assert late and all(x["last_flag"] >= "2026-01-01T06:40:00Z" for x in late) and len(late) < len(rows)
    human = cli("incidents", "list")
    assert human.exit_code == 0 and rows[0]["id"] in human.stdout


def test_show_ack_and_mark(cli, scored) -> None:  # type: ignore[no-untyped-def]
    first = cli("incidents", "list", "--status", "open", "--json").json["incidents"][0]
    shown = cli("incidents", "show", first["id"], "--json")
    assert shown.exit_code == 0 and shown.json == first
    assert first["id"] in cli("incidents", "show", first["id"]).stdout
    acked = cli("incidents", "ack", first["id"], "--by", "ann", "--json").json
    assert acked["status"] == "acknowledged" and acked["acknowledged_by"] == "ann" and acked["acknowledged_at"]
    marked = cli("incidents", "mark", first["id"], "--as", "false", "--note", "valve <b>test</b>", "--json").json
    assert marked["mark"] == "false" and marked["marks"][-1] | {"at": None} == {
        "mark": "false", "note": "valve <b>test</b>", "by": getpass.getuser(), "at": None}
    again = cli("incidents", "mark", first["id"], "--as", "true", "--by", "bo", "--json").json
    assert again["mark"] == "true" and [m["mark"] for m in again["marks"]] == ["false", "true"]
    assert "valve <b>test</b>" in cli("incidents", "show", first["id"]).stdout
    listed = cli("incidents", "list", "--status", "acknowledged", "--json").json["incidents"]
    assert [x["id"] for x in listed] == [first["id"]]


@pytest.mark.parametrize("args, needle", [
    (["list", "--status", "closed"], "status 'closed'"),
    (["list", "--since", "yesterday"], "--since"),
    (["list", "--limit", "0"], "--limit"),
    (["show", "nope\"<x>"], "unknown incident"),
    (["ack", "deadbeef"], "unknown incident"),
    (["mark", "deadbeef", "--as", "true"], "unknown incident"),
])
def test_bad_input_exits_2_with_a_message(cli, scored, args, needle) -> None:  # type: ignore[no-untyped-def]
    r = cli("incidents", *args, "--json")
    assert r.exit_code == 2
    assert needle in r.stdout + r.stderr


def test_bad_mark_and_name_exit_2(cli, scored) -> None:  # type: ignore[no-untyped-def]
    some = cli("incidents", "list", "--json").json["incidents"][0]["id"]
    r = cli("incidents", "mark", some, "--as", "maybe", "--json")
    assert r.exit_code == 2 and "true, false, ignore" in r.json["error"]
    r = cli("incidents", "mark", some, "--json")
    assert r.exit_code == 2  # --as is required
    r = cli("incidents", "ack", some, "--by", "  ", "--json")
    assert r.exit_code == 2 and "--by" in r.json["error"]
    assert cli("incidents", "show", some, "--json").json["marks"] == []


@pytest.mark.parametrize("body, needle", [
    ("merge_gap = 0", "merge_gap"),
    ("merge_gap = '5'", "merge_gap"),
    ("merge_gap = 2.5", "merge_gap"),
    ("quiet_period = true", "quiet_period"),
    ("merge_gap = 10\nquiet_period = 5", "quiet_period (5) must be at least merge_gap (10)"),
    ("quiet_period = 1000000", "quiet_period"),
    ("gap = 3", "unknown key 'incidents.gap'"),
])
def test_bad_settings_name_the_key(tmp_path: Path, body: str, needle: str) -> None:
    (tmp_path / "fleetscore.toml").write_text(f"[incidents]\n{body}\n")
    with pytest.raises(ConfigError, match="fleetscore.toml") as info:
        load_config(tmp_path, env={})
    assert needle in str(info.value)


def test_bad_settings_exit_2_in_the_cli(cli, scored) -> None:  # type: ignore[no-untyped-def]
    (scored / "fleetscore.toml").write_text("[incidents]\nmerge_gap = -1\n")
    r = cli("incidents", "list", "--json")
    assert r.exit_code == 2 and "merge_gap" in r.json["error"] and "fleetscore.toml" in r.json["error"]


def test_settings_change_the_grouping(cli, scored) -> None:  # type: ignore[no-untyped-def]
    assert load_config(scored, env={}).incidents.merge_gap == 5
    default = cli("incidents", "list", "--json").json["incidents"]
    (scored / "fleetscore.toml").write_text("[incidents]\nmerge_gap = 60\nquiet_period = 60\n")
    assert cli("score", "--from", T6, "--to", T7, "--workers", "1").exit_code == 0
    wide = cli("incidents", "list", "--json").json["incidents"]
    assert len(wide) < len(default) and len({x["device"] for x in wide}) == len(wide)  # one per device
    assert all(x["status"] == "open" for x in wide)  # 60 quiet minutes have not passed in a 1 h window
