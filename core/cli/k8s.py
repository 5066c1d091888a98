"""``shoal k8s render``: a function's Kubernetes manifests on stdout, for ``kubectl apply -f -`` or
review in CI. Every object is validated before it is printed; nothing is printed if one fails."""

from __future__ import annotations

import json
from typing import List, Optional

import typer

k8s_app = typer.Typer(help="Kubernetes manifests of functions (dask-kubernetes, KubeRay, Jobs).", no_args_is_help=True)


@k8s_app.command("render")
def render(
    target: str = typer.Argument(..., help="FILE.py:HANDLER, or a function NAME[:tag|@hash]."),
    engine: str = typer.Option(
        ..., "--engine", "-e", help="dask (DaskCluster + DaskAutoscaler), ray (RayCluster) or job."
    ),
    output: str = typer.Option("yaml", "--output", "-o", help="yaml (multi-document) or json (a List)."),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="Namespace to put in the manifests."),
    spot_provider: Optional[str] = typer.Option(
        None, "--spot-provider", help="Spot node labels/taints of: gke (default), eks, aks, karpenter."
    ),
    run: Optional[str] = typer.Option(None, "--run", help="job: the uid of a pending run (default: record a new one)."),
    param: List[str] = typer.Option([], "--param", "-p", help="job: parameter key=value of the new run (repeatable)."),
) -> None:
    """Print the manifests of a function for an engine (exit 2 if they do not validate)."""
    from shoal.backends.kubernetes import render as render_objects
    from shoal.errors import ParamError

    from .main import _load_target, _pairs, _project

    if engine not in ("dask", "ray", "job"):
        raise ParamError(f"--engine {engine!r}: use dask, ray or job")
    if output not in ("yaml", "json"):
        raise ParamError(f"--output {output!r}: use yaml or json")
    if engine != "job" and (run or param):
        raise ParamError("--run and --param are for --engine job")
    fn = _load_target(target)
    project = _project()
    uid = None
    if engine == "job":
        from shoal.backends.kubernetes.reachability import check_project

        check_project(project, what="a Kubernetes Job")  # before a run is recorded
        uid = run or record_pending_run(fn, project, _pairs(param, "--param"))
    objects = render_objects(fn, engine, namespace=namespace, project=project, spot=spot_provider, run=uid)
    if output == "json":
        typer.echo(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2))
    else:
        import yaml

        typer.echo(yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False), nl=False)


def record_pending_run(fn, project, params: dict) -> str:
    """Check the parameters, save the function version and record a pending run for a Job."""
    from shoal import backends
    from shoal.runner import Driver

    backend = backends.get("local")
    try:
        driver = Driver(fn, project, backend, resolve_secrets=False)  # the Job's pod gets them from Kubernetes
        bound = driver.check(params, None, from_text=True)
        project.functions.ensure_saved(fn)
        record = driver.new_record(bound, {})
        record["backend"] = "k8s-job"
        record["driver"] = None  # nobody drives it until the Job's `shoal worker run` claims it
        project.store.create_runs([record])
    finally:
        backend.close()
    typer.echo(f"recorded pending run {record['uid']}", err=True)
    return record["uid"]
