"""MqttInstance: apply the broker's objects, then check that the operator really talks to the broker."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.resources.apps_v1 import StatefulSet
from lightkube.resources.networking_v1 import NetworkPolicy
from pydantic import ValidationError

from mqtt_operator.api.instance import MqttInstanceSpec
from mqtt_operator.api.status import Endpoints, MqttInstanceStatus
from mqtt_operator.broker.errors import BrokerError
from mqtt_operator.broker.pool import BrokerAddress, BrokerPool
from mqtt_operator.controllers.outcome import ConditionUpdate, Outcome, not_ready
from mqtt_operator.kube.apply import apply, delete, get
from mqtt_operator.kube.secrets import read_secret
from mqtt_operator.logs import register_secret
from mqtt_operator.resources.admin_secret import ADMIN_USERNAME, admin_secret_name
from mqtt_operator.resources.identity import InstanceIdentity
from mqtt_operator.resources.instance import build_instance_objects
from mqtt_operator.resources.network_policy import network_policy_name
from mqtt_operator.resources.services import endpoints
from mqtt_operator.settings import OperatorSettings


def _password_of(manifest: Mapping[str, Any]) -> str:
    password = base64.b64decode(manifest["data"]["password"]).decode()
    register_secret(password)
    return password


def with_operator_images(
    spec: MqttInstanceSpec, broker_image: str | None, exporter_image: str | None
) -> MqttInstanceSpec:
    """The spec with the operator's image defaults (--broker-image, --exporter-image) where it names none."""
    if not spec.image and broker_image:
        spec = spec.model_copy(update={"image": broker_image})
    exporter = spec.monitoring.exporter
    if not exporter.image and exporter_image:
        monitoring = spec.monitoring.model_copy(
            update={"exporter": exporter.model_copy(update={"image": exporter_image})}
        )
        spec = spec.model_copy(update={"monitoring": monitoring})
    return spec


async def reconcile_instance(
    body: Mapping[str, Any], client: AsyncClient, pool: BrokerPool, settings: OperatorSettings
) -> Outcome:
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    try:
        spec = MqttInstanceSpec.model_validate(body.get("spec") or {})
    except ValidationError as err:
        return not_ready("InvalidSpec", f"spec cannot be read: {err.errors()[0]['msg']}")
    # The exporter is `mqtt-operator broker-exporter` in the workers' image unless told otherwise.
    spec = with_operator_images(spec, settings.broker_image, settings.exporter_image or settings.worker_image)
    identity = InstanceIdentity(name=name, namespace=namespace, uid=meta["uid"])
    current = await read_secret(client, namespace, admin_secret_name(name))
    try:
        objects = build_instance_objects(
            identity,
            spec,
            admin_password=current.data.get("password") if current else None,
            operator_namespace=settings.operator_namespace,
        )
    except ValueError as err:
        return not_ready("InvalidSpec", str(err))
    try:
        for obj in objects:
            await apply(client, obj)
        if not spec.network_policy.enabled:  # one left from when it was enabled goes
            await delete(client, NetworkPolicy, namespace, network_policy_name(name))
    except ApiError as err:
        return not_ready(
            "ApplyFailed", f"the API server refused an owned object: {err.status.message}", retry_after=30
        )
    secret = next(o for o in objects if o["kind"] == "Secret")
    sts = next(o for o in objects if o["kind"] == "StatefulSet")
    live_sts = await get(client, StatefulSet, namespace, name)
    ready_replicas = int(((live_sts or {}).get("status") or {}).get("readyReplicas") or 0)
    fields = MqttInstanceStatus(
        endpoints=Endpoints.model_validate(endpoints(name, namespace, spec.listeners)),
        replicas=spec.replicas,
        ready_replicas=ready_replicas,
        admin_secret_name=secret["metadata"]["name"],
        image=sts["spec"]["template"]["spec"]["containers"][0]["image"],
        drift_repair_period_seconds=int(settings.drift_period_seconds),
    ).fields()
    if spec.replicas == 0:
        return Outcome(
            conditions=(
                ConditionUpdate(
                    "Ready", "False", "Stopped", "spec.replicas is 0: the broker is stopped, its data kept"
                ),
                ConditionUpdate("BrokerReachable", "False", "Stopped", ""),
            ),
            fields=fields,
        )
    mqtt = spec.listeners.mqtt
    if mqtt is None:
        return Outcome(
            conditions=(
                ConditionUpdate(
                    "Ready",
                    "True",
                    "Applied",
                    "objects applied; without an mqtt listener the operator cannot check the broker",
                ),
                ConditionUpdate("BrokerReachable", "Unknown", "NoPlainListener", "add spec.listeners.mqtt"),
            ),
            fields=fields,
        )
    host, port = settings.broker_address(namespace, name, f"{name}.{namespace}.svc", mqtt.port)
    address = BrokerAddress(host, port, ADMIN_USERNAME, _password_of(secret))
    try:
        broker = await pool.client((namespace, name), address)
        if spec.authorization.enabled:
            await broker.get_default_acl_access()  # a real round trip through dynamic security
    except BrokerError as err:
        return not_ready(
            "BrokerUnreachable",
            str(err),
            retry_after=15,
            **fields,
            extra=(ConditionUpdate("BrokerReachable", "False", "BrokerUnreachable", str(err)),),
        )
    return Outcome(
        conditions=(
            ConditionUpdate(
                "Ready", "True", "BrokerReady", f"the operator talks to the broker at {host}:{port}"
            ),
            ConditionUpdate("BrokerReachable", "True", "Connected", f"connected as {ADMIN_USERNAME}"),
        ),
        fields=fields,
    )
