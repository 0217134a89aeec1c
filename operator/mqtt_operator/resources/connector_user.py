"""The connector's own AuthUser `<name>-connector`: a broker account used by its workers only.

No passwordSecretRef: the access sync generates the password into `<name>-connector-credentials`,
which the workers read as MQTT_PASSWORD. Owned by the KafkaConnector, so it goes with it.
"""

from __future__ import annotations

from typing import Any

from mqtt_operator.api.kinds import AUTH_USER
from mqtt_operator.resources.connector_names import ACCESS_COMPONENT, connector_user_name
from mqtt_operator.resources.identity import ConnectorIdentity


def connector_user(identity: ConnectorIdentity, instance: str) -> dict[str, Any]:
    return {
        "apiVersion": AUTH_USER.api_version,
        "kind": AUTH_USER.kind,
        "metadata": identity.metadata(connector_user_name(identity.name), ACCESS_COMPONENT),
        "spec": {
            "instanceRef": {"name": instance},
            "description": f"used only by the workers of KafkaConnector {identity.name}",
        },
    }
