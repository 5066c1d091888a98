"""Loading the Kubernetes client configuration: a kubeconfig, or the in-cluster service account.

Without either, the error is one line that names what was tried and how to fix it.
"""

from __future__ import annotations

import os

from shoal.errors import KubernetesError

IN_CLUSTER_ENV = "KUBERNETES_SERVICE_HOST"


def kubeconfig_path() -> str:
    return os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")


def load_config(context: str | None = None) -> str:
    """Load the client configuration (kubeconfig first, then in-cluster); returns which one."""
    try:
        from kubernetes import config
    except ImportError:
        raise KubernetesError(
            "Kubernetes backends need the kubernetes client: pip install 'shoal[kubernetes]'"
        ) from None
    paths = [p for p in kubeconfig_path().split(os.pathsep) if p]
    if any(os.path.exists(p) for p in paths):
        try:
            config.load_kube_config(config_file=kubeconfig_path(), context=context)  # read now, not at import
            return "kubeconfig"
        except Exception as exc:  # noqa: BLE001 - a broken kubeconfig: say which and why
            raise KubernetesError(f"cannot load the kubeconfig {os.pathsep.join(paths)}: {first_line(exc)}") from None
    if os.environ.get(IN_CLUSTER_ENV):
        try:
            config.load_incluster_config()
            return "in-cluster"
        except config.ConfigException as exc:
            raise KubernetesError(f"cannot load the in-cluster Kubernetes configuration: {exc}") from None
    raise KubernetesError(
        f"no Kubernetes cluster configured: no kubeconfig at {os.pathsep.join(paths)} (KUBECONFIG, default "
        f"~/.kube/config) and not running in a cluster ({IN_CLUSTER_ENV} unset); point KUBECONFIG at your "
        f"cluster's kubeconfig (e.g. `gcloud container clusters get-credentials`, `aws eks update-kubeconfig`) "
        f"or run shoal inside the cluster"
    )


def first_line(exc: BaseException) -> str:
    """The exception's type and first line: how a refusal of the client or the API server reads in
    a one-line error."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def current_namespace(default: str = "default") -> str:
    """The namespace of the kubeconfig's current context, or of the in-cluster service account."""
    try:
        from kubernetes import config

        _, context = config.list_kube_config_contexts(config_file=kubeconfig_path())
        return (context or {}).get("context", {}).get("namespace") or default
    except Exception:  # noqa: BLE001 - no kubeconfig: in-cluster
        try:
            with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as handle:
                return handle.read().strip() or default
        except OSError:
            return default
