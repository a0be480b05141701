"""Incident pages, forms and ``/api/incidents`` against incidents a real scoring run built, hostile device ids included."""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import parse_qs, unquote, urlsplit

import markupsafe
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from web_support import T0, PageFields, as_int, free_port

from fleetscore.core.incidents import ACTIVE, STATUSES
from fleetscore.web.ids import id_segment, segment_id

HTML = {"accept": "text/html"}
#: Device ids an integrator could send; each gets a copy of a flagged device's readings, hence incidents.
HOSTILE_DEVICES = ("<script>alert(1)</script>", "\"quotes'", "../x")
TOKEN = "incident-test-token"


@pytest.fixture(scope="module")
def hook() -> Iterator[tuple[str, list[bytes]]]:
    """A real local webhook receiver answering 200 to every POST; yields its URL and the bodies it got."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers.get("content-length") or 0)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def _alerts_toml(hook_url: str) -> str:
    """One rule for every incident, sent to the webhook and to a receiver nobody listens on (one attempt: dead letter)."""
    receiver = '[[alerts.receivers]]\nname = "{}"\ntype = "webhook"\nurl = "{}"\ntimeout = "2s"\nmax_attempts = {}\n'
    return ('[alerts]\n\n[[alerts.rules]]\nname = "all"\nreceivers = ["hook", "gone"]\n\n'
            + receiver.format("hook", hook_url, 3) + "\n" + receiver.format("gone", f"http://127.0.0.1:{free_port()}/", 1))


@pytest.fixture(scope="module")
def incident_fleet(tmp_path_factory: pytest.TempPathFactory, hook):  # type: ignore[no-untyped-def]
    """4 devices × 2 sensors plus the hostile devices, trained on 4 h, two hourly windows scored (so incidents built).

    The simulator's anomalies give incidents that resolve; a fault on every sensor at 05:40 gives each device one
    still open, on both sensors.
    """
    from fleetscore.api import Fleet
    from fleetscore.core.simulate import simulate_fleet

    home = tmp_path_factory.mktemp("incidents") / "home"
    home.mkdir()
    (home / "fleetscore.toml").write_text(_alerts_toml(hook[0]))
    fleet = Fleet.open(home, workers=1, shard_models=4)
    sim = simulate_fleet(4, 2, T0, 6, 60.0, 0.03, 5)
    late = sim.filter(pc.greater_equal(sim.column("ts"), pa.scalar(T0 + timedelta(hours=4), pa.timestamp("us", "UTC"))))
    labelled = late.group_by("device").aggregate([("label", "sum")]).sort_by([("label_sum", "descending")])
    source = labelled.column("device")[0].as_py()
    readings = _with_fault(sim.select(["ts", "device", "sensor", "value"]))
    mine = readings.filter(pc.equal(readings.column("device"), source))
    copies = [mine.set_column(1, "device", pa.array([d] * mine.num_rows)) for d in HOSTILE_DEVICES]
    fleet.import_table(pa.concat_tables([readings, *copies], promote_options="permissive"))
    fleet.train(T0, T0 + timedelta(hours=4), workers=1)
    for h in (4, 5):
        fleet.score(T0 + timedelta(hours=h), T0 + timedelta(hours=h + 1), workers=1)
    try:
        yield fleet
    finally:
        fleet.close()


def _with_fault(readings: pa.Table) -> pa.Table:
    """Every sensor of every device far off from 05:40 to 05:50: each device has an incident still open at 06:00."""
    ts = readings.column("ts").cast(pa.int64()).to_numpy()
    lo, hi = (int((T0 + timedelta(hours=5, minutes=m)).timestamp() * 1e6) for m in (40, 50))
    values = readings.column("value").to_numpy().copy()
    values[(ts >= lo) & (ts < hi)] += 1000.0
    return readings.set_column(3, "value", pa.array(values))


@pytest.fixture
def app_client(incident_fleet, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from fleetscore.web.app import create_app

    monkeypatch.delenv("FLEETSCORE_TOKEN", raising=False)
    made = []

    def make(**settings):  # type: ignore[no-untyped-def]
        made.append(TestClient(create_app(incident_fleet, **settings), follow_redirects=False))
        return made[-1]

    yield make
    for c in made:
        c.close()


@pytest.fixture
def client(app_client):  # type: ignore[no-untyped-def]
    return app_client()


def page(client, path: str, expect: int = 200, **params) -> str:  # type: ignore[no-untyped-def]
    r = client.get(path, headers=HTML, params=params or None)
    assert r.status_code == expect, (path, params, r.status_code, r.text[:400])
    assert r.headers["content-type"].startswith("text/html")
    assert "Traceback" not in r.text and 'File "' not in r.text
    return r.text


def rows(html_text: str) -> list[dict[str, str]]:
    """The incident rows of the list page: data-field texts per row."""
    out = []
    for m in re.finditer(r'<tr data-incident="([^"]+)">(.*?)</tr>', html_text, re.S):
        fields = PageFields(m.group(2))
        out.append({name: values[0] for name, values in fields.fields.items()} | {"row_id": html.unescape(m.group(1))})
    return out


def test_a_scoring_run_built_incidents_on_every_hostile_device(incident_fleet) -> None:  # type: ignore[no-untyped-def]
    devices = {i.device for i in incident_fleet.incidents(limit=1000)}
    assert set(HOSTILE_DEVICES) <= devices


def test_list_page_shows_every_incident_open_first(client, incident_fleet) -> None:  # type: ignore[no-untyped-def]
    text = page(client, "/incidents")
    shown = rows(text)
    expected = {i.id: i for i in incident_fleet.incidents(limit=100)}
    assert [r["id"] for r in shown] and {r["id"] for r in shown} == set(expected)
    order = [STATUSES.index(expected[r["id"]].status) for r in shown]
    assert order == sorted(order)
    for r in shown:
        incident = expected[r["id"]]
        assert html.unescape(r["device"]) == incident.device
        assert as_int(r["flags"]) == incident.flags
        assert r["status"] == incident.status
        assert (r["end"] == "open") == incident.active
        for share in incident.sensors:
            assert f"{share.sensor}\xa0({share.flags})" in html.unescape(r["sensors"])
    assert as_int(PageFields(text).one("count")) == len(shown)


def test_api_lists_the_same_incidents_as_the_page(client, incident_fleet) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/api/incidents").json()
    assert body["count"] == len(body["incidents"]) > 0
    assert [i["id"] for i in body["incidents"]] == [r["id"] for r in rows(page(client, "/incidents"))]
    first = body["incidents"][0]
    assert first == incident_fleet.incident(first["id"]).as_dict()
    assert {"id", "device", "start", "end", "status", "severity", "flags", "sensors"} <= set(first)
    assert client.get("/api/incidents", params={"limit": 1}).json()["count"] == 1


def test_filters_narrow_page_and_api_alike(client, incident_fleet) -> None:  # type: ignore[no-untyped-def]
    every = incident_fleet.incidents(limit=1000)
    device = HOSTILE_DEVICES[0]
    sensor = every[0].sensors[0].sensor
    peak = sorted(i.severity for i in every if i.severity is not None)[len(every) // 2]
    cases = [
        ({"device": device}, lambda i: i.device == device),
        ({"sensor": sensor}, lambda i: sensor in {s.sensor for s in i.sensors}),
        ({"status": "open"}, lambda i: i.status == "open"),
        ({"status": "active"}, lambda i: i.status in ACTIVE),
        ({"min_severity": str(peak)}, lambda i: i.severity is not None and i.severity >= peak),
        ({"device": device, "sensor": sensor, "min_severity": "0"},
         lambda i: i.device == device and sensor in {s.sensor for s in i.sensors}),
    ]
    for params, keep in cases:
        wanted = {i.id for i in every if keep(i)}
        assert wanted, params
        assert {i["id"] for i in client.get("/api/incidents", params=params).json()["incidents"]} == wanted, params
        assert {r["id"] for r in rows(page(client, "/incidents", **params))} == wanted, params
    last = max(i.last_us for i in every)
    from fleetscore.core.times import iso

    since = {i["id"] for i in client.get("/api/incidents", params={"since": iso(last)}).json()["incidents"]}
    assert since == {i.id for i in every if i.last_us >= last}
    # empty form fields (what the filter form sends when left blank) mean no filter
    assert len(rows(page(client, "/incidents", device="", sensor="", status="", min_severity="", since=""))) == len(every)


@pytest.mark.parametrize(("params", "named"), [
    ({"status": "bogus"}, "status"), ({"status": "<b>x</b>"}, "status"),
    ({"min_severity": "high"}, "min_severity"), ({"min_severity": "101"}, "min_severity"),
    ({"min_severity": "-1"}, "min_severity"), ({"min_severity": "nan"}, "min_severity"),
    ({"since": "yesterday"}, "since"), ({"limit": "0"}, "limit"), ({"limit": "many"}, "limit"),
    ({"device": "a\x01b"}, "device"), ({"sensor": "x" * 5000}, "sensor"),
])
def test_bad_filters_are_400_naming_the_parameter(client, params, named) -> None:  # type: ignore[no-untyped-def]
    text = page(client, "/incidents", 400, **params)
    message = re.search(r'<p class="message">(.*?)</p>', text, re.S)
    assert message is not None and named in html.unescape(message.group(1)) and "Bad request" in text
    assert "<b>x</b>" not in text
    r = client.get("/api/incidents", params=params)
    assert r.status_code in (400, 422) and named in r.text, r.text
    if named != "limit":
        assert r.status_code == 400 and named in r.json()["detail"]


def test_incident_page_shows_details_and_aligned_charts(client, incident_fleet) -> None:  # type: ignore[no-untyped-def]
    incident = max(incident_fleet.incidents(limit=1000), key=lambda i: (len(i.sensors), i.flags))
    text = page(client, f"/incidents/{id_segment(incident.id)}")
    fields = PageFields(text)
    assert fields.one("id") == incident.id
    assert html.unescape(fields.one("device")) == incident.device
    assert as_int(fields.one("flags")) == incident.flags
    assert fields.one("end") == ("open" if incident.active else incident.as_dict()["end"].replace("T", " ").rstrip("Z"))
    panels = re.findall(r'<div class="panel" data-sensor="[^"]*">(.*?)</div>', text, re.S)
    assert len(panels) == len(incident.sensors)
    axes = []
    for share, panel in zip(incident.sensors, panels):
        assert panel.count("<svg") == 1
        assert panel.count("<circle") >= share.flags  # every flag of the incident is drawn
        axes.append(re.findall(r'<text x="([\d.]+)" y="[\d.]+" text-anchor="middle"[^>]*>([^<]+)</text>', panel))
    assert axes[0] and all(a == axes[0] for a in axes)  # the same time axis on every chart


def test_unknown_and_hostile_incident_ids_are_404(client) -> None:  # type: ignore[no-untyped-def]
    for path in ("0123456789abcdef", "%3Cscript%3Ealert(1)%3C%2Fscript%3E", "..%2F..%2Fetc%2Fpasswd", "x" * 5000, "a%01b"):
        text = page(client, f"/incidents/{path}", 404)
        assert "<script>alert" not in text
        r = client.get(f"/api/incidents/{path}")
        assert r.status_code == 404 and "detail" in r.json()
        assert client.post(f"/api/incidents/{path}/ack", json={"by": "x"}).status_code == 404
        assert client.post(f"/api/incidents/{path}/mark", json={"mark": "true"}).status_code == 404
        assert client.post(f"/incidents/{path}/mark", data={"mark": "true"}, headers=HTML).status_code == 404


def _open(fleet):  # type: ignore[no-untyped-def]
    """An incident still open (tests acknowledge some as they go)."""
    return fleet.incidents(status="open", limit=1)[0]


def test_acknowledge_and_mark_through_the_api(client, incident_fleet) -> None:  # type: ignore[no-untyped-def]
    incident = _open(incident_fleet)
    path = f"/api/incidents/{id_segment(incident.id)}"
    r = client.post(f"{path}/ack", json={"by": "alice"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "acknowledged" and r.json()["acknowledged_by"] == "alice"
    assert incident_fleet.incident(incident.id).acknowledged_by == "alice"
    r = client.post(f"{path}/mark", json={"mark": "false", "note": "valve test <b>", "by": "bob"})
    assert r.status_code == 200, r.text
    stored = incident_fleet.incident(incident.id)
    assert stored.mark == "false" and stored.marks[-1].by == "bob" and stored.marks[-1].note == "valve test <b>"
    assert stored.marks[-1].at_us > incident.updated_us
    r = client.post(f"{path}/mark", json={"mark": "ignore"})
    assert r.json()["mark"] == "ignore" and r.json()["marks"][-1]["by"] == "api"
    assert [m["mark"] for m in client.get(path).json()["marks"]] == ["false", "ignore"]
    other = _open(incident_fleet)
    assert client.post(f"/api/incidents/{id_segment(other.id)}/ack").json()["acknowledged_by"] == "api"


@pytest.mark.parametrize(("body", "named"), [
    ({"mark": "maybe"}, "mark"), ({}, "mark"), ({"mark": "true", "colour": "red"}, "colour"),
    ({"mark": "true", "note": "n" * 5000}, "note"), ({"mark": "true", "by": "b" * 500}, "by"),
    ({"mark": "true", "by": 7}, "by"), ({"mark": ["true"]}, "mark"),
])
def test_bad_mark_bodies_are_422_naming_the_field(client, incident_fleet, body, named) -> None:  # type: ignore[no-untyped-def]
    incident = incident_fleet.incidents(limit=1)[0]
    r = client.post(f"/api/incidents/{id_segment(incident.id)}/mark", json=body)
    assert r.status_code == 422, r.text
    assert any(named in map(str, e["loc"]) for e in r.json()["detail"]), r.json()
    assert incident_fleet.incident(incident.id).marks == incident.marks


def test_bad_ack_bodies_and_names(client, incident_fleet) -> None:  # type: ignore[no-untyped-def]
    incident = _open(incident_fleet)
    path = f"/api/incidents/{id_segment(incident.id)}"
    for content in ("not json", "[1, 2]", '{"by": "a", "by2": "b"}'):
        r = client.post(f"{path}/ack", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 422, (content, r.text)
    r = client.post(f"{path}/mark", json={"mark": "true", "by": "eve\x07"})
    assert r.status_code == 400 and "by" in r.json()["detail"]
    assert incident_fleet.incident(incident.id).status == "open"


def test_forms_acknowledge_and_mark_with_the_name_given(client, incident_fleet) -> None:  # type: ignore[no-untyped-def]
    incident = _open(incident_fleet)
    path = f"/incidents/{id_segment(incident.id)}"
    text = page(client, path)
    assert f'action="{path}/ack"' in text and f'action="{path}/mark"' in text
    r = client.post(f"{path}/ack", data={"by": ""}, headers=HTML)
    assert r.status_code == 303 and r.headers["location"] == path
    assert incident_fleet.incident(incident.id).acknowledged_by == "web"
    r = client.post(f"{path}/mark", data={"mark": "true", "note": "<script>alert(1)</script> seen", "by": "carol"},
                    headers=HTML)
    assert r.status_code == 303 and r.headers["location"] == path
    stored = incident_fleet.incident(incident.id)
    assert (stored.mark, stored.marks[-1].by, stored.marks[-1].note) == ("true", "carol", "<script>alert(1)</script> seen")
    text = page(client, path)
    fields = PageFields(text)
    assert fields.fields["mark-by"][0] == "carol" and fields.one("mark") == "true"
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt; seen" in text
    assert 'data-form="ack"' not in text  # acknowledged: no second button


def test_bad_forms_are_400_pages_and_change_nothing(client, incident_fleet) -> None:  # type: ignore[no-untyped-def]
    incident = _open(incident_fleet)
    path = f"/incidents/{id_segment(incident.id)}"
    for data, named in (({"mark": "maybe"}, "mark"), ({}, "mark"), ({"mark": "true", "note": "n" * 5000}, "note"),
                        ({"mark": "true", "by": "b" * 300}, "by")):
        r = client.post(f"{path}/mark", data=data, headers=HTML)
        assert r.status_code == 400 and named in html.unescape(r.text), (data, r.text[:300])
        assert "Traceback" not in r.text
    assert incident_fleet.incident(incident.id).marks == incident.marks


def test_cross_site_form_posts_are_refused(client, incident_fleet) -> None:  # type: ignore[no-untyped-def]
    incident = _open(incident_fleet)
    path = f"/incidents/{id_segment(incident.id)}"
    for headers in ({"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"}, {"origin": "http://evil.example"}):
        assert client.post(f"{path}/ack", data={"by": "mallory"}, headers=HTML | headers).status_code == 403
        assert client.post(f"{path}/mark", data={"mark": "false"}, headers=HTML | headers).status_code == 403
    same = {"sec-fetch-site": "same-origin", "origin": "http://testserver"}
    assert client.post(f"{path}/mark", data={"mark": "ignore"}, headers=HTML | same).status_code == 303
    stored = incident_fleet.incident(incident.id)
    assert stored.acknowledged_by is None and [m.mark for m in stored.marks] == ["ignore"]


def test_hostile_device_ids_are_escaped_and_round_trip(client, incident_fleet) -> None:  # type: ignore[no-untyped-def]
    for device in HOSTILE_DEVICES:
        found = incident_fleet.incidents(device=device, limit=1000)
        assert found, device
        text = page(client, "/incidents", device=device)
        assert {r["id"] for r in rows(text)} == {i.id for i in found}
        escaped = str(markupsafe.escape(device))
        if device != "../x":
            assert device not in text and escaped in text
        links = PageFields(text).links
        device_links = [u for u in links if urlsplit(u).path == "/incidents" and "device=" in u]
        assert device_links and all(parse_qs(urlsplit(u).query)["device"] == [device] for u in device_links)
        sensor_links = [u for u in links if u.startswith("/devices/")]
        assert sensor_links and all(segment_id(unquote(u.split("/")[2])) == device for u in sensor_links)
        one = page(client, f"/incidents/{id_segment(found[0].id)}")
        assert html.unescape(PageFields(one).one("device")) == device
        if device != "../x":
            assert device not in one
        for u in PageFields(one).links:
            if u.startswith("/devices/"):
                assert page(client, u).count("<svg") >= 1  # the sensor page of the hostile device opens
    assert "<script>alert(1)</script>" not in page(client, "/")


def test_overview_leads_with_active_incidents(client, incident_fleet) -> None:  # type: ignore[no-untyped-def]
    text = page(client, "/")
    active = incident_fleet.incidents(status="active", limit=1000)
    assert text.index('data-section="incidents"') < text.index("Last run")
    section = text[text.index('data-section="incidents"'):text.index("</section>", text.index('data-section="incidents"'))]
    assert as_int(PageFields(section).one("incidents_active")) == len(active)
    shown = re.findall(r'<tr data-incident="([^"]+)">', section)
    assert shown and set(shown) <= {i.id for i in active}
    assert "/incidents?status=active" in section
    body = client.get("/api/overview").json()
    assert body["incidents_active"] == len(active) and [i["id"] for i in body["incidents"]] == shown


def metric(text: str, name: str) -> float:
    value = re.search(rf"^{name} (\S+)$", text, re.M)
    assert value is not None, name
    return float(value.group(1))


def test_metrics_count_active_incidents_and_notifications(client, incident_fleet, hook) -> None:  # type: ignore[no-untyped-def]
    incident_fleet.deliver_alerts(10)
    counts = incident_fleet.alert_counts()
    text = client.get("/metrics").text
    assert metric(text, "fleetscore_incidents_open") == len(incident_fleet.incidents(status="active", limit=1000)) > 0
    assert metric(text, "fleetscore_notifications_sent_total") == counts["sent"] == len(hook[1]) > 0
    assert metric(text, "fleetscore_notifications_failed_total") == counts["failed"] >= counts["dead"]
    assert metric(text, "fleetscore_notifications_dead_lettered") == counts["dead"] == counts["sent"]  # one per sent
    assert metric(text, "fleetscore_notifications_pending") == counts["pending"] == 0


def test_incidents_need_the_token_when_one_is_set(app_client, incident_fleet) -> None:  # type: ignore[no-untyped-def]
    client = app_client(token=TOKEN)
    incident = _open(incident_fleet)
    seg = id_segment(incident.id)
    for path in ("/api/incidents", f"/api/incidents/{seg}"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert client.get(path, headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.post(f"/api/incidents/{seg}/ack", json={"by": "x"}).status_code == 401
    assert client.post(f"/api/incidents/{seg}/mark", json={"mark": "false"}).status_code == 401
    for path in ("/incidents", f"/incidents/{seg}"):
        r = client.get(path, headers=HTML)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    for form, data in (("ack", {"by": "x"}), ("mark", {"mark": "false"})):
        r = client.post(f"/incidents/{seg}/{form}", data=data, headers=HTML)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert incident_fleet.incident(incident.id) == incident
    ok = client.post(f"/api/incidents/{seg}/ack", json={"by": "dora"}, headers={"authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["acknowledged_by"] == "dora"


def test_dead_letters_are_listed_with_their_reason(client, incident_fleet) -> None:  # type: ignore[no-untyped-def]
    incident_fleet.deliver_alerts(10)
    dead = incident_fleet.dead_letters(1000)
    body = client.get("/api/alerts/dead-letters", params={"limit": 1000}).json()
    assert body["counts"] == incident_fleet.alert_counts() and body["counts"]["dead"] == len(dead) > 0
    assert [n["id"] for n in body["dead_letters"]] == [n.id for n in dead]
    assert all(n["receiver"] == "gone" and n["error"] for n in body["dead_letters"])
    text = page(client, "/incidents")
    section = PageFields(text[text.index('data-section="notifications"'):])
    assert as_int(section.one("dead")) == len(dead)
    assert section.fields["reason"] == [n.error for n in dead[:20]]
    assert client.get("/api/alerts/dead-letters", params={"limit": 0}).status_code == 422
