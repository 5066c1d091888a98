"""A batch/v1 Job that executes one recorded run and records its outcome.

The run is recorded (pending) by whoever renders the Job; the Job's pod runs
``shoal worker run <uid>``, which loads the function version by hash from the project's database,
executes the run and records it there. So the pod needs the database and the artifact store: both
must be reachable from the cluster (a SQLite file or a local folder is refused), and the database
URL can come from a secret (``database={"secret": name, "key": key}``) instead of the manifest.
"""

from __future__ import annotations

from typing import Any

from shoal.errors import ManifestError

from . import naming
from .pods import pod_template
from .reachability import check_reachable
from .validation import validate

DATABASE_ENV, ARTIFACTS_ENV, PROJECT_ENV = "SHOAL_DATABASE", "SHOAL_ARTIFACTS", "SHOAL_PROJECT_NAME"
TTL_AFTER_FINISHED = 3600  # seconds the finished Job (and its pod's logs) is kept
DEADLINE_GRACE = 300  # seconds added to timeout x attempts for pulling the image and installing


def job(
    fn,
    run: Any,
    *,
    project: Any = None,
    database: Any = None,
    artifacts: str | None = None,
    namespace: str | None = None,
    spot: Any = None,
    ttl_seconds_after_finished: int | None = TTL_AFTER_FINISHED,
) -> dict[str, Any]:
    """The Job (validated) that runs the recorded run ``run`` (a Run, a run record or a uid) of ``fn``.

    ``project``: a Project (default: the current one) giving the project name, database and
    artifact URLs; ``database`` (a URL or a ``{secret:, key:}`` reference) and ``artifacts`` override it.
    """
    from kubernetes.client import ApiClient, V1Job, V1JobSpec, V1ObjectMeta

    from shoal.spec import SecretRef

    uid = run if isinstance(run, str) else getattr(run, "uid", None)
    if not uid:
        raise ManifestError(f"job() needs a recorded run (a Run or its uid), got {run!r}")
    if project is None:
        from shoal.project import current_project

        project = current_project()
    database = database if database is not None else project.database
    artifacts = artifacts if artifacts is not None else project.artifacts_url
    if isinstance(database, dict):
        database = SecretRef(**database)
    check_reachable(None if isinstance(database, SecretRef) else database, artifacts, what="a Kubernetes Job")
    env = {DATABASE_ENV: database, ARTIFACTS_ENV: artifacts, PROJECT_ENV: project.name}
    template = pod_template(
        fn,
        "job",
        project=project.name,
        spot=spot,
        container_name="run",
        args=["shoal", "worker", "run", uid],
        env=env,
        restart_policy="Never",
        labels={naming.RUN_LABEL: uid},
    )
    deadline = None
    if fn.spec.timeout is not None:
        deadline = int(fn.spec.timeout * (fn.spec.retries + 1)) + DEADLINE_GRACE
    body = V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=V1ObjectMeta(
            name=f"shoal-run-{uid}"[:63],
            namespace=namespace,
            labels={**naming.labels(fn, "job", project.name), naming.RUN_LABEL: uid},
            annotations=naming.annotations(fn),
        ),
        # shoal retries inside the pod (the function's `retries`); Kubernetes must not run it again.
        spec=V1JobSpec(
            backoff_limit=0,
            active_deadline_seconds=deadline,
            ttl_seconds_after_finished=ttl_seconds_after_finished,
            # the rendered (validated) dict: sanitize_for_serialization below passes dicts through
            template=template,  # type: ignore[arg-type]
        ),
    )
    return validate(ApiClient().sanitize_for_serialization(body))
