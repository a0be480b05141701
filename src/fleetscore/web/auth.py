"""Access control shared by every route: with a token configured, requests need it.

The token comes from ``create_app(fleet, token=...)`` or the home's settings (``config.web.token``:
the env var ``FLEETSCORE_TOKEN``, never the toml; never logged). Clients send ``Authorization: Bearer <token>``; browsers get an
HttpOnly cookie from the login form. Comparison is constant-time.

Wrong tokens (bearer, cookie or login form) are limited per client address by :class:`FailedAttempts`:
an address that failed ``burst`` times gets 429 with ``Retry-After`` until its allowance refills, whatever
it sends. An address that has not failed is never limited and costs one dict lookup.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections.abc import Callable

from fastapi import HTTPException, Request

COOKIE_NAME = "fleetscore_token"
#: Failed token attempts an address may make at once, and the seconds until it may make one more.
DEFAULT_FAILURE_BURST = 10
DEFAULT_FAILURE_REFILL_S = 6.0
#: Addresses tracked at most; the one that failed longest ago is forgotten first.
DEFAULT_TRACKED_ADDRESSES = 10_000


class FailedAttempts:
    """Token buckets of failed token attempts per client address (thread-safe; only failing addresses are kept)."""

    def __init__(self, *, burst: int = DEFAULT_FAILURE_BURST, refill_s: float = DEFAULT_FAILURE_REFILL_S,
                 tracked: int = DEFAULT_TRACKED_ADDRESSES, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.refill_s, self.tracked, self._clock = burst, refill_s, tracked, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (allowance, when it was computed)
        self._lock = threading.Lock()

    def check(self, address: str) -> None:
        """Raise 429 with ``Retry-After`` when ``address`` has no failed attempt left."""
        if address not in self._buckets:
            return
        with self._lock:
            allowance = self._allowance(address, self._clock())
            if allowance >= self.burst:
                self._buckets.pop(address, None)
        if allowance < 1:
            wait = math.ceil((1 - allowance) * self.refill_s)
            raise HTTPException(status_code=429, detail=f"too many wrong tokens from {address}: retry in {wait} s",
                                headers={"Retry-After": str(wait)})

    def failed(self, address: str) -> None:
        """Count one wrong token from ``address``."""
        with self._lock:
            now = self._clock()
            allowance = self._allowance(address, now) - 1
            self._buckets.pop(address, None)
            self._buckets[address] = (allowance, now)
            while len(self._buckets) > self.tracked:
                del self._buckets[next(iter(self._buckets))]

    def _allowance(self, address: str, now: float) -> float:
        allowance, at = self._buckets.get(address, (self.burst, now))
        return min(self.burst, allowance + (now - at) / self.refill_s)


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
    """True when no token is configured or ``given`` is the configured one (constant-time).

    A given token is an attempt: 429 first if the client's address failed too often, counted when wrong.
    """
    expected = configured_token(request)
    if not expected:
        return True
    if given is None:
        return False
    attempts: FailedAttempts = request.app.state.failed_attempts
    address = request.client.host if request.client else ""
    attempts.check(address)
    if hmac.compare_digest(given.encode(), expected.encode()):
        return True
    attempts.failed(address)
    return False


def token_ok(request: Request) -> bool:
    """True when no token is configured or the request presents the right one."""
    return token_matches(request, presented_token(request))


def require_token(request: Request) -> None:
    """FastAPI dependency: 401 with a JSON message when the token is missing or wrong."""
    if not token_ok(request):
        raise HTTPException(status_code=401, detail="missing or wrong token: send Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})
