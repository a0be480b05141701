"""Rich output never interprets markup (or emoji codes) from data: hostile ids print literally through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

#: Ids that Rich would read as markup: a bare close tag (MarkupError), a live link, a style, an emoji code.
HOSTILE = ("[/]", "[link=http://evil]x[/link]", "[bold]b[/bold]", ":thumbs_up:")
SENSOR = "[red]s"


@pytest.fixture
def hostile_home(cli, home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home with 2 h of readings of each hostile device, trained, and one quarantined row per device."""
    monkeypatch.setenv("COLUMNS", "400")  # wide enough that no table cell is folded
    rows = [f"2026-01-01T{m // 60:02d}:{m % 60:02d}:00Z,{d},{SENSOR},{20 + (m * 7) % 5}" for d in HOSTILE for m in range(120)]
    rows += [f"2026-01-01T03:00:00Z,{d},{SENSOR},hello" for d in HOSTILE]
    data = tmp_path / "hostile.csv"
    data.write_text("ts,device,sensor,value\n" + "\n".join(rows) + "\n")
    assert cli("import", data, "--json").json["rejected"] == len(HOSTILE)
    trained = cli("train", "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-01T02:00:00Z", "--workers", "1", "--json")
    assert trained.exit_code == 0 and trained.json["models"] == len(HOSTILE), trained.stdout
    return home


def test_quarantine_list_prints_ids_literally(cli, hostile_home: Path) -> None:
    r = cli("quarantine", "list")
    assert r.exit_code == 0, r.stderr
    assert all(d in r.stdout for d in HOSTILE) and SENSOR in r.stdout
    assert "\N{THUMBS UP SIGN}" not in r.stdout


def test_models_list_prints_ids_literally(cli, hostile_home: Path) -> None:
    r = cli("models", "list")
    assert r.exit_code == 0, r.stderr
    assert all(d in r.stdout for d in HOSTILE) and SENSOR in r.stdout


@pytest.mark.parametrize("device", HOSTILE)
def test_models_show_prints_ids_literally(cli, hostile_home: Path, device: str) -> None:
    r = cli("models", "show", device, SENSOR)
    assert r.exit_code == 0, r.stderr
    assert device in r.stdout and SENSOR in r.stdout


def test_error_messages_print_ids_literally(cli, hostile_home: Path) -> None:
    r = cli("models", "show", "[link=http://evil]nope[/link]", "[/]")
    assert r.exit_code == 2
    assert "[link=http://evil]nope[/link]" in r.stderr and "[/]" in r.stderr
    as_json = cli("models", "show", "[link=http://evil]nope[/link]", "[/]", "--json")
    assert "'[link=http://evil]nope[/link]'" in as_json.json["error"]  # the JSON error is not markup-escaped either
