"""MqttInstance + AuthUser + AclPolicy from examples/: a device gets in with the generated credentials,
and only where its policy lets it."""

from __future__ import annotations

from typing import Any

from e2e.helpers import MQACL, MQI, MQU, HostDevice, apply_examples, connects, wait_ready_instance
from testenv.cluster import Namespace
from testenv.device import NOT_AUTHORIZED


def test_a_device_connects_with_its_generated_credentials_and_is_confined_by_its_policy(
    cluster: Any, namespace: Namespace
) -> None:
    ns = namespace.namespace
    apply_examples(namespace, "mqttinstance", "authuser", "aclpolicy")
    wait_ready_instance(namespace)
    namespace.wait_condition(MQU, "fleet-dashboard", timeout=90)
    namespace.wait_condition(MQACL, "fleet-dashboard-read", timeout=90)

    # The workload status the operator reads was written by the cluster, for the current generation.
    sts = namespace.get("statefulset", "devices") or {}
    assert sts["status"]["readyReplicas"] == 1
    assert sts["status"]["observedGeneration"] == sts["metadata"]["generation"]
    instance = namespace.get(MQI, "devices") or {}
    assert instance["status"]["readyReplicas"] == 1
    # The operator reached the broker by its Service name, as inside a cluster.
    assert f"devices.{ns}.svc:1883" in (namespace.condition(MQI, "devices") or {})["message"]

    password = namespace.secret("fleet-dashboard-credentials")
    with cluster.broker(ns, "devices") as (host, port):
        assert not connects(host, port, "fleet-dashboard", password + "-wrong")
        dashboard = HostDevice(host, port, "fleet-dashboard", password)
        try:
            assert dashboard.connect() == 0
            assert dashboard.subscribe("vehicles/+/state") < 0x80
            assert dashboard.subscribe("vehicles/+/battery") < 0x80
            assert dashboard.subscribe("piles/#") == NOT_AUTHORIZED
            assert dashboard.publish("vehicles/car-1/cmd") == NOT_AUTHORIZED
        finally:
            dashboard.close()
