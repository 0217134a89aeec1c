"""MqttInstance: the typed spec of a broker."""

from __future__ import annotations

from typing import Any, Literal

from mqtt_operator.api.base import LocalObjectRef, Model, duration_seconds, quantity_bytes


class ListenerTls(Model):
    secret_name: str
    require_client_certificate: bool = False


class Listener(Model):
    port: int
    tls: ListenerTls | None = None


class Listeners(Model):
    mqtt: Listener | None = None
    mqtts: Listener | None = None
    websocket: Listener | None = None

    def enabled(self) -> dict[str, Listener]:
        """Listener name -> listener, in a fixed order (mqtt, mqtts, websocket)."""
        return {name: lst for name in ("mqtt", "mqtts", "websocket") if (lst := getattr(self, name))}


class ServiceSpec(Model):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    annotations: dict[str, str] = {}
    labels: dict[str, str] = {}
    load_balancer_source_ranges: tuple[str, ...] = ()


class LabelSelector(Model):
    match_labels: dict[str, str] = {}


class NetworkPeer(Model):
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None


class NetworkPolicySpec(Model):
    enabled: bool = False
    allow_from: tuple[NetworkPeer, ...] = ()


class Authorization(Model):
    enabled: bool = True


class MessageStamps(Model):
    """Which user properties the broker plugin stamps on every PUBLISH it receives (docs/broker-plugin.md)."""

    client_id: bool = True
    client_address: bool = True
    message_id: bool = True
    # Off by default: the message id (a UUIDv7) already holds the receive time to the millisecond.
    received_at: bool = False


class ClientEvents(Model):
    """Lifecycle events the broker plugin publishes: disconnects (Mosquitto 2.0 has no connect event)."""

    enabled: bool = True
    topic: str = "$SYS/mqtt-operator/client-events"


class Sessions(Model):
    expiry: str = "2h"
    max_queued_messages: int = 100000
    max_inflight_messages: int = 1000

    @property
    def expiry_seconds(self) -> int:
        return int(duration_seconds(self.expiry))


class Limits(Model):
    max_packet_size: int | str = "2Mi"
    max_connections: int = -1

    @property
    def max_packet_size_bytes(self) -> int:
        return quantity_bytes(self.max_packet_size)


class Persistence(Model):
    enabled: bool = True
    size: str = "1Gi"
    storage_class_name: str | None = None
    # 5s, not Mosquitto's 30 min nor our former 30s: a broker killed (OOM, node lost) loses what it
    # accepted since its last save (docs/reliability.md has the measurements behind the choice).
    autosave_interval: str = "5s"
    # Mosquitto 2.0 does not restore shared subscriptions: for this long after a start, clients other than
    # their recorded holders are refused until every one is back (docs/reliability.md). 60 s covers a
    # worker's reconnect backoff (at most 5 s) with room for a slow node.
    resubscribe_wait: str = "60s"

    @property
    def autosave_seconds(self) -> int:
        # Mosquitto counts whole seconds; sub-second values round up so autosave never turns off.
        return max(1, int(duration_seconds(self.autosave_interval) + 0.999))

    @property
    def resubscribe_wait_seconds(self) -> int:
        # Whole seconds, rounded up so that a set sub-second wait does not turn the hold off.
        return int(duration_seconds(self.resubscribe_wait) + 0.999)


class ExtraConfig(Model):
    extra: str = ""


class Toleration(Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class Exporter(Model):
    """The broker's Prometheus exporter, a sidecar of the broker Pod reading Mosquitto's $SYS topics."""

    enabled: bool = False
    # None: the operator's default (--exporter-image, resources/statefulset.py).
    image: str | None = None
    port: int = 9234
    # How often Mosquitto publishes its $SYS figures (sys_interval), in seconds: the exporter's resolution.
    sys_interval_seconds: int = 10
    resources: dict[str, Any] | None = None
    # Who else may scrape the metrics port when spec.networkPolicy is on (besides the broker's own peers).
    scrape_from: tuple[NetworkPeer, ...] = ()


class Monitoring(Model):
    exporter: Exporter = Exporter()


class MqttInstanceSpec(Model):
    engine: Literal["mosquitto"] = "mosquitto"
    image: str | None = None
    image_pull_secrets: tuple[LocalObjectRef, ...] = ()
    replicas: int = 1
    listeners: Listeners = Listeners(mqtt=Listener(port=1883))
    service: ServiceSpec = ServiceSpec()
    network_policy: NetworkPolicySpec = NetworkPolicySpec()
    authorization: Authorization = Authorization()
    message_stamps: MessageStamps = MessageStamps()
    client_events: ClientEvents = ClientEvents()
    sessions: Sessions = Sessions()
    limits: Limits = Limits()
    persistence: Persistence = Persistence()
    config: ExtraConfig = ExtraConfig()
    monitoring: Monitoring = Monitoring()
    resources: dict[str, Any] | None = None
    node_selector: dict[str, str] = {}
    tolerations: tuple[Toleration, ...] = ()
    affinity: dict[str, Any] | None = None
    pod_annotations: dict[str, str] = {}
    pod_labels: dict[str, str] = {}
    deletion_policy: Literal["delete", "retain"] = "delete"
