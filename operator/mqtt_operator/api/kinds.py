"""The six custom resource kinds: group, version and names, in one place."""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "mqtt-operator.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Annotation that stops reconciling one object until it is removed or set to anything but "true".
PAUSE_ANNOTATION = f"{GROUP}/pause-reconciliation"
FINALIZER = f"{GROUP}/finalizer"


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short_name: str

    @property
    def api_version(self) -> str:
        return API_VERSION


MQTT_INSTANCE = Kind("MqttInstance", "mqttinstances", "mqi")
AUTH_USER = Kind("AuthUser", "authusers", "mqu")
ACL_POLICY = Kind("AclPolicy", "aclpolicies", "mqacl")
KAFKA_CONNECTOR = Kind("KafkaConnector", "kafkaconnectors", "mqkc")
REPLICATION_TASK = Kind("ReplicationTask", "replicationtasks", "mqrt")
FUNCTION_TRIGGER = Kind("FunctionTrigger", "functiontriggers", "mqft")

ALL_KINDS: tuple[Kind, ...] = (
    MQTT_INSTANCE,
    AUTH_USER,
    ACL_POLICY,
    KAFKA_CONNECTOR,
    REPLICATION_TASK,
    FUNCTION_TRIGGER,
)
