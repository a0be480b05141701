"""The dashboard's part of the app: pages, login, JSON API, ``/metrics`` and error handling.

``create_app`` calls :func:`install` once; everything the dashboard adds to the app is listed here.
"""

from __future__ import annotations

from typing import Any


def install(app: Any) -> None:
    """Add the dashboard's routers, the metrics registry and the error/login handlers to ``app``."""
    from fleetscore.web import api, login, metrics, pages
    from fleetscore.web.routing import install_handlers

    app.state.metrics_registry = metrics.make_registry(app)
    install_handlers(app)
    for router in (login.build_router(), pages.build_static_router(), pages.build_router(), api.build_router(),
                   metrics.build_router()):
        app.include_router(router)
