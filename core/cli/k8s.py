"""``shoal k8s render``: a function's Kubernetes manifests on stdout, for ``kubectl apply -f -`` or
review in CI. Every object is validated before it is printed; nothing is printed if one fails."""

from __future__ import annotations

import json

import typer

k8s_app = typer.Typer(
    help="Kubernetes manifests of functions (dask-kubernetes, KubeRay, Jobs, RayService).", no_args_is_help=True
)
ENGINES = ("dask", "ray", "job", "serve")


@k8s_app.command("render")
def render(
    target: str = typer.Argument(..., help="FILE.py:HANDLER, or a function NAME[:tag|@hash]."),
    engine: str = typer.Option(
        ...,
        "--engine",
        "-e",
        help="dask (DaskCluster + DaskAutoscaler), ray (RayCluster), job, or serve (a RayService serving it over HTTP).",
    ),
    output: str = typer.Option("yaml", "--output", "-o", help="yaml (multi-document) or json (a List)."),
    namespace: str | None = typer.Option(None, "--namespace", "-n", help="Namespace to put in the manifests."),
    spot_provider: str | None = typer.Option(
        None, "--spot-provider", help="Spot node labels/taints of: gke (default), eks, aks, karpenter."
    ),
    run: str | None = typer.Option(None, "--run", help="job: the uid of a pending run (default: record a new one)."),
    param: list[str] = typer.Option([], "--param", "-p", help="job: parameter key=value of the new run (repeatable)."),
    service: str | None = typer.Option(
        None, "--name", help="serve: the service's name, its route /NAME (default: the function's name)."
    ),
) -> None:
    """Print the manifests of a function for an engine (exit 2 if they do not validate)."""
    from shoal.backends.kubernetes import render as render_objects
    from shoal.errors import ParamError

    from .targets import load_target as _load_target
    from .targets import open_project as _project
    from .targets import pairs as _pairs

    if engine not in ENGINES:
        raise ParamError(f"--engine {engine!r}: use dask, ray or job, or serve (a RayService)")
    if output not in ("yaml", "json"):
        raise ParamError(f"--output {output!r}: use yaml or json")
    if engine != "job" and (run or param):
        raise ParamError("--run and --param are for --engine job")
    if engine != "serve" and service:
        raise ParamError("--name is for --engine serve")
    fn = _load_target(target)
    project = _project()
    uid = None
    if engine == "job":
        from shoal.backends.kubernetes.reachability import check_project

        check_project(project, what="a Kubernetes Job")  # before a run is recorded
        uid = run or record_pending_run(fn, project, _pairs(param, "--param"))
    if engine == "serve":
        from shoal.backends.kubernetes.serve import ray_service

        objects = [ray_service(fn, service=service, namespace=namespace, project=project.name, spot=spot_provider)]
    else:
        objects = render_objects(fn, engine, namespace=namespace, project=project, spot=spot_provider, run=uid)
    if output == "json":
        typer.echo(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2))
    else:
        from shoal.backends.kubernetes.serve import block_yaml

        typer.echo(block_yaml(objects, all_documents=True), nl=False)


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
