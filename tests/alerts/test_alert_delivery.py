"""Delivery to a real local webhook: retries with backoff, dead letters and redrive, restarts, two deliverers."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from alert_support import hook_config, incident, webhook, write_config

from fleetscore.api import Fleet
from fleetscore.services.alerts import on_incidents
from fleetscore.services.delivery import deliver

SECRET = "s3cr3t-hook-value-1234"


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETSCORE_ALERTS_HOOK_BEARER", SECRET)  # a name redact.py would not guess


def open_fleet(home: Path, url: str, **kw: object) -> Fleet:
    write_config(home, hook_config(url, extra="", **kw).replace(
        'max_backoff = 0.05\n', 'max_backoff = 0.05\ntoken_env = "FLEETSCORE_ALERTS_HOOK_BEARER"\n'))
    return Fleet.open(home)


def test_failing_then_recovering_webhook_gets_each_notification_once(home: Path) -> None:
    with webhook(lambda n: 503 if n <= 3 else 200) as hook:
        fleet = open_fleet(home, hook.url)
        on_incidents(fleet.context, [incident("a"), incident("b", status="resolved")])
        result = fleet.deliver_alerts(30)
        assert (result.sent, result.dead, result.pending) == (3, 0, 0)
        assert result.failed == 3
        keys = hook.accepted_keys()
        assert sorted(keys) == sorted(n.key for n in fleet.notifications()) and len(set(keys)) == 3
        first = hook.requests[0]
        assert first["headers"]["Authorization"] == f"Bearer {SECRET}"
        body = next(r["body"] for r in hook.requests if r["body"]["incident"]["id"] == "b"
                    and r["body"]["state"] == "resolved")
        assert body["incident"]["status"] == "resolved" and body["rule"] == "all" and body["receiver"] == "hook"
        order = [(r["body"]["incident"]["id"], r["body"]["state"]) for r in hook.requests if r["body"]["incident"]["id"] == "b"]
        assert order.index(("b", "firing")) < order.index(("b", "resolved"))  # resolved never overtakes firing
        assert fleet.alert_counts() == {"sent": 3, "failed": 3, "dead": 0, "pending": 0, "suppressed": 0}
        assert fleet.deliver_alerts(0).sent == 0  # nothing twice


def test_always_failing_webhook_dead_letters_then_retry_delivers(home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    healthy = threading.Event()
    with webhook(lambda n: 200 if healthy.is_set() else 500) as hook:
        fleet = open_fleet(home, hook.url, max_attempts=3)
        on_incidents(fleet.context, [incident("a")])
        result = fleet.deliver_alerts(30)
        assert (result.sent, result.failed, result.dead) == (0, 2, 1)
        assert len(hook.requests) == 3
        listed = cli("alerts", "dead-letters", "list", "--json")
        assert listed.exit_code == 0
        [letter] = listed.json["dead_letters"]
        assert letter["incident"] == "a" and letter["attempts"] == 3
        assert "after 3 attempts: HTTP 500" in letter["error"]
        assert SECRET not in listed.stdout
        assert fleet.alert_counts()["dead"] == 1
        healthy.set()
        retried = cli("alerts", "dead-letters", "retry", str(letter["id"]), "--json")
        assert retried.exit_code == 0, retried.stdout
        assert retried.json["requeued"] == 1 and retried.json["delivery"]["sent"] == 1
        assert hook.accepted_keys() == [letter["key"]]
        assert cli("alerts", "dead-letters", "list", "--json").json["dead_letters"] == []
        assert fleet.alert_counts()["sent"] == 1


def test_unreachable_receiver_dead_letter_has_no_secret(home: Path) -> None:
    from alert_support import free_port

    url = f"http://user:{SECRET}@127.0.0.1:{free_port()}/hook"  # nobody listens; a password in the URL too
    fleet = open_fleet(home, url, max_attempts=2)
    on_incidents(fleet.context, [incident("a")])
    assert fleet.deliver_alerts(30).dead == 1
    [letter] = fleet.dead_letters()
    assert "ConnectError" in (letter.error or "") and SECRET not in (letter.error or "")


def test_missing_secret_is_a_dead_letter_naming_the_variable(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETSCORE_ALERTS_HOOK_BEARER")
    with webhook() as hook:
        fleet = open_fleet(home, hook.url, max_attempts=1)
        on_incidents(fleet.context, [incident("a")])
        assert fleet.deliver_alerts(5).dead == 1
        assert hook.requests == []
        assert "FLEETSCORE_ALERTS_HOOK_BEARER is not set" in (fleet.dead_letters()[0].error or "")


DELIVER = """
import sys
from fleetscore.api import Fleet
print(Fleet.open(sys.argv[1]).deliver_alerts(30).sent)
"""


def test_pending_notifications_survive_a_restart(home: Path) -> None:
    with webhook() as hook:
        fleet = open_fleet(home, hook.url)
        on_incidents(fleet.context, [incident("a"), incident("b")])
        fleet.close()  # this process queued them and stopped; a new process delivers
        out = subprocess.run([sys.executable, "-c", DELIVER, str(home)], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "2"
        assert len(hook.accepted_keys()) == 2


def test_two_deliverers_at_once_send_each_notification_once(home: Path) -> None:
    with webhook() as hook:
        fleet = open_fleet(home, hook.url)
        on_incidents(fleet.context, [incident(f"i{n}") for n in range(120)])
        other = Fleet.open(home)  # its own catalog connections, like a second process
        results = []
        threads = [threading.Thread(target=lambda f=f: results.append(deliver(f.context, deadline_s=30)))
                   for f in (fleet, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(r.sent for r in results) == 120
        assert len(hook.requests) == 120 and len(set(hook.accepted_keys())) == 120


def test_serve_delivers_continuously(home: Path) -> None:
    from fastapi.testclient import TestClient

    from fleetscore.web.app import create_app

    arrived = threading.Event()
    with webhook(lambda n: arrived.set() or 200) as hook:  # type: ignore[func-returns-value]
        fleet = open_fleet(home, hook.url)
        with TestClient(create_app(fleet)):  # the app's lifespan starts the delivery thread
            on_incidents(Fleet.open(home).context, [incident("a")])  # e.g. a scheduler in another process
            while not arrived.wait(0.05):
                pass
        assert [b["incident"]["id"] for b in (r["body"] for r in hook.requests)] == ["a"]
        assert fleet.alert_counts()["sent"] == 1


def test_scheduler_delivers_continuously(home: Path) -> None:
    import os
    import signal

    arrived = threading.Event()
    with webhook(lambda n: arrived.set() or 200) as hook:  # type: ignore[func-returns-value]
        fleet = open_fleet(home, hook.url)
        proc = subprocess.Popen([sys.executable, "-c", "from fleetscore.cli.main import main; main()", "scheduler",
                                 "--home", str(home)], stderr=subprocess.PIPE, text=True,
                                env=os.environ | {"PYTHONUNBUFFERED": "1"})
        try:
            assert proc.stderr is not None
            while "scheduler started" not in proc.stderr.readline():
                assert proc.poll() is None
            on_incidents(fleet.context, [incident("a")])
            while not arrived.wait(0.05):
                assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
        assert [r["body"]["incident"]["id"] for r in hook.requests] == ["a"]


def test_retry_all_redrives_every_dead_letter(home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    healthy = threading.Event()
    with webhook(lambda n: 200 if healthy.is_set() else 502) as hook:
        fleet = open_fleet(home, hook.url, max_attempts=1)
        on_incidents(fleet.context, [incident("a"), incident("b")])
        assert fleet.deliver_alerts(10).dead == 2
        assert {n.incident for n in fleet.dead_letters()} == {"a", "b"}
        healthy.set()
        result = cli("alerts", "dead-letters", "retry", "--all", "--json")
        assert result.exit_code == 0 and result.json["requeued"] == 2 and result.json["delivery"]["sent"] == 2
        assert len(set(hook.accepted_keys())) == 2 and fleet.dead_letters() == []


def test_a_webhook_url_from_the_environment_is_a_secret(home: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    with webhook() as hook:
        monkeypatch.setenv("FLEETSCORE_ALERTS_HOOK_URL", hook.url + "/T0K3N-in-the-path")
        write_config(home, hook_config(hook.url).replace(f'url = "{hook.url}"', 'url_env = "FLEETSCORE_ALERTS_HOOK_URL"'))
        rules = cli("alerts", "rules", "--json")
        assert rules.json["receivers"][0]["url"] == "(from FLEETSCORE_ALERTS_HOOK_URL)" and "T0K3N" not in rules.stdout
        on_incidents(Fleet.open(home).context, [incident("a")])
        assert Fleet.open(home).deliver_alerts(10).sent == 1
        assert len(hook.accepted_keys()) == 1
    monkeypatch.setenv("FLEETSCORE_ALERTS_HOOK_URL", "nonsense://T0K3N-in-the-path")
    test = cli("alerts", "test", "all", "--json")
    assert test.exit_code == 1 and "T0K3N" not in test.stdout and test.json["results"][0]["error"]
