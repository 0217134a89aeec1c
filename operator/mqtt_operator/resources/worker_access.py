"""An integration's own broker identity: the AuthUser and AclPolicy its workers (and only they) use.

No passwordSecretRef: the access sync generates the password into `<user>-credentials`, which the
workers read as MQTT_PASSWORD. Both are owned by the integration, so they go with it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from mqtt_operator.api.kinds import ACL_POLICY, AUTH_USER
from mqtt_operator.resources.identity import OwnerIdentity
from mqtt_operator.resources.worker_names import ACCESS_COMPONENT, WorkerNames

_PLACEHOLDER = re.compile(r"\{[^}]*\}")
# The AclPolicy CRD allows at most 32 topics per rule; an integration may list 64 filters.
TOPICS_PER_RULE = 32


def worker_user(identity: OwnerIdentity, names: WorkerNames, instance: str) -> dict[str, Any]:
    return {
        "apiVersion": AUTH_USER.api_version,
        "kind": AUTH_USER.kind,
        "metadata": identity.metadata(names.user, ACCESS_COMPONENT),
        "spec": {
            "instanceRef": {"name": instance},
            "description": f"used only by the workers of {identity.kind} {identity.name}",
        },
    }


def allow_rules(actions: Sequence[str], topics: Sequence[str]) -> list[dict[str, Any]]:
    """`allow actions on topics`, split into rules the CRD accepts."""
    return [
        {"effect": "allow", "actions": list(actions), "topics": list(topics[i : i + TOPICS_PER_RULE])}
        for i in range(0, len(topics), TOPICS_PER_RULE)
    ]


def publish_filter(template: str) -> str:
    """The ACL filter covering every topic a reply template can produce: a level holding a placeholder
    becomes `+`; from a `{topic}` placeholder on (any number of levels) the rest becomes `#`."""
    levels: list[str] = []
    for level in template.split("/"):
        if "{topic}" in level:
            levels.append("#")
            break
        levels.append("+" if _PLACEHOLDER.search(level) else level)
    return "/".join(levels)


def worker_policy(
    identity: OwnerIdentity, names: WorkerNames, instance: str, rules: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "apiVersion": ACL_POLICY.api_version,
        "kind": ACL_POLICY.kind,
        "metadata": identity.metadata(names.user, ACCESS_COMPONENT),
        "spec": {
            "instanceRef": {"name": instance},
            "users": [names.user],
            "rules": rules,
            "description": f"what the workers of {identity.kind} {identity.name} may do",
        },
    }
