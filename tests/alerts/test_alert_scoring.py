"""End to end: a one-shot ``score`` builds incidents, queues their notifications and delivers them before it exits;
scoring the window again sends no second firing."""

from __future__ import annotations

from pathlib import Path

from alert_support import hook_config, webhook, write_config

from fleetscore.api import Fleet

T0, T6, T7 = "2026-01-01T00:00:00Z", "2026-01-01T06:00:00Z", "2026-01-01T08:00:00Z"


def test_score_delivers_the_incidents_it_found_once(home: Path, cli, fleet_csv: Path) -> None:  # type: ignore[no-untyped-def]
    with webhook() as hook:
        write_config(home, hook_config(hook.url))
        assert cli("import", fleet_csv).exit_code == 0
        assert cli("train", "--from", T0, "--to", T6, "--workers", "1").exit_code == 0
        scored = cli("score", "--from", T6, "--to", T7, "--workers", "1", "--json")
        assert scored.exit_code == 0, scored.stderr
        fleet = Fleet.open(home)
        incidents = {i.id for i in fleet.incidents(limit=1000)}
        assert incidents, "the simulated fleet has labelled anomalies in the scored window"
        firing = [r["body"] for r in hook.requests if r["body"]["state"] == "firing"]
        assert {b["incident"]["id"] for b in firing} == incidents
        assert len(hook.accepted_keys()) == len(set(hook.accepted_keys()))
        assert fleet.alert_counts()["pending"] == 0
        before = len(hook.requests)
        assert cli("score", "--from", T6, "--to", T7, "--workers", "1").exit_code == 0
        again = [r["body"] for r in hook.requests[before:]]
        assert [b for b in again if b["state"] == "firing" and b["incident"]["id"] in incidents] == []
