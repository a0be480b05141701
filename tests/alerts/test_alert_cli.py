"""The ``alerts`` commands: rules, test, deliver, silence add|list|remove, dead-letters; bad input is exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from alert_support import free_port, hook_config, incident, webhook, write_config

from fleetscore.api import Fleet
from fleetscore.services.alerts import on_incidents


def test_rules_lists_rules_and_receivers_without_secrets(home: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FLEETSCORE_ALERTS_HOOK_TOKEN", "very-secret-token-99")
    write_config(home, hook_config("http://127.0.0.1:9/h", rule='name = "pumps"\ndevice = "pump-*"').replace(
        "max_backoff = 0.05\n", 'max_backoff = 0.05\ntoken_env = "FLEETSCORE_ALERTS_HOOK_TOKEN"\n'))
    result = cli("alerts", "rules", "--json")
    assert result.exit_code == 0
    assert [r["name"] for r in result.json["rules"]] == ["pumps"]
    assert result.json["rules"][0]["device"] == ["pump-*"]
    [receiver] = result.json["receivers"]
    assert receiver["name"] == "hook" and receiver["auth"] == "bearer" and receiver["secret_set"] is True
    assert "very-secret-token-99" not in result.stdout
    human = cli("alerts", "rules")
    assert human.exit_code == 0 and "pumps" in human.stdout and "very-secret-token-99" not in human.stdout


def test_rules_without_config_says_how_to_add_them(home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("alerts", "rules")
    assert result.exit_code == 0 and "[[alerts.rules]]" in result.stdout
    assert cli("alerts", "rules", "--json").json == {"rules": [], "receivers": []}


def test_test_reports_each_receiver(home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    with webhook() as hook:
        write_config(home, hook_config(hook.url))
        ok = cli("alerts", "test", "all", "--json")
        assert ok.exit_code == 0 and ok.json == {"rule": "all", "results": [
            {"receiver": "hook", "ok": True, "error": None}]}
        [request] = hook.requests
        assert request["body"]["test"] is True and request["body"]["state"] == "firing"
        assert request["headers"]["Idempotency-Key"] == request["body"]["idempotency_key"]
    write_config(home, hook_config(f"http://127.0.0.1:{free_port()}/h"))
    down = cli("alerts", "test", "all", "--json")
    assert down.exit_code == 1
    assert down.json["results"][0]["ok"] is False and "ConnectError" in down.json["results"][0]["error"]
    unknown = cli("alerts", "test", "nope", "--json")
    assert unknown.exit_code == 2 and "unknown alert rule 'nope' (known: all)" in unknown.json["error"]


def test_deliver_command(home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    with webhook() as hook:
        write_config(home, hook_config(hook.url))
        on_incidents(Fleet.open(home).context, [incident("a")])
        result = cli("alerts", "deliver", "--wait", "5s", "--json")
        assert result.exit_code == 0 and result.json == {"sent": 1, "failed": 0, "dead": 0, "pending": 0}
        assert len(hook.accepted_keys()) == 1
    assert cli("alerts", "deliver", "--wait", "soon").exit_code == 2


def test_silence_add_list_remove(home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    added = cli("alerts", "silence", "add", "--device", "pump-*", "--sensor", "flow", "--start", "2026-01-01T00:00:00Z",
                "--end", "2026-01-01T04:00:00Z", "--note", "pump swap", "--by", "ana", "--json")
    assert added.exit_code == 0, added.stdout
    assert added.json | {"id": 0, "created_at": ""} == {
        "id": 0, "device": "pump-*", "sensor": "flow", "start": "2026-01-01T00:00:00Z", "end": "2026-01-01T04:00:00Z",
        "note": "pump swap", "created_by": "ana", "created_at": ""}
    listed = cli("alerts", "silence", "list", "--json")
    assert listed.json["silences"] == [added.json]
    assert "pump swap" in cli("alerts", "silence", "list").stdout
    assert cli("alerts", "silence", "list", "--active", "--json").json["silences"] == []  # it is over by now
    removed = cli("alerts", "silence", "remove", str(added.json["id"]), "--json")
    assert removed.exit_code == 0 and removed.json == {"id": added.json["id"], "removed": True}
    assert cli("alerts", "silence", "list", "--json").json["silences"] == []


SPAN = ["--start", "2026-01-01T00:00:00Z", "--end", "2026-01-01T01:00:00Z"]


@pytest.mark.parametrize(("args", "message"), [
    (["silence", "add", "--device", "p", "--start", "yesterday", "--end", "2026-01-01T01:00:00Z"], "--start"),
    (["silence", "add", "--device", "p", "--start", "2026-01-01T02:00:00Z", "--end", "2026-01-01T01:00:00Z"],
     "--end must be after --start"),
    (["silence", "add", "--device", "pump\x1b[31m", *SPAN], "--device: expected a device/sensor pattern"),
    (["silence", "add", "--device", "", *SPAN], "--device: expected a device/sensor pattern"),
    (["silence", "add", "--device", "p", "--sensor", "x" * 300, *SPAN], "--sensor: expected a device/sensor pattern"),
    (["silence", "add", "--device", "p", "--note", "n" * 3000, *SPAN], "--note: at most 2000 characters"),
    (["silence", "add", "--device", "p", "--by", "", *SPAN], "--by: expected a name"),
    (["silence", "remove", "12345"], "unknown silence 12345"),
    (["dead-letters", "retry"], "give a dead letter ID or --all"),
    (["dead-letters", "retry", "7", "--all"], "give a dead letter ID or --all"),
    (["dead-letters", "retry", "99"], "unknown notification 99"),
])
def test_bad_input_is_exit_2_with_a_message(home: Path, cli, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    result = cli("alerts", *args, "--json")
    assert result.exit_code == 2, result.stdout
    assert message in result.json["error"]


@pytest.mark.parametrize("args", [["silence", "remove", "abc"], ["dead-letters", "retry", "1; drop table"],
                                  ["silence", "add", "--device", "p"], ["dead-letters", "list", "--limit", "0"]])
def test_malformed_arguments_are_usage_errors(home: Path, cli, args: list[str]) -> None:  # type: ignore[no-untyped-def]
    result = cli("alerts", *args)
    assert result.exit_code == 2 and "Traceback" not in result.stderr


def test_retry_of_a_notification_that_is_not_dead(home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write_config(home, hook_config("http://127.0.0.1:9/h"))
    on_incidents(Fleet.open(home).context, [incident("a")])
    [n] = Fleet.open(home).notifications()
    result = cli("alerts", "dead-letters", "retry", str(n.id), "--json")
    assert result.exit_code == 2 and f"notification {n.id} is pending, not a dead letter" in result.json["error"]
