"""Overload on the local backend: Ray Serve's ``max_ongoing_requests`` / ``max_queued_requests``
contract in one process.

At most ``max_ongoing`` requests run at once; up to ``max_queued`` more wait for a slot (-1: no
limit); past both, a request is answered at once with HTTP 503
``{"error": "Overloaded", "message", "request_id"}`` and never reaches the handler (on Ray, the
proxy rejects it before any replica sees it, so neither backend counts it in request metrics).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .config import NO_QUEUE_LIMIT, RAY_DEFAULT_MAX_ONGOING

if TYPE_CHECKING:  # pragma: no cover
    from starlette.requests import Request
    from starlette.responses import Response

Endpoint = Callable[["Request"], Awaitable["Response"]]


class Admission:
    """Admits requests to ``endpoint`` within the limits; runs on the server's one event loop."""

    def __init__(self, endpoint: Endpoint, max_ongoing: int | None, max_queued: int | None) -> None:
        self.endpoint = endpoint
        self.max_ongoing = max_ongoing if max_ongoing is not None else RAY_DEFAULT_MAX_ONGOING
        self.max_queued = max_queued if max_queued is not None else NO_QUEUE_LIMIT
        self.queued = 0
        self._slots: asyncio.Semaphore | None = None  # made on the serving loop, at the first request

    async def __call__(self, request: Request) -> Response:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_ongoing)
        slots = self._slots
        if slots.locked():
            if self.max_queued != NO_QUEUE_LIMIT and self.queued >= self.max_queued:
                return self._overloaded(request)
            self.queued += 1
            try:
                await slots.acquire()
            finally:
                self.queued -= 1
        else:
            await slots.acquire()
        try:
            return await self.endpoint(request)
        finally:
            slots.release()

    def _overloaded(self, request: Request) -> Response:
        from .handler import REQUEST_ID_HEADER, json_response

        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        message = (
            f"the service is overloaded: {self.max_ongoing} requests running and {self.queued} queued "
            f"(max_ongoing_requests={self.max_ongoing}, max_queued_requests={self.max_queued}); retry later"
        )
        return json_response({"error": "Overloaded", "message": message, "request_id": request_id}, 503, request_id)
