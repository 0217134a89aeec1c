"""The connector's own AuthUser `<name>-connector`: a broker account used by its workers only
(worker_access.py)."""

from __future__ import annotations

from typing import Any

from mqtt_operator.resources.identity import ConnectorIdentity
from mqtt_operator.resources.worker_access import worker_user
from mqtt_operator.resources.worker_names import connector_worker_names


def connector_user(identity: ConnectorIdentity, instance: str) -> dict[str, Any]:
    return worker_user(identity, connector_worker_names(identity.namespace, identity.name), instance)
