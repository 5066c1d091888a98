"""Every exception shoal raises, in one place.

Each error says which field or input is wrong and how to fix it; the CLI prints ``str(error)`` as one
line and exits non-zero.
"""

from __future__ import annotations


class ShoalError(Exception):
    """Base class of all shoal errors."""

    exit_code = 1


class SpecError(ShoalError, ValueError):
    """A function spec field is unknown or has an invalid value."""

    exit_code = 2


class CodeError(ShoalError):
    """The function's code cannot be found, read, parsed or loaded."""

    exit_code = 2


class ParamError(ShoalError, ValueError):
    """A run parameter is unknown, missing or cannot be converted to the handler's type hint."""

    exit_code = 2


class NotFoundError(ShoalError, LookupError):
    """A function, version, tag, run or artifact does not exist."""


class AmbiguousError(ShoalError, LookupError):
    """A hash or uid prefix matches more than one record."""


class StoreError(ShoalError):
    """The database cannot be opened, migrated or written."""


class ArtifactError(ShoalError):
    """An artifact cannot be written, read or packaged."""


class UnsupportedError(ShoalError, AttributeError):
    """A name another system's handlers use (an MLRun context method, a data item's write) that has
    no meaning in shoal; the message names the shoal way to do it. An AttributeError too, so
    ``hasattr`` and ``getattr(obj, name, default)`` see the name as absent."""


class ProjectError(ShoalError):
    """The project configuration (shoal.yaml) is invalid."""

    exit_code = 2


class BackendError(ShoalError):
    """An execution backend is unknown, misconfigured or unreachable."""


class UnknownBackendError(BackendError, ValueError):
    """A backend name or address that names no registered engine: bad input, not a failure."""

    exit_code = 2


class ScalingError(BackendError, ValueError):
    """Bounds given to ``Backend.scale``/``Backend.adapt`` that no engine could take: bad input."""

    exit_code = 2


class RegistryError(BackendError, ValueError):
    """A backend name registered already, to another class, without ``clobber=True``."""

    exit_code = 2


class SecretError(ShoalError):
    """A secret reference of a function's env cannot be resolved, or the secrets file is unusable."""

    exit_code = 2


class RunFailedError(ShoalError):
    """A run ended in a failed or cancelled state (raised by ``Run.raise_for_state()``)."""

    def __init__(self, message: str, run=None):
        super().__init__(message)
        self.run = run


class RunTimeoutError(ShoalError, TimeoutError):
    """A run exceeded its ``timeout``, or a wait on a run handle timed out."""


class RunCancelledError(BaseException):
    """Raised inside a running handler to stop it when its run is cancelled.

    A BaseException (like ``asyncio.CancelledError``) so a handler's ``except Exception:`` does not
    swallow the cancellation.
    """


class WorkerLostError(ShoalError):
    """The worker executing a run died before the run ended."""


class KubernetesError(BackendError):
    """Kubernetes is not configured or not reachable, or refused an object shoal created."""


class ManifestError(ShoalError, ValueError):
    """A Kubernetes object rendered from a function does not validate, or the function cannot be
    rendered (e.g. a GPU request that differs from its limit)."""

    exit_code = 2


class TuningError(ShoalError):
    """A tuning search cannot start or go on: a bad objective, strategy, pruner, storage or study."""

    exit_code = 2


class SearchFailedError(TuningError):
    """A search ended without one completed or pruned trial: every trial it ran failed. The
    search itself was valid, so this is a failure (exit 1), not bad input; ``result`` holds the
    ``TuneResult`` (trials, their errors, the parent run)."""

    exit_code = 1

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


class ShoalWarning(UserWarning):
    """Something asked for can be done only in part (e.g. more trials in flight than the function's
    replicas allow); the command line prints these as ``warning:`` lines."""


class SpaceError(TuningError, ValueError):
    """A search-space entry is invalid (low > high, log with low <= 0, empty choices, bad syntax)."""


class ObjectiveMissingError(ShoalError, KeyError):
    """A trial's run ended without logging the objective key (the trial fails; the search goes on)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class UnreachableStorageError(KubernetesError):
    """A project database or artifact store that pods cannot reach (SQLite, a local folder) was
    given to a Kubernetes backend or Job."""

    exit_code = 2


class UncacheableError(ShoalError):
    """A step's parameters or inputs hold a value with no stable content hash (an arbitrary object),
    so it has no cache key: the step runs without caching, and the reason is logged."""


class PipelineError(ShoalError, ValueError):
    """A pipeline is wired wrongly: a reference to a handle of another pipeline run, a cycle, a
    step submitted outside a running pipeline's body."""

    exit_code = 2


class MissingOutputError(PipelineError, KeyError):
    """A step references an output (result or artifact key) its producer never logged; the message
    names the key, the producer and the keys it did log."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ServiceError(ShoalError):
    """A service cannot be deployed, reached or deleted, or answered a request with an HTTP error:
    ``status`` is the HTTP status (None when no answer came), ``body`` its parsed JSON (or text),
    ``state`` the engine's state when a deployment failed (Ray Serve's ``DEPLOY_FAILED``)."""

    def __init__(self, message: str, *, status: int | None = None, body=None, state: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = body
        self.state = state


class ServiceSpecError(ServiceError, ValueError):
    """Bad input to ``deploy``: a backend that cannot serve, a port in use, unknown scaling knobs, a
    class handler without ``__call__`` or ``predict``."""

    exit_code = 2


class HubError(ShoalError):
    """A function hub cannot be used: base class of the hub's errors (``shoal.hub``)."""


class HubReferenceError(HubError, ValueError):
    """A ``hub://[source/]name[:version][@hash]`` reference that does not parse."""

    exit_code = 2


class HubSourceError(HubError, ValueError):
    """An unknown hub source, a ``hubs:`` entry of shoal.yaml that is invalid, or a function name
    found in two sources without a source prefix."""

    exit_code = 2


class HubNotFoundError(HubError, NotFoundError):
    """A function or version that a hub's index does not list."""


class HubIndexError(HubError):
    """A hub's ``index.json`` is missing, not JSON, or not schema 1."""


class HubUnreachableError(HubError):
    """A hub's files cannot be read (a missing folder, a refused connection, no answer in time)."""


class HubVerificationError(HubError):
    """Fetched bytes or a rebuilt function differ from the index or the ``@hash`` pin; nothing was saved."""


class HubCompatibilityError(HubError):
    """A hub function's ``requires_shoal`` excludes this shoal version."""


class HubPublishError(HubError, ValueError):
    """A publish refused: an existing version with other content, a bad version string."""

    exit_code = 2
