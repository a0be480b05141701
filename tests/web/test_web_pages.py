"""Dashboard pages in-process: every page renders the fleet's numbers, hostile ids are escaped, errors are pages."""

from __future__ import annotations

import html
import re
from urllib.parse import unquote, urlsplit

import markupsafe
import pytest
from web_support import HOSTILE_IDS, PageFields, as_int

from fleetscore.core.times import iso
from fleetscore.web.ids import id_segment, segment_id

HTML = {"accept": "text/html"}


def get_page(client, path: str, status: int = 200) -> str:  # type: ignore[no-untyped-def]
    r = client.get(path, headers=HTML)
    assert r.status_code == status, (path, r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("text/html")
    assert "script-src" not in r.headers["content-security-policy"]  # default-src 'none': no scripts at all
    if status != 200:
        assert "Traceback" not in r.text and 'File "' not in r.text
    return r.text


def test_overview_lists_every_run_with_its_counts(client, web_fleet, scored_home) -> None:  # type: ignore[no-untyped-def]
    page = get_page(client, "/")
    runs = web_fleet.runs()
    assert {r.run_id for r in runs} == set(scored_home.run_ids)
    for run in runs:
        row = re.search(rf'<tr data-run="{run.run_id}">(.*?)</tr>', page, re.S)
        assert row is not None, run.run_id
        fields = PageFields(row.group(1))
        assert as_int(fields.one("rows")) == run.rows
        assert as_int(fields.one("anomalies")) == run.anomalies
        assert as_int(fields.one("failed_models")) == run.failed_models
        assert f"/runs/{run.run_id}" in fields.links
    top = PageFields(page[: page.index("Recent runs")])
    assert as_int(top.one("anomalies")) == sum(r.anomalies for r in runs)
    assert as_int(top.one("rows")) == sum(r.rows for r in runs)
    assert "<svg" in page


def test_run_page_shows_tasks_failures_and_logs(client, web_fleet, scored_home) -> None:  # type: ignore[no-untyped-def]
    run, tasks, failures = web_fleet.run(scored_home.partial_id)
    page = get_page(client, f"/runs/{run.run_id}")
    fields = PageFields(page)
    for name in ("models", "rows", "anomalies", "failed_models", "unmatched_rows"):
        assert as_int(fields.fields[name][0]) == getattr(run, name), name
    assert [as_int(v) for v in fields.fields["rows"][1:]] == [t.rows for t in tasks]
    assert failures and all(str(markupsafe.escape(f.reason)) in page for f in failures)
    failed_task = next(t for t in tasks if t.status == "failed")
    assert fields.one("error") == failed_task.error
    assert "Run log" in page and "task.failed" in page
    assert f'data-attempt="{failed_task.task}-1"' in page


def test_fleet_page_links_every_device_and_sorts(client, web_fleet) -> None:  # type: ignore[no-untyped-def]
    page = get_page(client, "/fleet?by=sensor&sort=anomalies&order=asc")
    fields = PageFields(page)
    anomalies = [as_int(v) for v in fields.fields["anomalies"]]
    assert anomalies == sorted(anomalies)
    models = web_fleet.models()
    sensor_links = {urlsplit(link).path for link in fields.links if link.startswith("/devices/")}
    expected = {f"/devices/{id_segment(d)}/sensors/{id_segment(s)}"
                for d, s in zip(models.column("device").to_pylist(), models.column("sensor").to_pylist())}
    assert sensor_links == expected


@pytest.mark.parametrize("device, sensor", HOSTILE_IDS)
def test_hostile_ids_are_escaped_and_reachable(client, device: str, sensor: str) -> None:  # type: ignore[no-untyped-def]
    fleet_page = get_page(client, "/fleet?by=sensor")
    assert device not in fleet_page or device == ".."  # never raw HTML
    assert html.escape(device) in fleet_page
    link = next(link for link in PageFields(fleet_page).links
                if link.startswith("/devices/") and segment_id(unquote(link.split("/")[2])) == device)
    page = get_page(client, link)
    fields = PageFields(page)
    assert fields.one("device") == device and fields.one("sensor") == sensor
    assert as_int(fields.one("readings")) > 0 and as_int(fields.one("scored")) > 0
    assert "<b>pump</b>" not in page


def test_device_filter_shows_only_that_device(client, web_fleet) -> None:  # type: ignore[no-untyped-def]
    device = "<b>pump</b>/../7"
    page = get_page(client, "/fleet?" + "device=" + "%3Cb%3Epump%3C%2Fb%3E%2F..%2F7")
    fields = PageFields(page)
    assert fields.one("device") == device
    assert len(fields.fields["rate"]) == 1


def test_sensor_page_matches_predictions(client, web_fleet) -> None:  # type: ignore[no-untyped-def]
    import pyarrow.compute as pc

    runs = web_fleet.runs()
    preds = web_fleet.predictions(start=iso(min(r.window_from for r in runs)), end=iso(max(r.window_to for r in runs)))
    mine = preds.filter(pc.and_(pc.equal(preds.column("device"), "dev-00002"), pc.equal(preds.column("sensor"), "temperature")))
    fields = PageFields(get_page(client, "/devices/dev-00002/sensors/temperature?hours=24"))
    assert as_int(fields.one("scored")) == mine.num_rows > 0
    assert as_int(fields.one("anomalies")) == sum(mine.column("is_anomaly").to_pylist())
    assert fields.one("model-version") == "v1"
    assert as_int(fields.one("model-n_train")) == web_fleet.model("dev-00002", "temperature")["n_train"]


def test_models_page_marks_the_release(client, web_fleet) -> None:  # type: ignore[no-untyped-def]
    fields = PageFields(get_page(client, "/models"))
    released = [v for v in web_fleet.versions() if v.released]
    assert fields.one("released") == released[0].version
    assert as_int(fields.one("models")) == released[0].models


BAD_RUNS = ["0123456789abcdef", "zzzz", "..%2F..%2Fetc%2Fpasswd", "%00", "a" * 10_000, "%2e%2e"]
BAD_SENSORS = ["/devices/..%2F..%2Fetc%2Fpasswd/sensors/x", "/devices/%00/sensors/x", f"/devices/{'d' * 10_000}/sensors/x",
               "/devices/dev-00001/sensors/no-such-sensor", "/devices/no-such-device/sensors/temperature",
               "/devices/dev-00001/sensors/%2e%2e%2f%2e%2e%2fcatalog.db"]


@pytest.mark.parametrize("run_id", BAD_RUNS, ids=lambda r: r[:20])
def test_unknown_or_hostile_run_ids_are_404_pages(client, run_id: str) -> None:  # type: ignore[no-untyped-def]
    page = get_page(client, f"/runs/{run_id}", status=404)
    assert "Not found" in page and "root:" not in page


@pytest.mark.parametrize("path", BAD_SENSORS, ids=lambda p: p[:40])
def test_unknown_or_hostile_sensor_ids_are_404_pages(client, path: str) -> None:  # type: ignore[no-untyped-def]
    page = get_page(client, path, status=404)
    assert "Not found" in page and "root:" not in page and "SQLite" not in page


def test_unmatched_urls_are_html_for_browsers_and_json_for_clients(client) -> None:  # type: ignore[no-untyped-def]
    assert "Not found" in get_page(client, "/no/such/page", status=404)
    r = client.get("/no/such/page")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}


@pytest.mark.parametrize("query", ["hours=0", "hours=abc", f"hours={24 * 8}", "end=yesterday", "sort=nope", "order=up"])
def test_bad_parameters_are_400_pages(client, query: str) -> None:  # type: ignore[no-untyped-def]
    page = get_page(client, f"/fleet?{query}", status=400)
    assert "Bad request" in page


def test_static_files_are_a_fixed_list(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/static/style.css")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
    for name in ("..%2Fapp.py", "app.py", "%2Fetc%2Fpasswd"):
        assert client.get(f"/static/{name}").status_code == 404


def test_id_segments_round_trip_any_id() -> None:
    for value in ["plain", "a/b", "~", "~2F", ".", "..", "...", "a.b", "<x>&\"'", "é ü", "%2F", "a~7Eb"]:
        segment = id_segment(value)
        assert "/" not in segment and segment not in (".", "..")
        assert segment_id(unquote(segment)) == value
