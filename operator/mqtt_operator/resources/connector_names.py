"""The names a KafkaConnector's objects, broker identity, share group and workers go by; nothing else
spells them."""

from __future__ import annotations

import re

from mqtt_operator.resources.credentials_secret import generated_secret_name

# Component labels: the worker Pods and their objects; the connector's own AuthUser and AclPolicy.
BRIDGE_COMPONENT = "bridge"
ACCESS_COMPONENT = "broker-access"

# `<name>-bridge` names the StatefulSet, whose Pods carry `controller-revision-hash: <sts>-<10 chars>`,
# a label value of at most 63 characters: the StatefulSet name may have 52, the connector name 45.
MAX_NAME_LENGTH = 45
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def check_name(name: str) -> None:
    """Refuse a connector name its StatefulSet and Pods could not be named after (the CRD says the same)."""
    if len(name) > MAX_NAME_LENGTH or not _DNS_LABEL.match(name):
        raise ValueError(
            f"metadata.name {name!r} must be a DNS label of at most {MAX_NAME_LENGTH} characters starting "
            f"with a letter: it names the worker StatefulSet {name}-bridge and its Pods"
        )


def bridge_name(name: str) -> str:
    """The workers' ConfigMap and StatefulSet; the Pods are `<name>-bridge-<ordinal>`."""
    return f"{name}-bridge"


def connector_user_name(name: str) -> str:
    """The connector's own AuthUser and AclPolicy, and its broker username."""
    return f"{name}-connector"


def connector_credentials_name(name: str) -> str:
    """The Secret the AuthUser's generated password lands in (key `password`)."""
    return generated_secret_name(connector_user_name(name))


def share_group(namespace: str, name: str) -> str:
    """The workers subscribe as `$share/<group>/<filter>`."""
    return f"{namespace}.{name}"


def client_id_prefix(namespace: str, name: str) -> str:
    return f"{namespace}.{name}"


def replica_client_id(namespace: str, name: str, ordinal: int) -> str:
    """The MQTT client id of worker `ordinal`: `<prefix>-<Pod name>` (BridgeConfig's rule), stable
    across restarts because a StatefulSet Pod keeps its name."""
    return f"{client_id_prefix(namespace, name)}-{bridge_name(name)}-{ordinal}"


def default_consumer_group(namespace: str, name: str) -> str:
    return f"mqtt-operator.{namespace}.{name}"
