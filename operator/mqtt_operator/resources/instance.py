"""Every object one MqttInstance owns, built together and listed in the order they are applied."""

from __future__ import annotations

from typing import Any

from mqtt_operator.api.instance import MqttInstanceSpec
from mqtt_operator.resources.admin_secret import PasswordGenerator, admin_secret, generate_password
from mqtt_operator.resources.broker_config import broker_config_map, config_hash
from mqtt_operator.resources.identity import InstanceIdentity
from mqtt_operator.resources.mosquitto_conf import IN_POD_PATHS, BrokerPaths
from mqtt_operator.resources.network_policy import network_policy
from mqtt_operator.resources.services import client_service, headless_service
from mqtt_operator.resources.statefulset import statefulset


def build_instance_objects(
    identity: InstanceIdentity,
    spec: MqttInstanceSpec,
    *,
    admin_password: str | None,
    generate: PasswordGenerator = generate_password,
    operator_namespace: str | None = None,
    paths: BrokerPaths = IN_POD_PATHS,
) -> list[dict[str, Any]]:
    """Secret, ConfigMap, Services, StatefulSet, then the NetworkPolicy when enabled.

    What the Pod mounts exists before the Pod is asked for, so it never waits on a missing volume.
    `admin_password` is the one in the live Secret (admin_secret.existing_password), None the first time.
    `operator_namespace` is let through the NetworkPolicy; None when the operator runs outside the cluster.
    """
    config_map = broker_config_map(identity, spec, paths)
    objects = [
        admin_secret(identity, spec, admin_password, generate),
        config_map,
        client_service(identity, spec),
        headless_service(identity, spec),
        statefulset(identity, spec, config_hash(config_map["data"]), paths),
    ]
    policy = network_policy(identity, spec, operator_namespace)
    if policy is not None:
        objects.append(policy)
    return objects
