"""Spot placement: where a function's pods may land relative to spot (preemptible) nodes.

Each provider marks spot nodes with a label, and some also taint them so that only pods that
tolerate the taint land there:

==========  ===========================================  ===============================================
provider    node label                                   taint
==========  ===========================================  ===============================================
``gke``     ``cloud.google.com/gke-spot=true``            ``cloud.google.com/gke-spot=true:NoSchedule``
``eks``     ``eks.amazonaws.com/capacityType=SPOT``       none by default (managed node groups)
``aks``     ``kubernetes.azure.com/scalesetpriority=spot`` ``kubernetes.azure.com/scalesetpriority=spot:NoSchedule``
``karpenter`` ``karpenter.sh/capacity-type=spot``         none by default
==========  ===========================================  ===============================================

The default is ``gke`` (set ``SHOAL_K8S_SPOT_PROVIDER`` or pass ``spot=SpotConfig(...)`` /
``spot="eks"`` to the render functions for another). ``spot="require"`` renders a required node
affinity on the label plus a toleration of the taint; ``"prefer"`` a preferred affinity (weight 100)
plus the toleration; ``"none"`` renders nothing, unless the configuration names an on-demand label
(e.g. EKS ``eks.amazonaws.com/capacityType=ON_DEMAND``), which then becomes a required affinity.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

from shoal.errors import ManifestError


@dataclass(frozen=True)
class SpotConfig:
    """How spot nodes are recognised (label) and kept apart (taint) on one cluster."""

    label_key: str
    label_value: str
    taint_key: str | None = None
    taint_value: str | None = None
    taint_effect: str = "NoSchedule"
    #: With ``spot="none"``: a label that on-demand nodes carry, required when set.
    on_demand_label: tuple[str, str] | None = None


PROVIDERS: dict[str, SpotConfig] = {
    "gke": SpotConfig("cloud.google.com/gke-spot", "true", "cloud.google.com/gke-spot", "true"),
    "eks": SpotConfig("eks.amazonaws.com/capacityType", "SPOT"),
    "aks": SpotConfig("kubernetes.azure.com/scalesetpriority", "spot", "kubernetes.azure.com/scalesetpriority", "spot"),
    "karpenter": SpotConfig("karpenter.sh/capacity-type", "spot"),
}
DEFAULT_PROVIDER = "gke"
PROVIDER_ENV = "SHOAL_K8S_SPOT_PROVIDER"


def spot_config(spot: SpotConfig | str | None = None) -> SpotConfig:
    """The configuration given, a provider's by name, or the default (``SHOAL_K8S_SPOT_PROVIDER``)."""
    if isinstance(spot, SpotConfig):
        return spot
    name = spot or os.environ.get(PROVIDER_ENV) or DEFAULT_PROVIDER
    try:
        return PROVIDERS[name]
    except KeyError:
        raise ManifestError(
            f"unknown spot provider {name!r}; use one of {', '.join(PROVIDERS)} or a SpotConfig(label_key=..., ...)"
        ) from None


def spot_tolerations(mode: str, config: SpotConfig) -> list[Any]:
    """The toleration of the spot taint (as a ``V1Toleration``) when spot nodes may be used."""
    from kubernetes.client import V1Toleration

    if mode == "none" or not config.taint_key:
        return []
    operator = "Equal" if config.taint_value else "Exists"
    return [V1Toleration(key=config.taint_key, operator=operator, value=config.taint_value, effect=config.taint_effect)]


def spot_affinity(mode: str, config: SpotConfig) -> dict[str, Any] | None:
    """The node affinity of a spot mode, serialised (merged into the user's affinity later)."""
    from kubernetes.client import (
        ApiClient,
        V1NodeAffinity,
        V1NodeSelector,
        V1NodeSelectorRequirement,
        V1NodeSelectorTerm,
        V1PreferredSchedulingTerm,
    )

    if mode == "none":
        if config.on_demand_label is None:
            return None
        key, value = config.on_demand_label
        term = V1NodeSelectorTerm(match_expressions=[V1NodeSelectorRequirement(key=key, operator="In", values=[value])])
        affinity = V1NodeAffinity(
            required_during_scheduling_ignored_during_execution=V1NodeSelector(node_selector_terms=[term])
        )
    else:
        expression = V1NodeSelectorRequirement(key=config.label_key, operator="In", values=[config.label_value])
        term = V1NodeSelectorTerm(match_expressions=[expression])
        if mode == "require":
            affinity = V1NodeAffinity(
                required_during_scheduling_ignored_during_execution=V1NodeSelector(node_selector_terms=[term])
            )
        elif mode == "prefer":
            affinity = V1NodeAffinity(
                preferred_during_scheduling_ignored_during_execution=[
                    V1PreferredSchedulingTerm(weight=100, preference=term)
                ]
            )
        else:
            raise ManifestError(f"invalid spot mode {mode!r}; use none, prefer or require")
    return ApiClient().sanitize_for_serialization(affinity)


def merge_affinity(user: dict[str, Any] | None, node_affinity: dict[str, Any] | None) -> dict[str, Any] | None:
    """The user's affinity (Kubernetes JSON, camelCase) with the spot node affinity added.

    Required node selector terms are ORed by Kubernetes, so the spot requirement is added to every
    term the user gave (ANDed within each), not as a term of its own.
    """
    if node_affinity is None:
        return copy.deepcopy(user) if user else None
    out = copy.deepcopy(user) if user else {}
    if not isinstance(out, dict):
        raise ManifestError("placement.affinity must be a mapping in Kubernetes form (nodeAffinity, podAffinity, ...)")
    target = out.setdefault("nodeAffinity", {})
    required_key = "requiredDuringSchedulingIgnoredDuringExecution"
    preferred_key = "preferredDuringSchedulingIgnoredDuringExecution"
    if required_key in node_affinity:
        extra = node_affinity[required_key]["nodeSelectorTerms"][0]["matchExpressions"]
        terms = target.setdefault(required_key, {}).setdefault("nodeSelectorTerms", [])
        if not terms:
            terms.append({"matchExpressions": []})
        for term in terms:
            term.setdefault("matchExpressions", []).extend(copy.deepcopy(extra))
    if preferred_key in node_affinity:
        target.setdefault(preferred_key, []).extend(node_affinity[preferred_key])
    return out
