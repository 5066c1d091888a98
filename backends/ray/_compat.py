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


__all__ = ["CLIENT_AUTH_PROBE_METHOD", "GCS_PROBE_METHOD", "available_resources_per_node", "raylet", "temp_dir_option"]
