"""Every Ray API outside Ray's public, stable surface that shoal relies on, in one place.

Each function here names what it relies on and is pinned by ``tests/test_ray_compat.py``, so a Ray
upgrade that changes it breaks one named test instead of a search through the backend. (Task
completion goes through the public ``ObjectRef.future()``, see ``shoal.backends.ray.future``.)
"""

from __future__ import annotations

from typing import Any

#: A GCS method that answers an empty request on a head's GCS port and that a Ray Client server does
#: not serve (it says UNIMPLEMENTED): how ``shoal.backends.ray.connect.probe`` tells the two apart
#: without ``ray.init``, which waits minutes on a bad address. An internal gRPC name of Ray's.
GCS_PROBE_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"

#: A method every Ray Client server serves behind its token check (an empty request is answered
#: without effect; an unknown method is UNIMPLEMENTED before the check, so GCS_PROBE_METHOD cannot
#: tell a wrong token): how ``connect.probe`` finds a refused token at once, not after Ray Client's
#: 30 s "connection timeout". An internal gRPC name of Ray's.
CLIENT_AUTH_PROBE_METHOD = "/ray.rpc.RayletDriver/ClusterInfo"


def raylet() -> Any:
    """Ray's compiled core (``ray._raylet``), where its token loader
    (``AuthenticationTokenLoader.instance().has_token / get_token_for_http_header``) and its cached
    config (``Config.initialize``) live: what Ray's own token-auth set-up calls. No type stubs."""
    import importlib

    return importlib.import_module("ray._raylet")


def temp_dir_option(path: str) -> dict[str, str]:
    """The ``ray.init`` option that puts a local instance's session folder under ``path`` (its logs,
    sockets, and the pipes shoal adds): ``_temp_dir``, underscored, and taken through ``**kwargs``."""
    return {"_temp_dir": path}


def available_resources_per_node() -> dict[str, dict[str, float]]:
    """Free resources per live node id, from Ray's own accounting; empty if this Ray lacks it.

    Ray's public API has the cluster's total (``ray.available_resources()``) and each node's total
    (``ray.nodes()``, ``ray.util.state.list_nodes``, which also needs the dashboard), but not what
    each node has free: that is ``ray._private.state.available_resources_per_node`` (a developer API).
    """
    try:
        from ray._private.state import available_resources_per_node as per_node

        return per_node()
    except Exception:  # noqa: BLE001 - a private API: callers degrade to "idle"
        return {}


class DirectRemote:
    """A Ray remote function with fixed options whose tasks after the first skip Ray's per-call
    option handling (measured: 25-35 us less of the driver's CPU per task, a map of 2,000 no-op runs).

    ``RemoteFunction._remote`` works out the same submission for every call with the same options
    (defaults, resources, placement, runtime env, the function's export), then calls an inner
    ``invocation(args, kwargs)`` that flattens the arguments and submits. Ray hands that inner
    function to the remote function's ``_decorator`` hook (what ``__ray_invocation_decorator__``
    sets); this keeps it and calls it directly for later tasks while the process's Ray connection
    (its core worker) is the one it was made on. Anything that makes a call differ per task uses
    the public path for every call: tracing (a span per call), Ray Client (no core worker here),
    a task launch hook, or a Ray without the hook.
    """

    def __init__(self, function: Any, options: dict[str, Any]):
        import ray
        import ray._private.worker as worker_module
        import ray.remote_function as remote_function
        from ray.util.tracing import tracing_helper

        self._public = ray.remote(function)
        self._remote = self._public.options(**options)
        self._worker = worker_module.global_worker
        self._script_mode = worker_module.SCRIPT_MODE
        self._module = remote_function
        self._tracing = tracing_helper
        self._invocation: Any = None
        self._core: Any = None  # the core worker the kept invocation submits through
        if hasattr(self._public, "_decorator") and self._public._decorator is None:
            self._public._decorator = self._keep

    def _keep(self, invocation: Any) -> Any:
        """Ray's hook, called inside each public ``.remote()`` with the call's inner function."""
        if self._invocation is None and self._direct_allowed():
            self._core = getattr(self._worker, "core_worker", None)  # first: a reader of the invocation sees it
            self._invocation = invocation
        return invocation

    def _direct_allowed(self) -> bool:
        """Whether every later call would be the same submission: a driver (a task inside Ray may
        capture placement groups), no tracing, no launch hook."""
        return (
            getattr(self._worker, "mode", None) == self._script_mode
            and self._module._task_launch_hook is None
            and not self._tracing._is_tracing_enabled()
        )

    def remote(self, *args: Any) -> Any:
        """Submit one task (positional arguments only, as Ray's ``.remote``); its ObjectRef."""
        invocation = self._invocation
        if invocation is not None and getattr(self._worker, "core_worker", None) is self._core:
            return invocation(args, {})
        self._invocation = None  # a new connection (or none yet): the public path, which keeps a new one
        return self._remote.remote(*args)


__all__ = [
    "CLIENT_AUTH_PROBE_METHOD",
    "GCS_PROBE_METHOD",
    "DirectRemote",
    "available_resources_per_node",
    "raylet",
    "temp_dir_option",
]
