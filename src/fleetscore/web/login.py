"""The login form for browsers: it checks the token once and keeps it in an HttpOnly cookie.

``GET /login`` shows the form, ``POST /login`` sets the cookie (HttpOnly, SameSite=Strict, Secure
over HTTPS) and redirects back to the page that asked, ``POST /logout`` removes it. Pages depend on
:func:`require_login`, which sends a browser without the token to the form instead of a 401.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from fleetscore.web.auth import COOKIE_NAME, configured_token, token_matches, token_ok
from fleetscore.web.render import render, url
from fleetscore.web.routing import LoginRequired, PageRoute, safe_next

#: How long the login cookie lasts (seconds).
COOKIE_MAX_AGE = 7 * 24 * 3600


def require_login(request: Request) -> None:
    """Page dependency: without the token, redirect to the login form (then back here)."""
    if not token_ok(request):
        query = f"?{request.url.query}" if request.url.query else ""
        raise LoginRequired(f"{quote(request.url.path)}{query}")  # percent-encoded: ids may hold spaces


def build_router() -> APIRouter:
    router = APIRouter(tags=["pages"], include_in_schema=False, route_class=PageRoute)

    @router.get("/login")
    def login_form(request: Request, next: str = "/") -> Response:
        if not configured_token(request):
            return RedirectResponse(url(request, safe_next(next)), status_code=303)
        return render(request, "login.html", title="Sign in", next=safe_next(next), failed=False)

    @router.post("/login")
    def login(request: Request, token: Annotated[str, Form(max_length=4096)], next: Annotated[str, Form()] = "/") -> Response:
        target = safe_next(next)
        if not configured_token(request) or not token_matches(request, token):
            return render(request, "login.html", status=401, title="Sign in", next=target, failed=True)
        response = RedirectResponse(url(request, target), status_code=303)
        response.set_cookie(
            COOKIE_NAME, token, max_age=COOKIE_MAX_AGE, path=url(request, "/") or "/", httponly=True,
            samesite="strict", secure=request.url.scheme == "https",
        )
        return response

    @router.post("/logout")
    def logout(request: Request) -> Response:
        response = RedirectResponse(url(request, "/login"), status_code=303)
        response.delete_cookie(COOKIE_NAME, path=url(request, "/") or "/", httponly=True, samesite="strict")
        return response

    return router
