"""The dashboard in a real headless Chromium against a real uvicorn server holding a real scored run.

Each page is loaded, the numbers it shows are compared with the run records, and a screenshot is
saved to ``test-artifacts/screenshots/`` (look at them when the pages change).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from web_support import HOSTILE_IDS, as_int, served

pytestmark = pytest.mark.backend

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
TOKEN = "browser-test-token"


@pytest.fixture(scope="module")
def server(scored_home, tmp_path_factory) -> Iterator[tuple[str, object]]:  # type: ignore[no-untyped-def]
    """uvicorn on a free loopback port serving a copy of the scored home, with a token and ingest on."""
    pytest.importorskip("uvicorn")
    from fleetscore.api import Fleet
    from fleetscore.web.app import create_app

    home = tmp_path_factory.mktemp("browser") / "home"
    shutil.copytree(scored_home.path, home)
    fleet = Fleet.open(home)
    try:
        with served(create_app(fleet, token=TOKEN)) as url:
            yield url, fleet
    finally:
        fleet.close()


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install chromium; scripts/test.sh does)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server):  # type: ignore[no-untyped-def]
    """A signed-in page; console errors (CSP violations, failed loads) are collected in ``page.errors``."""
    base, _ = server
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=base)
    p = context.new_page()
    p.errors = []
    p.on("console", lambda m: p.errors.append(m.text) if m.type == "error" else None)
    p.goto("/login")
    p.fill("#token", TOKEN)
    p.click("button[type=submit]")
    p.wait_for_url(f"{base}/")
    yield p
    context.close()


def shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def field(page, selector: str) -> int:  # type: ignore[no-untyped-def]
    return as_int(page.locator(selector).inner_text())


def test_login_form_sets_an_httponly_cookie(browser, server) -> None:  # type: ignore[no-untyped-def]
    base, _ = server
    context = browser.new_context(viewport={"width": 1280, "height": 700}, base_url=base)
    p = context.new_page()
    p.goto("/models")
    assert p.url.startswith(f"{base}/login?next=")
    shot(p, "login")
    p.fill("#token", "wrong")
    p.click("button[type=submit]")
    assert p.locator(".alert").is_visible()
    p.fill("#token", TOKEN)
    p.click("button[type=submit]")
    p.wait_for_url(f"{base}/models")
    cookie = next(c for c in context.cookies() if c["name"] == "fleetscore_token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert p.evaluate("document.cookie") == ""  # invisible to scripts
    p.click("text=Sign out")
    p.wait_for_url(f"{base}/login")
    p.goto("/")
    assert "/login" in p.url
    context.close()


def test_overview_shows_every_run_as_recorded(page, server) -> None:  # type: ignore[no-untyped-def]
    _, fleet = server
    runs = fleet.runs()
    page.goto("/")
    for run in runs:
        row = f"tr[data-run='{run.run_id}']"
        assert field(page, f"{row} [data-field=rows]") == run.rows
        assert field(page, f"{row} [data-field=anomalies]") == run.anomalies
        assert field(page, f"{row} [data-field=models]") == run.models
        assert field(page, f"{row} [data-field=failed_models]") == run.failed_models
    assert field(page, ".cards [data-field=anomalies]") == sum(r.anomalies for r in runs)
    assert page.locator("svg.chart").count() == 2
    shot(page, "overview")
    assert page.errors == []


def test_run_page_matches_the_partial_run(page, server, scored_home) -> None:  # type: ignore[no-untyped-def]
    _, fleet = server
    run, tasks, failures = fleet.run(scored_home.partial_id)
    page.goto("/")
    page.click(f"tr[data-run='{run.run_id}'] a")
    page.wait_for_url(f"**/runs/{run.run_id}")
    for name in ("models", "rows", "anomalies", "failed_models", "unmatched_rows"):
        assert field(page, f".cards [data-field={name}]") == getattr(run, name), name
    for task in tasks:
        assert field(page, f"tr[data-task='{task.task}'] [data-field=rows]") == task.rows
    assert page.locator("table.failures tbody tr").count() == len(failures) > 0
    failed = next(t for t in tasks if t.status == "failed")
    assert page.locator("[data-field=error]").inner_text() == failed.error
    assert page.locator(f"[data-attempt='{failed.task}-1']").count() == 1
    shot(page, "run-partial")
    page.goto(f"/runs/{scored_home.run_ids[0]}")
    shot(page, "run-succeeded")
    assert page.errors == []


def test_fleet_heatmap_and_hostile_ids(page, server) -> None:  # type: ignore[no-untyped-def]
    _, fleet = server
    page.goto("/fleet")
    assert page.locator("svg.chart rect title").count() > 0
    assert page.locator("table.top tbody tr").count() == len(set(fleet.models().column("device").to_pylist()))
    shot(page, "fleet")
    device, sensor = HOSTILE_IDS[0]
    page.click(f"table.top a:text-is('{device}')")
    page.wait_for_selector("h1 [data-field=device]")
    assert page.locator("h1 [data-field=device]").inner_text() == device
    shot(page, "fleet-device")
    page.click(f"table.top a:text-is('{sensor}')")
    page.wait_for_selector("[data-field=sensor]")
    assert page.locator("[data-field=device]").inner_text() == device
    assert page.locator("[data-field=sensor]").inner_text() == sensor
    assert page.locator("b").filter(has_text="pump").count() == 0  # the id's markup is text, not HTML
    assert page.errors == []


def test_sensor_page_plots_readings_and_anomalies(page, server) -> None:  # type: ignore[no-untyped-def]
    _, fleet = server
    page.goto("/fleet?by=sensor&sort=anomalies")
    page.locator("table.top tbody tr").first.locator("a").nth(1).click()
    page.wait_for_selector("[data-field=readings]")
    device = page.locator("[data-field=device]").inner_text()
    sensor = page.locator("[data-field=sensor]").inner_text()
    body = fleet.series(device, sensor, "2026-01-01T00:00:00Z", "2026-01-03T00:00:00Z")
    assert field(page, "[data-field=readings]") == body.num_rows
    assert field(page, "[data-field=anomalies]") == sum(a for a in body.column("is_anomaly").to_pylist() if a)
    assert page.locator("svg.chart circle").count() >= 2 * field(page, "[data-field=anomalies]") > 0
    shot(page, "sensor")
    assert page.errors == []


def test_models_and_not_found_pages(page, server) -> None:  # type: ignore[no-untyped-def]
    _, fleet = server
    page.goto("/models")
    released = next(v for v in fleet.versions() if v.released)
    assert page.locator("[data-field=released]").inner_text() == released.version
    shot(page, "models")
    response = page.goto("/runs/..%2F..%2Fetc%2Fpasswd")
    assert response is not None and response.status == 404
    response = page.goto("/runs/0123456789abcdef")
    assert response is not None and response.status == 404 and "Not found" in page.inner_text("h1")
    shot(page, "not-found")


def test_ingested_readings_show_on_the_overview(page, server) -> None:  # type: ignore[no-untyped-def]
    import httpx

    base, _ = server
    now = int(time.time()) - 60
    batch = [{"ts": now - i, "device": "probe", "sensor": "temperature", "value": 20.0 + i} for i in range(25)]
    batch.append({"ts": "not a time", "device": "probe", "sensor": "temperature", "value": 1})
    r = httpx.post(f"{base}/v1/readings", content=json.dumps(batch),
                   headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/json"})
    assert r.status_code == 202, r.text
    page.goto("/")
    assert field(page, "[data-field=ingest-accepted_total]") == 25
    assert field(page, "[data-field=ingest-rejected_total]") == 1
    shot(page, "overview-ingest")


def test_incidents_list_and_one_incident_with_its_mark_form(page, server) -> None:  # type: ignore[no-untyped-def]
    _, fleet = server
    incidents = fleet.incidents(limit=1000)
    assert incidents, "the scored home's runs built no incident"
    page.goto("/incidents")
    assert page.locator("table.incidents tbody tr").count() == len(incidents)
    shot(page, "incidents")
    incident = max(incidents, key=lambda i: (i.active, len(i.sensors), i.flags))
    page.click(f"tr[data-incident='{incident.id}'] a[data-field=id]")
    page.wait_for_url(f"**/incidents/{incident.id}")
    assert field(page, ".cards [data-field=flags]") == incident.flags
    assert page.locator(".panel svg.chart").count() == len(incident.sensors)
    page.check("form[data-form=mark] input[value=false]")
    page.fill("form[data-form=mark] textarea[name=note]", "sensor was being recalibrated")
    page.fill("form[data-form=mark] input[name=by]", "browser-operator")
    page.click("form[data-form=mark] button[type=submit]")
    page.wait_for_selector("[data-field=mark-by]")
    assert page.locator("[data-field=mark-by]").first.inner_text() == "browser-operator"
    stored = fleet.incident(incident.id)
    assert (stored.mark, stored.marks[-1].by) == ("false", "browser-operator")
    shot(page, "incident")
    assert page.errors == []


def test_sensor_page_of_an_incident_draws_the_expected_band(page, server) -> None:  # type: ignore[no-untyped-def]
    from fleetscore.web.charts import BAND

    _, fleet = server
    incident = max(fleet.incidents(limit=1000), key=lambda i: (i.active, i.flags))
    sensor = incident.sensors[0].sensor
    page.goto(f"/incidents/{incident.id}")
    page.click(f".panel[data-sensor='{sensor}'] a[data-field=sensor]")
    page.wait_for_selector("[data-field=readings]")
    assert page.locator("[data-field=sensor]").inner_text() == sensor
    assert field(page, "[data-field=anomalies]") > 0
    assert page.locator(f"svg.chart [fill='{BAND}']").count() > 0  # the band the flagged readings left
    shot(page, "sensor-band")
    assert page.errors == []
