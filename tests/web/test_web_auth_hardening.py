"""Auth hardening against a real uvicorn server: no open redirect from /login, no public docs or CDN
scripts, wrong tokens limited per client address, blank tokens refused."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from fastapi import HTTPException
from web_support import served

from fleetscore.web.auth import DEFAULT_FAILURE_BURST, FailedAttempts

TOKEN = "hardening-test-token"
HTML = {"accept": "text/html"}
#: ``next`` as a link would carry it (percent-encoded in the query): the issue's bypasses and encoded twins.
BYPASSES = ["/%09/evil.example", "/%0A/evil.example", "/%7F/evil.example", "/%E2%80%A8/evil.example",
            "/%C2%A0/evil.example", "/%E2%80%AE/evil.example", "//evil.example", "/%5Cevil.example",
            "%2F%2Fevil.example", "https://evil.example/", "/%252F/evil.example", "/%255Cevil.example",
            "/%2509/evil.example", "/%20/evil.example", "/%0D%0ASet-Cookie:%20x=1"]


@contextmanager
def serving(fleet, **settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """``create_app(fleet, **settings)`` under uvicorn on a free loopback port (ingest off: the home is shared)."""
    from fleetscore.web.app import create_app

    with served(create_app(fleet, ingest=False, **settings)) as url:
        yield url


@pytest.fixture(scope="module")
def open_url(web_fleet) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A server with no token configured."""
    with serving(web_fleet, token="") as url:
        yield url


@pytest.fixture(scope="module")
def locked_url(web_fleet) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A server with a token; each test sends from its own loopback address (127.0.0.N) to keep its own allowance."""
    with serving(web_fleet, token=TOKEN) as url:
        yield url


def client_from(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30, follow_redirects=False)


def raw_get(base: str, target: str) -> http.client.HTTPResponse:
    """GET ``target`` exactly as written (no client-side re-encoding)."""
    conn = http.client.HTTPConnection(urlsplit(base).netloc, timeout=30)
    conn.request("GET", target, headers=HTML)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def browser_destination(base: str, location: str) -> tuple[str, str]:
    """(host, path) a browser goes to for ``Location: location``: it trims C0 controls and spaces, drops tabs
    and newlines, reads ``\\`` as ``/``, then resolves against the page (WHATWG URL parsing)."""
    cleaned = location.strip("".join(map(chr, range(0x21))))
    cleaned = cleaned.replace("\t", "").replace("\n", "").replace("\r", "").replace("\\", "/")
    where = urlsplit(urljoin(base + "/login", cleaned))
    return where.netloc, where.path


@pytest.mark.parametrize("target", BYPASSES)
def test_login_without_a_token_redirects_only_on_site(open_url: str, target: str) -> None:
    r = raw_get(open_url, f"/login?next={target}")
    location = r.getheader("location") or ""
    assert r.status == 303 and location == "/", location
    assert browser_destination(open_url, location) == (urlsplit(open_url).netloc, "/")


def test_login_without_a_token_keeps_a_path_on_site(open_url: str) -> None:
    r = raw_get(open_url, "/login?next=/fleet%3Fby%3Dsensor")
    assert r.status == 303 and r.getheader("location") == "/fleet?by=sensor"


@pytest.mark.parametrize("target", BYPASSES)
def test_login_with_a_token_redirects_only_on_site(locked_url: str, target: str) -> None:
    with client_from("127.0.0.2") as c:
        r = c.post(f"{locked_url}/login", content=f"token={TOKEN}&next={target}".encode(),
                   headers={**HTML, "content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert browser_destination(locked_url, r.headers["location"]) == (urlsplit(locked_url).netloc, "/")


def test_docs_are_off_and_the_schema_needs_the_token(locked_url: str) -> None:
    with client_from("127.0.0.3") as c:
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            assert c.get(f"{locked_url}{path}").status_code == 404, path
        assert c.get(f"{locked_url}/openapi.json").status_code == 401
        r = c.get(f"{locked_url}/openapi.json", headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and "/api/runs" in r.json()["paths"]
    assert "/openapi.json" not in r.json()["paths"]


def test_without_a_token_the_schema_is_open_and_no_page_loads_a_cdn(open_url: str) -> None:
    assert httpx.get(f"{open_url}/openapi.json").json()["info"]["title"] == "fleetscore"
    for path in ("/docs", "/redoc"):
        r = httpx.get(f"{open_url}{path}")
        assert r.status_code == 404 and "cdn." not in r.text


def test_wrong_bearer_tokens_are_limited_per_address(locked_url: str) -> None:
    right, wrong = {"authorization": f"Bearer {TOKEN}"}, {"authorization": "Bearer guess"}
    with client_from("127.0.0.4") as c, client_from("127.0.0.5") as other:
        assert all(c.get(f"{locked_url}/api/runs", headers=right).status_code == 200 for _ in range(3 * DEFAULT_FAILURE_BURST))
        for i in range(DEFAULT_FAILURE_BURST):  # successes spent none of the allowance
            path = ("/api/runs", "/metrics")[i % 2]
            assert c.get(f"{locked_url}{path}", headers=wrong).status_code == 401
        limited = c.post(f"{locked_url}/v1/readings", headers=wrong, content=b"[]")
        assert limited.status_code == 429 and "too many wrong tokens" in limited.json()["detail"]
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert c.get(f"{locked_url}/api/runs", headers=right).status_code == 429  # a blocked address stays blocked
        assert other.get(f"{locked_url}/api/runs", headers=right).status_code == 200
        assert other.get(f"{locked_url}/api/runs", headers=wrong).status_code == 401


def test_wrong_login_tokens_are_limited_per_address(locked_url: str) -> None:
    with client_from("127.0.0.6") as c:
        for _ in range(DEFAULT_FAILURE_BURST):
            assert c.post(f"{locked_url}/login", data={"token": "guess", "next": "/"}, headers=HTML).status_code == 401
        r = c.post(f"{locked_url}/login", data={"token": TOKEN, "next": "/"}, headers=HTML)
        page = c.get(f"{locked_url}/models", headers={**HTML, "cookie": "fleetscore_token=guess"})
    assert r.status_code == 429 and "set-cookie" not in r.headers and int(r.headers["retry-after"]) >= 1
    assert r.headers["content-type"].startswith("text/html") and "Too many attempts" in r.text
    assert page.status_code == 429  # a wrong cookie is an attempt too


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_blocked_address_gets_its_allowance_back_as_time_passes() -> None:
    clock = Clock()
    attempts = FailedAttempts(burst=3, refill_s=2.0, clock=clock)
    for _ in range(3):
        attempts.check("10.0.0.1")
        attempts.failed("10.0.0.1")
    with pytest.raises(HTTPException) as blocked:
        attempts.check("10.0.0.1")
    assert blocked.value.status_code == 429 and blocked.value.headers == {"Retry-After": "2"}
    attempts.check("10.0.0.2")  # other addresses are not affected
    clock.now = 2.0
    attempts.check("10.0.0.1")  # one attempt back
    attempts.failed("10.0.0.1")
    with pytest.raises(HTTPException):
        attempts.check("10.0.0.1")
    clock.now = 10.0
    for _ in range(3):  # the whole burst back
        attempts.check("10.0.0.1")
        attempts.failed("10.0.0.1")


def test_the_longest_failed_address_is_forgotten_first() -> None:
    attempts = FailedAttempts(burst=1, refill_s=60.0, tracked=2, clock=Clock())
    for address in ("a", "b", "c"):
        attempts.failed(address)
    attempts.check("a")  # forgotten: the table stays bounded however many addresses fail
    for address in ("b", "c"):
        with pytest.raises(HTTPException):
            attempts.check(address)


@pytest.mark.parametrize("token", ["   ", "\t", " padded-token "])
def test_a_blank_or_padded_token_is_refused(tmp_path, token: str) -> None:  # type: ignore[no-untyped-def]
    from fleetscore.config.load import load_config
    from fleetscore.errors import ConfigError

    with pytest.raises(ConfigError, match="FLEETSCORE_TOKEN") as refused:
        load_config(tmp_path / "home", env={"FLEETSCORE_TOKEN": token})
    assert not token.strip() or token.strip() not in str(refused.value)  # the secret is not echoed


def test_serve_refuses_a_public_address_with_a_blank_token(cli, home, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FLEETSCORE_TOKEN", "   ")
    r = cli("serve", "--host", "0.0.0.0", "--port", "1", "--json")
    assert r.exit_code != 0 and "FLEETSCORE_TOKEN is only whitespace" in r.json["error"]
    assert "Traceback" not in r.stdout + r.stderr
