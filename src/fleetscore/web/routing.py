"""How dashboard routes answer when something is wrong, and how ids travel in URLs.

* Errors: a :class:`~fleetscore.errors.FleetscoreError` raised while answering becomes a status code
  (unknown or malformed id → 404, other bad input → 400, storage → 503, the rest → 500) with the
  error's message: an HTML page on page routes (:class:`PageRoute`), ``{"detail": ...}`` on API
  routes (:class:`ApiRoute`). Nothing else reaches the client: no stack trace, no file contents.
* Unmatched URLs get the same 404 page when a browser asks (``Accept: text/html``), else JSON.
* Pages without the token raise :class:`LoginRequired`, answered by a redirect to the login form.
  Where to go after logging in (``next``) must be a path on this site (:func:`safe_next`), else ``/``.
* Device and sensor ids are arbitrary text (``/``, ``..``, ``<script>``): :func:`id_segment` turns an
  id into one URL path segment and :func:`segment_id` back. ``~`` escapes ``~`` and ``/`` always, and
  dots when the id is only dots (clients collapse ``.`` and ``..`` segments); ids without those
  characters appear in URLs as they are.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute

from fleetscore.errors import FleetscoreError, InputError, NotFoundError, StorageError

if TYPE_CHECKING:
    from fleetscore.api import Fleet

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
#: Percent-decoding layers looked through; a target still changing after this many is refused.
_MAX_DECODES = 4
#: Unicode categories refused anywhere in a redirect target: controls, format (bidi, zero-width), separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Zs"})


class LoginRequired(Exception):
    """A page was asked for without the token; ``next`` is where to return after logging in."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def fleet_of(request: Request) -> Fleet:
    """The fleet the app serves (``create_app(fleet)``)."""
    return request.app.state.fleet


def status_for(exc: FleetscoreError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, InputError):
        return 400
    if isinstance(exc, StorageError):
        return 503
    return 500


def safe_next(target: str | None) -> str:
    """``target`` when it is a path on this site (see :func:`is_local_path`), else ``/``: no open redirect after login."""
    return target if target and is_local_path(target) else "/"


def is_local_path(target: str) -> bool:
    """True when ``target``, as given and at every depth of percent-decoding, is a path with one leading ``/``.

    Refused: a scheme or authority, ``//`` or ``/\\`` at the start, any backslash, and any control, invisible
    or separator character (Unicode Cc, Cf, Zl, Zp, Zs), since browsers drop tabs and newlines, read ``\\``
    as ``/`` and some proxies decode once more. Decoded layers may hold plain spaces (ids can).
    """
    layer, strict = target, True
    for _ in range(_MAX_DECODES):
        if not _plain_path(layer, allow_space=not strict):
            return False
        decoded = unquote(layer)
        if decoded == layer:
            return True
        layer, strict = decoded, False
    return False


def _plain_path(text: str, *, allow_space: bool) -> bool:
    if not text.startswith("/") or text.startswith("//") or "\\" in text:
        return False
    if any(unicodedata.category(ch) in _UNSAFE_CATEGORIES and not (allow_space and ch == " ") for ch in text):
        return False
    parts = urlsplit(text)
    return not parts.scheme and not parts.netloc


class _AnsweringRoute(APIRoute):
    """A route that answers fleetscore errors (and, on pages, invalid parameters) itself."""

    def answer_error(self, request: Request, status: int, message: str) -> Response:
        raise NotImplementedError

    def answer_invalid(self, request: Request, exc: RequestValidationError) -> Response:
        raise exc

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except FleetscoreError as exc:
                return self.answer_error(request, status_for(exc), str(exc))
            except RequestValidationError as exc:
                return self.answer_invalid(request, exc)

        return answer


class ApiRoute(_AnsweringRoute):
    """API route: fleetscore errors become JSON ``{"detail": message}``; invalid parameters FastAPI's 422."""

    def answer_error(self, request: Request, status: int, message: str) -> Response:
        return JSONResponse({"detail": message}, status_code=status)


class PageRoute(_AnsweringRoute):
    """Page route: fleetscore errors and invalid parameters become the HTML error page."""

    def answer_error(self, request: Request, status: int, message: str) -> Response:
        return error_page(request, status, message)

    def answer_invalid(self, request: Request, exc: RequestValidationError) -> Response:
        where = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors())
        return error_page(request, 400, where)


def wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


def error_page(request: Request, status: int, message: str) -> Response:
    from fleetscore.web.render import render

    titles = {400: "Bad request", 401: "Sign in needed", 403: "Forbidden", 404: "Not found", 405: "Not allowed",
              429: "Too many attempts"}
    title = titles.get(status, "Service unavailable" if status == 503 else "Error")
    return render(request, "error.html", status=status, title=title, status_code=status, message=message)


def install_handlers(app: Any) -> None:
    """App-wide: the login redirect, and HTML error pages for browsers on unmatched URLs."""
    from fastapi.exception_handlers import http_exception_handler
    from starlette.exceptions import HTTPException

    async def login_redirect(request: Request, exc: LoginRequired) -> Response:
        root = request.scope.get("root_path", "")
        return RedirectResponse(f"{root}/login?next={quote(exc.next_url, safe='/')}", status_code=303)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        if wants_html(request) and exc.status_code >= 400:
            page = error_page(request, exc.status_code, str(exc.detail))
            page.headers.update(exc.headers or {})
            return page
        return await http_exception_handler(request, exc)

    app.add_exception_handler(LoginRequired, login_redirect)
    app.add_exception_handler(HTTPException, http_error)
