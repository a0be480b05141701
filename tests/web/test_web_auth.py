"""Access control: with a token, the API and /metrics need it (401 JSON), pages send browsers to the login form."""

from __future__ import annotations

from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

import pytest
from web_support import HOSTILE_IDS

from fleetscore.web.auth import COOKIE_NAME
from fleetscore.web.ids import id_segment

TOKEN = "s3cret-token-for-tests"
HTML = {"accept": "text/html"}
PROTECTED_API = ["/api/runs", "/api/overview", "/api/fleet", "/api/models", "/metrics",
                 "/api/devices/dev-00001/sensors/temperature"]
PAGES = ["/", "/fleet?by=sensor", "/models", "/devices/dev-00001/sensors/temperature"]


@pytest.fixture
def locked(make_client):  # type: ignore[no-untyped-def]
    return make_client(token=TOKEN)


@pytest.mark.parametrize("path", PROTECTED_API)
def test_api_needs_the_bearer_token(locked, path: str) -> None:  # type: ignore[no-untyped-def]
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {TOKEN}"}):
        r = locked.get(path, headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["content-type"] == "application/json" and "token" in r.json()["detail"]
    assert locked.get(path, headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_unknown_run_is_401_not_404_without_token(locked) -> None:  # type: ignore[no-untyped-def]
    assert locked.get("/api/runs/0123456789abcdef").status_code == 401
    assert locked.get("/api/runs/0123456789abcdef", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 404


@pytest.mark.parametrize("path", PAGES + ["/runs/0123456789abcdef"])
def test_pages_redirect_to_the_login_form(locked, path: str) -> None:  # type: ignore[no-untyped-def]
    r = locked.get(path, headers=HTML)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login?next=")
    assert TOKEN not in r.text


def test_login_sets_an_httponly_strict_cookie_that_opens_pages(locked, web_fleet) -> None:  # type: ignore[no-untyped-def]
    form = locked.get("/login?next=/models", headers=HTML)
    assert form.status_code == 200 and 'name="token"' in form.text and 'value="/models"' in form.text
    wrong = locked.post("/login", data={"token": "nope", "next": "/models"}, headers=HTML)
    assert wrong.status_code == 401 and "not right" in wrong.text and "set-cookie" not in wrong.headers
    r = locked.post("/login", data={"token": TOKEN, "next": "/models"}, headers=HTML)
    assert r.status_code == 303 and r.headers["location"] == "/models"
    cookie = SimpleCookie(r.headers["set-cookie"])[COOKIE_NAME]
    assert cookie["httponly"] and cookie["samesite"].lower() == "strict" and cookie["path"] == "/"
    assert not cookie["secure"]  # plain http on loopback; https requests get Secure
    locked.cookies.set(COOKIE_NAME, cookie.value)
    page = locked.get("/models", headers=HTML)
    assert page.status_code == 200 and "Sign out" in page.text
    assert locked.get("/api/runs").status_code == 200  # the cookie works for the API too (same origin)
    out = locked.post("/logout", headers=HTML)
    assert out.status_code == 303 and f"{COOKIE_NAME}=" in out.headers["set-cookie"]
    assert "max-age=0" in out.headers["set-cookie"].lower() or "expires" in out.headers["set-cookie"].lower()


#: ``next`` values that browsers (dropping tabs and newlines, reading ``\\`` as ``/``) or a decoding proxy would
#: take off this site, or that hide characters: each as it arrives at the app, after the form or query is decoded.
OFF_SITE = ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)",
            "/\t/evil.example", "/\n/evil.example", "/\x7f/evil.example", "/\u2028/evil.example", "/\xa0/evil.example",
            "/ /evil.example", "/\u202e/evil.example", "/\u200b/evil.example", "/\ufeff/evil.example",
            "/%2F/evil.example", "/%2f%2fevil.example", "/%5Cevil.example", "/%09/evil.example", "/%7F/evil.example",
            "/%E2%80%A8/evil.example", "/%C2%A0/evil.example", "/%252F/evil.example", "/%25252525252F/evil.example"]


@pytest.mark.parametrize("target", OFF_SITE)
def test_login_never_redirects_off_site(locked, target: str) -> None:  # type: ignore[no-untyped-def]
    r = locked.post("/login", data={"token": TOKEN, "next": target}, headers=HTML)
    assert r.status_code == 303 and r.headers["location"] == "/"
    form = locked.get("/login", params={"next": target}, headers=HTML)
    assert form.status_code == 200 and 'name="next" value="/"' in form.text


def test_a_page_of_a_hostile_id_comes_back_after_login(locked) -> None:  # type: ignore[no-untyped-def]
    device, sensor = HOSTILE_IDS[1]  # "..", a sensor id with a space, & and quotes
    page = f"/devices/{id_segment(device)}/sensors/{id_segment(sensor)}"
    asked = locked.get(page, headers=HTML)
    assert asked.status_code == 303
    next_value = parse_qs(urlsplit(asked.headers["location"]).query)["next"][0]
    r = locked.post("/login", data={"token": TOKEN, "next": next_value}, headers=HTML)
    assert r.status_code == 303 and r.headers["location"] == page


def test_missing_form_field_is_a_400_page(locked) -> None:  # type: ignore[no-untyped-def]
    r = locked.post("/login", data={"next": "/"}, headers=HTML)
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")


def test_token_from_the_environment(scored_home, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from fleetscore.api import Fleet
    from fleetscore.web.app import create_app

    monkeypatch.setenv("FLEETSCORE_TOKEN", TOKEN)  # read with the home's settings
    fleet = Fleet.open(scored_home.path)
    client = TestClient(create_app(fleet), follow_redirects=False)
    assert client.get("/api/runs").status_code == 401
    assert client.get("/api/runs", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    client.close()
    fleet.close()


def test_open_routes_stay_open(locked) -> None:  # type: ignore[no-untyped-def]
    assert locked.get("/healthz").status_code == 200
    assert locked.get("/static/style.css").status_code == 200
    assert locked.get("/login", headers=HTML).status_code == 200


def test_without_a_token_everything_is_open_and_login_redirects_home(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/api/runs").status_code == 200
    assert client.get("/", headers=HTML).status_code == 200
    r = client.get("/login?next=/fleet", headers=HTML)
    assert r.status_code == 303 and r.headers["location"] == "/fleet"
