"""A real Prometheus Alertmanager (Debian ``prometheus-alertmanager``) receives a firing alert, then its resolved one."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from alert_support import ALERTMANAGER, alertmanager, incident, write_config

from fleetscore.api import Fleet
from fleetscore.services.alerts import on_incidents

pytestmark = [pytest.mark.backend, pytest.mark.skipif(
    ALERTMANAGER is None, reason="prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)")]


def config(url: str) -> str:
    return (f'[alerts]\nexternal_url = "http://fleet.example:8000"\n'
            '[[alerts.rules]]\nname = "pumps"\ndevice = "pump-*"\nreceivers = ["am"]\n'
            f'[[alerts.receivers]]\nname = "am"\ntype = "alertmanager"\nurl = "{url}"\nbackoff = 0.05\n')


def active(url: str) -> list[dict]:  # type: ignore[type-arg]
    return [a for a in httpx.get(f"{url}/api/v2/alerts", timeout=5).json() if a["labels"].get("rule") == "pumps"]


def test_alertmanager_receives_firing_then_resolved(home: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    with alertmanager(tmp_path) as url:
        write_config(home, config(url))
        fleet = Fleet.open(home)
        on_incidents(fleet.context, [incident("inc-7", "pump-7", severity=95.0, sensors={"pressure": 4, "flow": 2})])
        assert fleet.deliver_alerts(30).sent == 1
        [alert] = active(url)
        assert alert["status"]["state"] == "active"
        assert alert["labels"] == {"alertname": "fleetscore_incident", "rule": "pumps", "device": "pump-7",
                                   "incident": "inc-7", "severity": "critical"}
        assert "pressure, flow" in alert["annotations"]["summary"]
        assert alert["startsAt"].startswith("2026-01-01T00:00:00")
        assert alert["generatorURL"] == "http://fleet.example:8000/incidents/inc-7"

        # peak severity fell in a re-score: the resolved alert keeps the labels it fired with
        on_incidents(fleet.context, [incident("inc-7", "pump-7", severity=60.0, status="resolved")])
        assert fleet.deliver_alerts(30).sent == 1
        assert active(url) == []  # resolved: Alertmanager lists active alerts only

        test = cli("alerts", "test", "pumps", "--json")
        assert test.exit_code == 0, test.stdout
        assert test.json["results"] == [{"receiver": "am", "ok": True, "error": None}]
        [probe] = [a for a in httpx.get(f"{url}/api/v2/alerts", timeout=5).json()
                   if a["labels"]["alertname"] == "fleetscore_test"]
        assert probe["labels"]["device"] == "fleetscore-test"
