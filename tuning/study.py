"""Opening a search's study: create it, or resume it only when it was run with the same search.

A study records its space, objective and project as user attributes the first time; a later search
under the same name must match them (and the directions), else it would mix incomparable trials.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, cast

from shoal.errors import TuningError

from . import wording

if TYPE_CHECKING:  # pragma: no cover
    from .options import Settings
    from .storage import StorageRef

ATTR_SPACE = "shoal:space"
ATTR_OBJECTIVE = "shoal:objective"
ATTR_PROJECT = "shoal:project"


def open_study(settings: Settings, storage: Any, ref: StorageRef, project: str) -> Any:
    """The ``optuna.Study`` named by ``settings`` in ``storage``, created or checked to match."""
    import optuna

    # Objective holds only Optuna's two direction names (``direction_name`` normalises them).
    directions = cast("list[Literal['minimize', 'maximize']]", list(settings.objective.directions))
    study = optuna.create_study(
        storage=storage,
        study_name=settings.study_name,
        sampler=settings.plan.sampler,
        pruner=settings.pruner,
        directions=directions,
        load_if_exists=True,
    )
    signature = settings.space.signature()
    selectors = settings.objective.selectors()
    attrs = study.user_attrs
    found = [d.name.lower() for d in study.directions]
    if found != directions:
        raise _mismatch(settings.study_name, ref, "objective directions", found, directions)
    if ATTR_OBJECTIVE in attrs and attrs[ATTR_OBJECTIVE] != selectors:
        raise _mismatch(settings.study_name, ref, "objective", attrs[ATTR_OBJECTIVE], selectors)
    if ATTR_SPACE in attrs and attrs[ATTR_SPACE] != signature:
        raise _mismatch(settings.study_name, ref, "search space", _shown(attrs[ATTR_SPACE]), _shown(signature))
    if ATTR_PROJECT in attrs and attrs[ATTR_PROJECT] != project:
        raise TuningError(
            f"study {settings.study_name!r} in {ref.describe()} belongs to project {attrs[ATTR_PROJECT]!r}; "
            f"give {wording.option('study')} another name"
        )
    for key, value in ((ATTR_SPACE, signature), (ATTR_OBJECTIVE, selectors), (ATTR_PROJECT, project)):
        if key not in attrs:
            study.set_user_attr(key, value)
    return study


def _mismatch(name: str, ref: StorageRef, what: str, stored: Any, given: Any) -> TuningError:
    return TuningError(
        f"study {name!r} in {ref.describe()} was run with a different {what} "
        f"(stored: {stored}; given: {given}); give {wording.option('study')} a new name, or delete the "
        f"old study and its trials ({wording.delete_study(name)})"
    )


def _shown(signature: Mapping[str, Any]) -> str:
    parts = []
    for name, dist in signature.items():
        attrs = dist.get("attributes", {})
        parts.append(f"{name}={dist.get('name', '?').replace('Distribution', '')}{attrs}")
    return "; ".join(parts) or "empty"
