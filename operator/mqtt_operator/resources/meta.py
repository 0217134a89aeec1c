"""Labels and metadata every owned object carries; the one place they are built."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mqtt_operator import __version__

MANAGED_BY = "mqtt-operator"


def labels(
    owner_kind: str,
    owner_name: str,
    component: str,
    user_labels: Mapping[str, str] | None = None,
    *,
    include_version: bool = True,
) -> dict[str, str]:
    """User labels first, then ours: a user label can never override `app.kubernetes.io/*`.

    `include_version=False` for Pod templates: a label that moves with every operator release would
    otherwise restart every Pod on an operator upgrade.
    """
    ours = {
        "app.kubernetes.io/name": owner_kind.lower(),
        "app.kubernetes.io/instance": owner_name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    if include_version:
        ours["app.kubernetes.io/version"] = __version__
    user = {k: v for k, v in (user_labels or {}).items() if not k.startswith("app.kubernetes.io/")}
    return {**user, **ours}


def selector_labels(owner_kind: str, owner_name: str, component: str) -> dict[str, str]:
    """The immutable subset used in selectors (no version: selectors must survive upgrades)."""
    return {
        "app.kubernetes.io/name": owner_kind.lower(),
        "app.kubernetes.io/instance": owner_name,
        "app.kubernetes.io/component": component,
    }


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """Make the custom resource the controller of an owned object (garbage collection in a cluster)."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
