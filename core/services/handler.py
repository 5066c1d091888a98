"""The HTTP contract of a service, one implementation for every backend.

``ServiceHandler(settings)`` loads the function's handler once (a class named as the handler is
instantiated here, once per replica, with ``__init__(self, ctx)``) and answers each request:

- the JSON body is the parameters, checked and converted by the handler's type hints exactly as a
  run's are (``shoal.params``); a body that is not a JSON object, or a bad parameter, is HTTP 422
  ``{"error", "message", "field", "request_id"}``;
- the return value is the JSON answer (a value JSON cannot hold is a 500);
- an exception in the handler is HTTP 500 ``{"error": type, "message", "request_id"}``.

The local backend mounts it in a starlette app; on Ray it is the Serve deployment's ``__call__``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..context import Context, to_json_value
from ..error_records import error_record
from ..errors import ParamError, ServiceSpecError, ShoalError
from ..params import bind, function_label, handler_params, signature_of
from ..secrets import mask_data

if TYPE_CHECKING:  # pragma: no cover
    from starlette.requests import Request
    from starlette.responses import Response

    from ..function import Function
    from ..project import Project
    from .metrics import MetricsTarget, RequestMetrics

log = logging.getLogger("shoal.services")

REQUEST_ID_HEADER = "x-request-id"
CLASS_METHODS = ("__call__", "predict")  # what a class handler is called through, in this order


@dataclass
class ServiceSettings:
    """What a replica needs: the function (its code travels with it), the service's name, its
    project and artifact location, where request metrics go (None: not recorded), and the
    environment a replica runs in: the function's plain ``env`` and its resolved secret values
    (``shoal.secrets``; they travel here, never in a record, a log or Ray's options), and the overload
    limits the local server applies (``shoal.services.admission``; on Ray, Serve's proxy applies them)."""

    function: Function
    name: str
    project: str = "default"
    artifact_url: str | None = None
    metrics: MetricsTarget | None = None
    env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    limits: dict[str, int] = field(default_factory=dict)  # max_ongoing/queued_requests (local backend)

    @classmethod
    def in_project(cls, fn: Function, project: Project, name: str, **options: Any) -> ServiceSettings:
        """The settings of service ``name`` of ``fn`` deployed from ``project`` (any backend): the
        project's artifacts, and request metrics recorded in its database; ``options``: the rest."""
        from .metrics import MetricsTarget

        metrics = MetricsTarget(project.database, project.name, name, fn.hash)
        return cls(
            function=fn, name=name, project=project.name, artifact_url=project.artifacts_url, metrics=metrics, **options
        )


def apply_environment(settings: ServiceSettings) -> None:
    """Set the replica's environment variables in this process, which serves this one replica
    (the local server process, or a Ray Serve replica's actor process)."""
    os.environ.update(settings.env)
    os.environ.update(settings.secrets)


def _context(settings: ServiceSettings, uid: str, params: dict[str, Any]) -> Context:
    store = None
    if settings.artifact_url:
        from ..execution import artifact_store

        store = artifact_store(settings.artifact_url)
    prefix = f"{settings.project}/services/{settings.name}/{uid}"
    return Context(
        uid=uid,
        function=settings.function.name,
        params=params,
        project=settings.project,
        artifact_store=store,
        artifact_prefix=prefix,
        secrets=settings.secrets,  # ctx.get_secret(key), as in runs
    )


def load_target(settings: ServiceSettings, replica: str) -> Callable[..., Any]:
    """The callable each request calls: the function itself, or the method of an instance made
    once here when the handler names a class."""
    target: Any = settings.function.callable
    if not inspect.isclass(target):
        return target
    method = next((m for m in CLASS_METHODS if m in vars(target) or _inherited(target, m)), None)
    if method is None:
        raise ServiceSpecError(
            f"class handler {target.__name__} has neither __call__ nor predict; define one of them to answer requests"
        )
    make: Callable[..., Any] = target
    init_params = list(inspect.signature(target.__init__).parameters.values())[1:]
    if init_params:  # __init__(self, ctx): the replica's context, to load a model once
        instance = make(_context(settings, f"replica-{replica}", {}))
    else:
        instance = make()
    return getattr(instance, method)


def _inherited(cls: type, name: str) -> bool:
    """A method a user base class defines (not ``object``/``type`` defaults)."""
    return any(name in vars(base) for base in cls.__mro__[1:-1])


class RequestTimeout(Exception):
    """A request ran past the function's timeout."""


class ServiceHandler:
    """One replica's handler: loaded once, called per request (see the module's docstring)."""

    def __init__(self, settings: ServiceSettings, replica: str | None = None) -> None:
        self.settings = settings
        self.replica = replica or uuid.uuid4().hex[:12]
        fn = settings.function
        self._label = function_label(fn.name, fn.handler)
        self._defaults = dict(fn.spec.defaults)
        self._timeout = fn.spec.timeout
        self._target = load_target(settings, self.replica)  # a constructor's error fails the deployment
        self._signature = signature_of(self._target)
        self._is_async = inspect.iscoroutinefunction(self._target)
        self._secret_values = tuple(settings.secrets.values())  # masked in answers and error records
        self.metrics: RequestMetrics | None = None
        if settings.metrics is not None:
            from .metrics import RequestMetrics

            self.metrics = RequestMetrics(settings.metrics, self.replica)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()

    def parameters(self, body: bytes) -> dict[str, Any]:
        """The request body as the handler's keyword arguments (``ParamError`` when it does not fit)."""
        if body.strip():
            try:
                given = json.loads(body)
            except ValueError as exc:
                raise ParamError(f"the request body is not JSON ({exc}); send a JSON object of parameters") from None
        else:
            given = {}
        if not isinstance(given, dict):
            raise ParamError(
                f"the request body must be a JSON object of parameters, got {type(given).__name__}; "
                'send e.g. {"x": [1.0, 2.0]}'
            )
        checked = bind(self._target, given, defaults=self._defaults, handler=self._label)
        return handler_params(self._target, checked)

    async def __call__(self, request: Request) -> Response:
        started = time.perf_counter()
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        failure: dict[str, Any] | None = None
        status = 500
        try:
            try:
                kwargs = self.parameters(await request.body())
            except ParamError as exc:
                failure = {"type": "ParamError", "message": str(exc), "traceback": ""}
                answer: dict[str, Any] = {"error": "ParamError", "message": str(exc), "request_id": request_id}
                found = re.search(r"(?:parameter|input) '([^']+)'", str(exc))
                answer["field"] = found.group(1) if found else None
                status = 422
                return self._json(answer, status, request_id)
            try:
                value = await self._timed(kwargs, request_id)
                ok, converted = to_json_value(value)
                if not ok:
                    raise TypeError(
                        f"the handler returned {type(value).__name__}, which JSON cannot hold; return JSON values "
                        "(dict, list, str, numbers, bool, None)"
                    )
            except RequestTimeout as exc:
                failure = {"type": "TimeoutError", "message": str(exc), "traceback": ""}
                status = 408
                return self._json(
                    {"error": "TimeoutError", "message": str(exc), "request_id": request_id}, status, request_id
                )
            except Exception as exc:  # noqa: BLE001 - the user's code: its error is the answer
                record = error_record(exc, str(exc) if isinstance(exc, ShoalError) else None)
                failure = {"type": record["type"], "message": record["message"], "traceback": record["traceback"]}
                status = 500
                answer = {"error": record["type"], "message": record["message"], "request_id": request_id}
                return self._json(answer, status, request_id)
            status = 200
            return self._json(converted, status, request_id)
        finally:
            if self.metrics is not None:
                if failure is not None:
                    failure["request_id"] = request_id
                    if self._secret_values:
                        failure = mask_data(failure, self._secret_values)
                self.metrics.observe(time.perf_counter() - started, status, failure)

    async def _timed(self, kwargs: dict[str, Any], request_id: str) -> Any:
        """The call, bounded by the function's ``timeout`` (HTTP 408 past it, as Ray's
        ``request_timeout_s``; a sync handler's thread finishes on its own)."""
        if self._timeout is None:
            return await self._call(kwargs, request_id)
        try:
            return await asyncio.wait_for(self._call(kwargs, request_id), self._timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"the request exceeded the function's timeout of {self._timeout:g} s") from None

    async def _call(self, kwargs: dict[str, Any], request_id: str) -> Any:
        target = self._target
        if self._signature.context_param is not None:
            ctx = _context(self.settings, request_id, kwargs)
            if self._is_async:
                return await target(ctx, **kwargs)
            from starlette.concurrency import run_in_threadpool

            return await run_in_threadpool(target, ctx, **kwargs)
        if self._is_async:
            return await target(**kwargs)
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(target, **kwargs)

    def _json(self, value: Any, status: int, request_id: str) -> Response:
        if self._secret_values:  # an error message or a result may quote a secret, as in runs
            value = mask_data(value, self._secret_values)
        return json_response(value, status, request_id)


def json_response(value: Any, status: int, request_id: str) -> Response:
    from starlette.responses import Response

    body = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    return Response(body, status_code=status, media_type="application/json", headers={REQUEST_ID_HEADER: request_id})
