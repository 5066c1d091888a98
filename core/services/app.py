"""The starlette application the local backend serves: the service's route and a health check.

Ray Serve routes requests to ``ServiceHandler`` itself (its proxy plays this app's part), so both
backends answer through the same handler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from starlette.applications import Starlette

    from .handler import ServiceHandler

HEALTH_PATH = "/-/healthz"


def service_app(handler: ServiceHandler) -> Starlette:
    """``POST /<name>`` (and GET, for handlers without required parameters) answered by ``handler``
    (within the settings' overload limits, if any); ``GET /-/healthz`` answers ``ok`` once the
    handler is loaded (never limited)."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def health(request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    @asynccontextmanager
    async def lifespan(app):
        yield
        handler.close()  # the last interval's request metrics

    name = handler.settings.name
    answer: Any = handler.__call__  # a bound method: starlette calls it with the Request
    limits = handler.settings.limits
    if limits:  # Ray Serve's overload contract: 503 past max_ongoing + max_queued requests
        from .admission import Admission

        answer = Admission(answer, limits.get("max_ongoing_requests"), limits.get("max_queued_requests")).__call__
    routes = [
        Route(f"/{name}", answer, methods=["POST", "GET"]),
        Route(f"/{name}/", answer, methods=["POST", "GET"]),
        Route(HEALTH_PATH, health, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
