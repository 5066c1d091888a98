"""The Ray Serve application of a shoal service: the ``ShoalReplica`` deployment and
``app_builder``, the import path a KubeRay RayService names
(``shoal.backends.ray.serving:app_builder``).

``ShoalReplica.__call__`` is shoal's ``ServiceHandler``: the same HTTP contract as the local
backend. The function hash travels as the deployment's ``user_config`` (``HASH_KEY``), so the
deploying side (``shoal.backends.ray.serve_deploy``) sees which version a cluster serves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shoal.services.handler import ServiceHandler, ServiceSettings, apply_environment

from .serve_state import HASH_KEY

if TYPE_CHECKING:  # pragma: no cover
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["HASH_KEY", "ShoalReplica", "app_builder", "deployment_of"]


class ShoalReplica:
    """The Ray Serve deployment of every shoal service: loads the handler once per replica."""

    def __init__(self, settings: ServiceSettings) -> None:
        replica = None
        try:
            from ray import serve

            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - only a label for metrics
            pass
        apply_environment(settings)  # a replica is an actor process of its own
        self.handler = ServiceHandler(settings, replica=replica)

    def reconfigure(self, config: Mapping[str, Any]) -> None:
        """The user_config carries the function hash only (read by the deploying side)."""

    async def __call__(self, request: Request) -> Response:
        return await self.handler(request)

    def __del__(self) -> None:
        handler = getattr(self, "handler", None)
        if handler is not None:
            handler.close()


def deployment_of(settings: ServiceSettings, **options: Any) -> Any:
    """The Serve deployment of ``settings``'s function, named ``options["name"]``, bound to them."""
    from ray import serve

    replica: Any = serve.deployment(ShoalReplica)
    return replica.options(user_config={HASH_KEY: settings.function.hash}, **options).bind(settings)


def app_builder(args: Mapping[str, Any]) -> Any:
    """A Serve application from plain arguments, for a RayService's ``serveConfigV2``
    (``import_path: shoal.backends.ray.serving:app_builder``): ``function`` (``fn.to_dict()``),
    and optionally ``name``, ``project``, ``artifacts`` and ``database`` (where request metrics go).
    The deployment is named after the service, so ``serveConfigV2`` can set its autoscaling_config
    and ray_actor_options (``shoal.services.config``). Secret references are not resolved here: on
    Kubernetes the pods get them from Kubernetes secrets (``secretKeyRef``)."""
    from shoal.function import Function
    from shoal.services.config import check_service_name
    from shoal.services.metrics import MetricsTarget

    fn = Function.from_dict(args["function"])
    name = check_service_name(args.get("name") or fn.name)
    project = str(args.get("project") or "default")
    database = args.get("database")
    settings = ServiceSettings(
        function=fn,
        name=name,
        project=project,
        artifact_url=args.get("artifacts"),
        metrics=MetricsTarget(database, project, name, fn.hash) if database else None,
    )
    return deployment_of(settings, name=name)
