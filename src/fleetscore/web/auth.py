"""Access control shared by every route: with a token configured, requests need it.

The token comes from ``create_app(fleet, token=...)`` or the home's settings (``config.web.token``:
the env var ``FLEETSCORE_TOKEN``, never the toml; never logged). Clients send ``Authorization: Bearer <token>``; browsers get an
HttpOnly cookie from the login form. Comparison is constant-time.
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request

COOKIE_NAME = "fleetscore_token"


def configured_token(request: Request) -> str | None:
    token = request.app.state.settings.get("token")
    return token if token is not None else (request.app.state.fleet.config.web.token or None)


def presented_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return request.cookies.get(COOKIE_NAME)


def token_matches(request: Request, given: str | None) -> bool:
    """True when no token is configured or ``given`` is the configured one (constant-time)."""
    expected = configured_token(request)
    if not expected:
        return True
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def token_ok(request: Request) -> bool:
    """True when no token is configured or the request presents the right one."""
    return token_matches(request, presented_token(request))


def require_token(request: Request) -> None:
    """FastAPI dependency: 401 with a JSON message when the token is missing or wrong."""
    if not token_ok(request):
        raise HTTPException(status_code=401, detail="missing or wrong token: send Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})
