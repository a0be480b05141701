"""Delivery of the alert outbox to its receivers: at least once, surviving restarts, with dead letters.

:func:`deliver` claims due notifications in batches under a lease (so several processes may deliver
at once), POSTs each to its receiver and records the outcome: ``sent``; or a later attempt after
``backoff`` × 2^(attempts-1) (at most ``max_backoff``); or, after the receiver's ``max_attempts``, a
dead letter with the reason (HTTP status and body, or the error), secrets redacted. A process killed
mid-batch leaves its rows ``sending``; they are claimed again once the lease expires, so a receiver
may see a notification twice and should drop repeats by its ``Idempotency-Key`` header.

A webhook receives the notification as JSON (``idempotency_key``, ``state``, ``rule``, ``receiver``,
``incident``: the incident's JSON); Alertmanager receives a one-alert list in its ``/api/v2/alerts``
format. :class:`DeliveryThread` delivers continuously (``serve``, ``scheduler``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleetscore.catalog.alerts import FIRING, AlertStore, Notification
from fleetscore.clock import wall_clock
from fleetscore.config.alerts import ALERTMANAGER, AlertSettings, Receiver
from fleetscore.core.times import SECOND_US, iso, parse_time
from fleetscore.redact import redact, secret_values
from fleetscore.services.alerts import idempotency_key, recover, severity_label
from fleetscore.services.context import Context

if TYPE_CHECKING:
    import httpx

#: Notifications one claim takes, and how many of them are sent at once.
BATCH = 32
SENDERS = 8
#: Shortest wait for a notification that is due but not claimable yet (a resolved one behind its firing one).
IDLE_S = 0.05
#: How long an Alertmanager alert stays active without its resolved notification.
FIRING_TTL_S = 7 * 86_400
#: Longest error text kept in a dead letter.
MAX_ERROR = 500
Say = Callable[[str], None]


@dataclass
class DeliveryResult:
    """What one :func:`deliver` call did, and how many notifications are still pending after it."""

    sent: int = 0
    failed: int = 0
    dead: int = 0
    pending: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "failed": self.failed, "dead": self.dead, "pending": self.pending}


@dataclass(frozen=True)
class TestResult:
    """How a test notification to one receiver went."""

    receiver: str
    ok: bool
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"receiver": self.receiver, "ok": self.ok, "error": self.error}


def deliver(ctx: Context, *, deadline_s: float, stop: threading.Event | None = None,
            holder: str | None = None) -> DeliveryResult:
    """Send due notifications until none is due within ``deadline_s`` seconds (or ``stop`` is set).

    Waits for retries that come due before the deadline; what is left stays pending for the next call.
    """
    settings = ctx.config.alerts
    result = DeliveryResult()
    if not settings.receivers:
        return result
    store = AlertStore(ctx.catalog)
    recover(ctx)
    holder = holder or uuid.uuid4().hex[:12]
    end = time.monotonic() + deadline_s
    secrets = secret_values() + settings.secrets
    import httpx

    with httpx.Client(follow_redirects=False) as client, ThreadPoolExecutor(SENDERS) as pool:
        while not (stop and stop.is_set()):
            token = f"{holder}-{uuid.uuid4().hex[:12]}"
            batch = store.claim(token, wall_clock() / SECOND_US, settings.lease_s, BATCH)
            if not batch:
                due = store.next_due_s()
                wait = None if due is None else max(IDLE_S, due - wall_clock() / SECOND_US)
                if wait is None or time.monotonic() + wait > end:
                    break
                (stop or threading.Event()).wait(min(wait, 1.0))
                continue
            errors = list(pool.map(lambda n: _send(client, settings, n.receiver, n.payload, secrets), batch))
            _record(store, token, settings, batch, errors, result)
            if time.monotonic() > end:
                break
    result.pending = store.counts()["pending"]
    return result


def _record(store: AlertStore, token: str, settings: AlertSettings, batch: list[Notification],
            errors: list[str | None], result: DeliveryResult) -> None:
    sent = [n.id for n, e in zip(batch, errors, strict=True) if e is None]
    failed: list[tuple[Notification, str, float | None]] = []
    now_s = wall_clock() / SECOND_US
    for n, error in zip(batch, errors, strict=True):
        if error is None:
            continue
        receiver = _receiver(settings, n.receiver)
        attempts = n.attempts + 1
        if receiver is None or attempts >= receiver.max_attempts:
            failed.append((n, f"after {attempts} attempts: {error}", None))
            result.dead += 1
        else:
            wait = min(receiver.max_backoff_s, receiver.backoff_s * 2 ** (attempts - 1))
            failed.append((n, error, now_s + wait))
            result.failed += 1
    store.finish(token, sent, failed)
    result.sent += len(sent)


def _receiver(settings: AlertSettings, name: str) -> Receiver | None:
    return next((r for r in settings.receivers if r.name == name), None)


def _send(client: httpx.Client, settings: AlertSettings, receiver_name: str, payload: dict[str, Any],
          secrets: list[str]) -> str | None:
    """POST one notification; None when the receiver took it (2xx), else the reason, redacted."""
    import httpx

    receiver = _receiver(settings, receiver_name)
    if receiver is None:
        return f"receiver {receiver_name!r} is no longer in fleetscore.toml"
    missing = receiver.missing_secret()
    if missing:
        return f"receiver {receiver.name!r}: environment variable {missing} is not set"
    headers = {"Idempotency-Key": payload["idempotency_key"], "User-Agent": "fleetscore-alerts"}
    auth: dict[str, Any] = {}
    if receiver.token:
        headers["Authorization"] = f"Bearer {receiver.token}"
    elif receiver.username:
        auth["auth"] = (receiver.username, receiver.password or "")
    if receiver.type == ALERTMANAGER:
        url = receiver.target if receiver.target.endswith("/api/v2/alerts") else receiver.target + "/api/v2/alerts"
        body: Any = [alertmanager_alert(payload, settings.external_url)]
    else:
        url, body = receiver.target, payload
    try:
        response = client.post(url, json=body, headers=headers, timeout=receiver.timeout_s, **auth)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return redact(f"{type(exc).__name__}: {exc}", secrets)[:MAX_ERROR]
    if 200 <= response.status_code < 300:
        return None
    return redact(f"HTTP {response.status_code}: {response.text[:200]}", secrets)[:MAX_ERROR]


def alertmanager_alert(payload: dict[str, Any], external_url: str) -> dict[str, Any]:
    """One notification as an Alertmanager ``/api/v2/alerts`` alert: the same labels firing and resolved."""
    incident = payload["incident"]
    sensors = ", ".join(s["sensor"] for s in incident["sensors"])
    labels = {"alertname": "fleetscore_incident", "rule": payload["rule"], "device": incident["device"],
              "incident": incident["id"], "severity": payload["severity_label"]}
    if payload.get("test"):
        labels["alertname"] = "fleetscore_test"
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": {
            "summary": f"{incident['device']}: abnormal since {incident['start']} ({sensors})",
            "description": f"incident {incident['id']} on {incident['device']}: {incident['flags']} flags on "
                           f"{sensors}, peak severity {_severity(incident['severity'])}, status {incident['status']}"},
        "startsAt": incident["start"],
        "generatorURL": f"{external_url}/incidents/{incident['id']}",
    }
    if payload["state"] == FIRING:
        ttl_s = 300 if payload.get("test") else FIRING_TTL_S
        alert["endsAt"] = iso(parse_time(payload["queued_at"]) + ttl_s * SECOND_US)
    else:  # the last flag of a resolved incident, or when a recovery window ended
        alert["endsAt"] = incident["end"] or payload["queued_at"]
    return alert


def _severity(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def send_test(ctx: Context, rule_name: str) -> list[TestResult]:
    """Send a test notification to each receiver of the rule right away (not through the outbox)."""
    settings = ctx.config.alerts
    rule = settings.rule(rule_name)
    now_us = ctx.clock()
    stamp = uuid.uuid4().hex[:8]
    incident_id = f"test-{rule.name}-{stamp}"
    incident: dict[str, Any] = {"id": incident_id, "device": "fleetscore-test", "start": iso(now_us), "end": None,
                "last_flag": iso(now_us), "status": "open", "severity": 50.0, "flags": 1,
                "sensors": [{"sensor": "test", "flags": 1}]}
    secrets = secret_values() + settings.secrets
    import httpx

    out = []
    with httpx.Client(follow_redirects=False) as client:
        for receiver in rule.receivers:
            payload = {"idempotency_key": idempotency_key(rule.name, receiver, incident_id, FIRING),
                       "state": FIRING, "rule": rule.name, "receiver": receiver, "test": True,
                       "severity_label": severity_label(50.0), "queued_at": iso(now_us), "incident": incident}
            error = _send(client, settings, receiver, payload, secrets)
            out.append(TestResult(receiver, error is None, error))
    return out


class DeliveryThread:
    """Delivers the outbox in a daemon thread every ``[alerts] poll`` until :meth:`stop` (``serve``, ``scheduler``)."""

    def __init__(self, ctx: Context, say: Say | None = None) -> None:
        self.ctx = ctx
        self.say: Say = say or (lambda message: None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="fleetscore-alerts", daemon=True)

    def start(self) -> DeliveryThread:
        self._thread.start()
        return self

    def _main(self) -> None:
        poll = self.ctx.config.alerts.poll_s
        while not self._stop.is_set():
            try:
                done = deliver(self.ctx, deadline_s=poll, stop=self._stop)
            except Exception as exc:  # noqa: BLE001 - a catalog outage must not end delivery: say it, go on
                self.say(redact(f"alert delivery failed: {type(exc).__name__}: {exc}"))
            else:
                if done.sent or done.dead:
                    self.say(f"alerts: {done.sent} sent, {done.dead} dead-lettered, {done.pending} pending")
            self._stop.wait(poll)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._thread.join(timeout)
