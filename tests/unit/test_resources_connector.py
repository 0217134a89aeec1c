"""The KafkaConnector builders, one group per owned object, and the pure parts around them: no server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mqtt_operator.__main__ import parser
from mqtt_operator.api.connector import KafkaConnectorSpec
from mqtt_operator.api.kinds import KAFKA_CONNECTOR
from mqtt_operator.bridge.config import BridgeConfig
from mqtt_operator.controllers.counters import CounterBook
from mqtt_operator.kafka.probe import bootstrap_addresses
from mqtt_operator.resources.broker_config import CONFIG_HASH_ANNOTATION, config_hash
from mqtt_operator.resources.connector_config import (
    connector_config,
    connector_pod,
    connector_rules,
    worker_count,
)
from mqtt_operator.resources.identity import OwnerIdentity
from mqtt_operator.resources.worker_access import worker_policy, worker_user
from mqtt_operator.resources.worker_config import BrokerTarget, worker_config_map
from mqtt_operator.resources.worker_names import WorkerNames
from mqtt_operator.resources.worker_statefulset import worker_statefulset
from mqtt_operator.settings import OperatorSettings, parse_worker_metrics_addresses
from mqtt_operator.workers.scrape import METRICS, parse_counters

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((REPO / "examples/kafkaconnector.yaml").read_text())
ID = OwnerIdentity(
    name="vehicles",
    namespace="iot",
    uid="4d1f-uid",
    api_version=KAFKA_CONNECTOR.api_version,
    kind=KAFKA_CONNECTOR.kind,
)
NAMES = WorkerNames(KAFKA_CONNECTOR.kind, "iot", "vehicles")
MAX_NAME_LENGTH = 45  # `<name>-bridge` within the 52 characters a StatefulSet name may have
BROKER = BrokerTarget(
    host="devices.iot.svc",
    port=1883,
    session_expiry_seconds=7200,
    client_events_topic="$SYS/mqtt-operator/client-events",
)
DOWNLINK = {
    "instanceRef": {"name": "devices"},
    "direction": "kafkaToMqtt",
    "kafka": {"bootstrapServers": "kafka:9092"},
    "kafkaToMqtt": {"topic": "mq2mqtt"},
}


def spec(**overrides: Any) -> KafkaConnectorSpec:
    """The example's spec with top-level fields replaced (camelCase, as in the CR)."""
    return KafkaConnectorSpec.model_validate({**EXAMPLE["spec"], **overrides})


def uplink(**overrides: Any) -> KafkaConnectorSpec:
    return spec(mqttToKafka={**EXAMPLE["spec"]["mqttToKafka"], **overrides})


def downlink(**overrides: Any) -> KafkaConnectorSpec:
    return KafkaConnectorSpec.model_validate(
        {**DOWNLINK, "kafkaToMqtt": {**DOWNLINK["kafkaToMqtt"], **overrides}}
    )


def bridge_config_map(
    identity: OwnerIdentity, s: KafkaConnectorSpec, broker: BrokerTarget, username: str | None
) -> dict[str, Any]:
    return worker_config_map(identity, NAMES, connector_config(NAMES, s, broker, username))


def bridge_statefulset(
    identity: OwnerIdentity, s: KafkaConnectorSpec, *, image: str, config_hash: str, authorization: bool
) -> dict[str, Any]:
    names = WorkerNames(identity.kind, identity.namespace, identity.name)
    return worker_statefulset(
        identity, connector_pod(names, s), image=image, config_hash=config_hash, authorization=authorization
    )


def connector_policy(identity: OwnerIdentity, s: KafkaConnectorSpec) -> dict[str, Any]:
    return worker_policy(identity, NAMES, s.instance_ref.name, connector_rules(s))


def config_json(s: KafkaConnectorSpec, username: str | None = "vehicles-connector") -> dict[str, Any]:
    data: dict[str, Any] = json.loads(bridge_config_map(ID, s, BROKER, username)["data"]["config.json"])
    return data


def sts(s: KafkaConnectorSpec | None = None, authorization: bool = True, hash_: str = "h1") -> dict[str, Any]:
    return bridge_statefulset(
        ID, s or spec(), image="mqtt-operator:9.9.9", config_hash=hash_, authorization=authorization
    )


def container(sts_: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = sts_["spec"]["template"]["spec"]["containers"][0]
    return result


def env(sts_: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("valueFrom", e.get("value")) for e in container(sts_)["env"]}


# --- the spec model ---------------------------------------------------------------------------------------


class TestSpec:
    def test_key_from_is_read_from_the_cr_spelling(self) -> None:
        key = spec().mqtt_to_kafka.key  # type: ignore[union-attr]
        assert (key.source, key.path) == ("payloadField", "$.plate")

    def test_a_direction_without_its_block_is_refused(self) -> None:
        with pytest.raises(ValueError, match="mqttToKafka block"):
            KafkaConnectorSpec.model_validate({**DOWNLINK, "direction": "mqttToKafka"})

    def test_every_kafka_topic_once(self) -> None:
        s = spec(deadLetter={"topic": "vehicle-state"})
        assert s.kafka_topics() == ("vehicle-state", "mqtt-device-connect", "mqtt-device-disconnect")
        routed = uplink(topic=None, routing={"byParentTopic": {"allowed": ["vehicles", "meters"]}})
        assert routed.kafka_topics()[:2] == ("vehicles", "meters")
        assert downlink().kafka_topics() == ("mq2mqtt",)

    def test_parent_topic_routing_writes_the_envelope_unless_told_otherwise(self) -> None:
        routing = {"byParentTopic": {"allowed": ["vehicles"]}}
        plain = {k: v for k, v in EXAMPLE["spec"]["mqttToKafka"].items() if k != "value"}

        def value(**up: Any) -> str:
            return str(config_json(spec(mqttToKafka={**plain, **up}))["mqttToKafka"]["value"])

        assert value(topic=None, routing=routing) == "envelope"
        assert value(topic=None, routing=routing, value="raw") == "raw"
        assert value() == "raw"

    @pytest.mark.parametrize(
        ("kafka", "protocol"),
        [
            ({}, "PLAINTEXT"),
            ({"tls": {}}, "SSL"),
            ({"sasl": {"mechanism": "PLAIN", "secretRef": {"name": "k"}}}, "SASL_PLAINTEXT"),
            ({"tls": {}, "sasl": {"mechanism": "SCRAM-SHA-512", "secretRef": {"name": "k"}}}, "SASL_SSL"),
        ],
    )
    def test_security_protocol_follows_tls_and_sasl(self, kafka: dict[str, Any], protocol: str) -> None:
        s = spec(kafka={"bootstrapServers": "k:9092", **kafka})
        assert s.kafka.security_protocol == protocol
        assert config_json(s)["kafka"]["securityProtocol"] == protocol


# --- names ------------------------------------------------------------------------------------------------


class TestNames:
    def test_replica_client_id_is_prefix_and_pod_name(self) -> None:
        assert NAMES.replica_client_id(1) == "iot.vehicles-vehicles-bridge-1"

    def test_long_or_odd_names_are_refused_with_the_rule(self) -> None:
        WorkerNames(KAFKA_CONNECTOR.kind, "iot", "a" * MAX_NAME_LENGTH).check()
        for bad in ("a" * (MAX_NAME_LENGTH + 1), "1abc", "Abc", "abc-"):
            with pytest.raises(ValueError, match="DNS label of at most 45"):
                WorkerNames(KAFKA_CONNECTOR.kind, "iot", bad).check()
        with pytest.raises(ValueError, match="at most 45"):
            bridge_statefulset(
                OwnerIdentity("x" * 46, "iot", "u", KAFKA_CONNECTOR.api_version, KAFKA_CONNECTOR.kind),
                spec(),
                image="i",
                config_hash="h",
                authorization=False,
            )


# --- ConfigMap <name>-bridge: config.json ---------------------------------------------------------------


class TestBridgeConfig:
    def test_broker_share_group_and_client_ids(self) -> None:
        cfg = config_json(spec())
        assert cfg["owner"] == "iot/vehicles"
        assert cfg["mqtt"]["host"] == "devices.iot.svc" and cfg["mqtt"]["port"] == 1883
        assert cfg["mqtt"]["username"] == "vehicles-connector"
        assert cfg["mqtt"]["clientIdPrefix"] == "iot.vehicles"
        assert cfg["mqtt"]["sessionExpirySeconds"] == 7200
        assert cfg["mqttToKafka"]["shareGroup"] == "iot.vehicles"
        assert cfg["metricsPort"] == 9090

    def test_without_authorization_there_is_no_username(self) -> None:
        assert config_json(spec(), username=None)["mqtt"]["username"] is None

    def test_mapping_fields_come_from_the_spec(self) -> None:
        m = config_json(spec())["mqttToKafka"]
        assert m["topicFilters"] == ["vehicles/+/state"]
        assert m["kafkaTopic"] == "vehicle-state" and m["parentTopics"] == []
        assert m["key"] == {"source": "payloadField", "path": "$.plate"}
        assert (m["value"], m["partitioning"], m["ordered"]) == ("envelope", "key", True)
        assert (m["systemHeaders"], m["userPropertyHeaders"]) == (True, True)
        routed = config_json(
            uplink(
                topic=None,
                routing={"byParentTopic": {"allowed": ["vehicles", "meters"]}},
                headers={"system": False, "userProperties": True},
                key={"from": "topic"},
                ordered=False,
                partitioning="roundRobin",
            )
        )["mqttToKafka"]
        assert routed["kafkaTopic"] is None and routed["parentTopics"] == ["vehicles", "meters"]
        assert routed["key"] == {"source": "topic", "path": None}
        assert (routed["systemHeaders"], routed["partitioning"]) == (False, "roundRobin")

    def test_dead_letter_and_device_events(self) -> None:
        cfg = config_json(spec())
        assert cfg["deadLetterTopic"] == "mqtt-dead-letter"
        assert cfg["deviceEvents"] == {
            "connectTopic": "mqtt-device-connect",
            "disconnectTopic": "mqtt-device-disconnect",
            # The broker plugin's client events, where the instance publishes them.
            "pluginTopic": "$SYS/mqtt-operator/client-events",
        }
        bare = {k: v for k, v in EXAMPLE["spec"].items() if k not in ("deadLetter", "deviceEvents")}
        cfg = config_json(KafkaConnectorSpec.model_validate(bare))
        assert cfg["deadLetterTopic"] is None and cfg["deviceEvents"] is None

    def test_downlink_consumer_group_defaults_per_connector(self) -> None:
        cfg = config_json(downlink())
        assert cfg["mqttToKafka"] is None
        assert cfg["kafkaToMqtt"]["consumerGroup"] == "mqtt-operator.iot.vehicles"
        assert cfg["kafkaToMqtt"]["kafkaTopic"] == "mq2mqtt"
        assert (cfg["kafkaToMqtt"]["topicHeader"], cfg["kafkaToMqtt"]["qosHeader"]) == (
            "mqttTopic",
            "qosLevel",
        )
        custom = config_json(
            downlink(
                consumerGroup="g1",
                headers={"topic": "t", "qos": "q", "retain": "r", "cleanSession": "c"},
                defaultTopic="devices/all/cmd",
                defaultQos=0,
                defaultRetain=True,
                startFrom="earliest",
            )
        )["kafkaToMqtt"]
        assert custom == {
            "kafkaTopic": "mq2mqtt",
            "consumerGroup": "g1",
            "startFrom": "earliest",
            "topicHeader": "t",
            "qosHeader": "q",
            "retainHeader": "r",
            "cleanSessionHeader": "c",
            "defaultTopic": "devices/all/cmd",
            "defaultQos": 0,
            "defaultRetain": True,
        }

    def test_tls_and_sasl_become_file_paths_never_secrets(self) -> None:
        s = spec(
            kafka={
                "bootstrapServers": "k:9093",
                "tls": {
                    "caSecretRef": {"name": "kafka-ca", "key": "bundle.pem"},
                    "certSecretRef": {"name": "me"},
                },
                "sasl": {"mechanism": "SCRAM-SHA-512", "secretRef": {"name": "kafka-creds"}},
            }
        )
        kafka = config_json(s)["kafka"]
        assert kafka["tlsCaFile"] == "/etc/bridge-tls/kafka-ca/bundle.pem"
        assert (kafka["tlsCertFile"], kafka["tlsKeyFile"]) == (
            "/etc/bridge-tls/kafka-client/tls.crt",
            "/etc/bridge-tls/kafka-client/tls.key",
        )
        assert kafka["saslMechanism"] == "SCRAM-SHA-512"
        assert "password" not in json.dumps(kafka).lower()

    def test_the_worker_reads_back_what_the_operator_wrote(self) -> None:
        text = bridge_config_map(ID, spec(), BROKER, "u")["data"]["config.json"]
        assert BridgeConfig.model_validate_json(text) == connector_config(NAMES, spec(), BROKER, "u")

    def test_metadata_and_a_hash_that_moves_only_with_the_config(self) -> None:
        cm = bridge_config_map(ID, spec(), BROKER, "u")
        assert cm["metadata"]["name"] == "vehicles-bridge"
        assert cm["metadata"]["ownerReferences"][0]["kind"] == "KafkaConnector"
        assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mqtt-operator"
        same = bridge_config_map(ID, spec(), BROKER, "u")
        other = bridge_config_map(ID, uplink(value="raw"), BROKER, "u")
        assert config_hash(cm["data"]) == config_hash(same["data"]) != config_hash(other["data"])


# --- StatefulSet <name>-bridge ----------------------------------------------------------------------------


class TestStatefulSet:
    @pytest.mark.parametrize(
        ("state", "replicas", "ordered", "expected"),
        [
            ("running", 3, False, 3),
            ("running", 3, True, 1),
            ("running", 0, True, 0),
            ("paused", 3, False, 0),
            ("stopped", 3, False, 0),
        ],
    )
    def test_replicas_follow_state_and_ordering(
        self, state: str, replicas: int, ordered: bool, expected: int
    ) -> None:
        s = KafkaConnectorSpec.model_validate(
            {
                **EXAMPLE["spec"],
                "state": state,
                "replicas": replicas,
                "mqttToKafka": {**EXAMPLE["spec"]["mqttToKafka"], "ordered": ordered},
            }
        )
        assert worker_count(s) == expected
        assert sts(s)["spec"]["replicas"] == expected

    def test_the_one_image_runs_the_bridge_program(self) -> None:
        c = container(sts())
        assert c["image"] == "mqtt-operator:9.9.9"
        assert c["command"] == ["mqtt-operator"]
        assert c["args"] == ["bridge", "--config", "/etc/bridge/config.json"]
        assert {"name": "config", "mountPath": "/etc/bridge", "readOnly": True} in c["volumeMounts"]
        assert {"name": "config", "configMap": {"name": "vehicles-bridge"}} in sts()["spec"]["template"][
            "spec"
        ]["volumes"]

    def test_pod_name_from_the_downward_api_and_the_password_from_the_generated_secret(self) -> None:
        e = env(sts())
        assert e["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert e["MQTT_PASSWORD"] == {"secretKeyRef": {"name": NAMES.credentials, "key": "password"}}
        assert NAMES.credentials == "vehicles-connector-credentials"
        assert "MQTT_PASSWORD" not in env(sts(authorization=False))

    def test_sasl_credentials_and_tls_files_from_the_referenced_secrets(self) -> None:
        s = spec(
            kafka={
                "bootstrapServers": "k:9093",
                "tls": {"caSecretRef": {"name": "kafka-ca"}, "certSecretRef": {"name": "me"}},
                "sasl": {
                    "mechanism": "PLAIN",
                    "secretRef": {"name": "kafka-creds", "usernameKey": "user", "passwordKey": "pw"},
                },
            }
        )
        built = sts(s)
        e = env(built)
        assert e["KAFKA_SASL_USERNAME"] == {"secretKeyRef": {"name": "kafka-creds", "key": "user"}}
        assert e["KAFKA_SASL_PASSWORD"] == {"secretKeyRef": {"name": "kafka-creds", "key": "pw"}}
        volumes = {v["name"]: v for v in built["spec"]["template"]["spec"]["volumes"]}
        assert volumes["kafka-ca"]["secret"] == {"secretName": "kafka-ca", "defaultMode": 0o440}
        assert volumes["kafka-client-cert"]["secret"] == {"secretName": "me", "defaultMode": 0o440}
        mounts = {m["mountPath"]: m for m in container(built)["volumeMounts"]}
        assert mounts["/etc/bridge-tls/kafka-ca"]["readOnly"] is True
        assert mounts["/etc/bridge-tls/kafka-client"]["name"] == "kafka-client-cert"
        plain = sts()
        assert "KAFKA_SASL_PASSWORD" not in env(plain)
        assert {v["name"] for v in plain["spec"]["template"]["spec"]["volumes"]} == {"config", "tmp"}

    def test_restricted_pod_security(self) -> None:
        pod = sts()["spec"]["template"]["spec"]
        assert pod["securityContext"] == {
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "fsGroup": 65532,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert container(sts())["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        }
        assert pod["automountServiceAccountToken"] is False
        assert pod["terminationGracePeriodSeconds"] == 30

    def test_probes_on_the_metrics_port(self) -> None:
        c = container(sts())
        assert c["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"

    def test_config_hash_and_labels_on_the_pod_template(self) -> None:
        a, b = sts(hash_="one"), sts(hash_="two")
        assert a["spec"]["template"]["metadata"]["annotations"] == {CONFIG_HASH_ANNOTATION: "one"}
        assert a["spec"]["template"] != b["spec"]["template"]
        labels = a["spec"]["template"]["metadata"]["labels"]
        assert (
            labels["app.kubernetes.io/managed-by"] == "mqtt-operator"
        )  # the broker's NetworkPolicy lets it in
        assert "app.kubernetes.io/version" not in labels
        selector = a["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items()
        assert selector["app.kubernetes.io/instance"] == "vehicles"
        assert a["metadata"]["ownerReferences"][0]["uid"] == "4d1f-uid"

    def test_resources_from_the_spec(self) -> None:
        resources = {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
        assert container(sts(spec(resources=resources)))["resources"] == resources
        assert "resources" not in container(sts())


# --- AuthUser and AclPolicy <name>-connector --------------------------------------------------------------


class TestBrokerIdentity:
    def test_user_generates_its_password_and_belongs_to_the_connector(self) -> None:
        user = worker_user(ID, NAMES, "devices")
        assert (user["kind"], user["metadata"]["name"]) == ("AuthUser", "vehicles-connector")
        assert user["spec"]["instanceRef"] == {"name": "devices"}
        assert "passwordSecretRef" not in user["spec"] and "username" not in user["spec"]
        assert user["metadata"]["ownerReferences"][0]["name"] == "vehicles"

    def test_uplink_policy_subscribes_and_receives_exactly_its_filters(self) -> None:
        policy = connector_policy(ID, spec())
        assert policy["metadata"]["name"] == "vehicles-connector"
        assert policy["spec"]["users"] == ["vehicles-connector"]
        assert policy["spec"]["instanceRef"] == {"name": "devices"}
        # The example asks for device events: the broker's connect/disconnect notices are readable too.
        assert policy["spec"]["rules"] == [
            {"effect": "allow", "actions": ["subscribe", "receive"], "topics": ["vehicles/+/state"]},
            {"effect": "allow", "actions": ["subscribe", "receive"], "topics": ["$SYS/broker/log/N"]},
        ]
        plain = connector_policy(ID, spec(deviceEvents=None))
        assert [t for r in plain["spec"]["rules"] for t in r["topics"]] == ["vehicles/+/state"]

    def test_device_events_may_read_the_broker_plugins_client_events_wherever_the_instance_puts_them(
        self,
    ) -> None:
        rules = connector_rules(spec(), "fleet/lifecycle")
        assert rules[-1] == {
            "effect": "allow",
            "actions": ["subscribe", "receive"],
            "topics": ["$SYS/broker/log/N", "fleet/lifecycle"],
        }
        assert [
            t for r in connector_rules(spec(deviceEvents=None), "fleet/lifecycle") for t in r["topics"]
        ] == ["vehicles/+/state"]

    def test_64_filters_are_split_into_rules_of_32(self) -> None:
        filters = [f"site/{i}/#" for i in range(64)]
        with_filters = {**EXAMPLE["spec"]["mqttToKafka"], "topicFilters": filters}
        rules = connector_policy(ID, spec(mqttToKafka=with_filters, deviceEvents=None))["spec"]["rules"]
        assert [len(r["topics"]) for r in rules] == [32, 32]
        assert [t for r in rules for t in r["topics"]] == filters

    def test_downlink_policy_publishes_anywhere_but_dollar_topics(self) -> None:
        assert connector_policy(ID, downlink())["spec"]["rules"] == [
            {"effect": "allow", "actions": ["publish"], "topics": ["#"]}
        ]


# --- counters ---------------------------------------------------------------------------------------------


EXPOSITION = """\
# HELP bridge_received_total Messages taken from the source
# TYPE bridge_received_total counter
bridge_received_total{direction="mqttToKafka"} 120.0
bridge_received_created{direction="mqttToKafka"} 1.7e9
bridge_delivered_total{direction="mqttToKafka"} 118
bridge_failed_total{direction="mqttToKafka",kind="transient"} 2
bridge_failed_total{direction="mqttToKafka",kind="permanent"} 1
bridge_dead_lettered_total 1 1700000000000
bridge_skipped_total{direction="mqttToKafka"} NaN
bridge_in_flight 7
"""


class TestCounters:
    def test_the_agreed_metric_names(self) -> None:
        assert {name: (s.metric, s.required) for name, s in METRICS.items()} == {
            "received": ("bridge_received_total", None),
            "delivered": ("bridge_delivered_total", None),
            "failed": ("bridge_failed_total", 'kind="permanent"'),
            "deadLettered": ("bridge_dead_lettered_total", None),
            "skipped": ("bridge_skipped_total", None),
        }

    def test_exposition_is_summed_over_labels_and_only_permanent_failures_count(self) -> None:
        assert parse_counters(EXPOSITION) == {
            "received": 120,
            "delivered": 118,
            "failed": 1,
            "deadLettered": 1,
            "skipped": 0,
        }
        assert parse_counters("") == dict.fromkeys(METRICS, 0)

    @staticmethod
    def c(received: int, delivered: int = 0) -> dict[str, int]:
        return {**dict.fromkeys(METRICS, 0), "received": received, "delivered": delivered}

    def test_sum_over_workers_and_resets_never_go_back(self) -> None:
        book, key = CounterBook(), ("iot", "vehicles", "u")
        assert book.update(key, None, {"w0": self.c(10), "w1": self.c(5)})["received"] == 15
        assert book.update(key, None, {"w0": self.c(12), "w1": self.c(6)})["received"] == 18
        # w1 restarted (its counter fell): what it counted before stays.
        assert book.update(key, None, {"w0": self.c(12), "w1": self.c(1)})["received"] == 19
        # w0 does not answer: its last values still count.
        assert book.update(key, None, {"w1": self.c(2)})["received"] == 20

    def test_an_operator_restart_keeps_what_the_status_shows(self) -> None:
        shown = {**self.c(100, 90), "lastUpdateTime": "2024-01-01T00:00:00Z"}
        book, key = CounterBook(), ("iot", "vehicles", "u")
        assert book.update(key, shown, {"w0": self.c(30, 25)}) == self.c(100, 90)
        assert book.update(key, shown, {"w0": self.c(40, 35)}) == self.c(110, 100)
        # A recreated connector (new uid) starts from its own status.
        assert book.update(("iot", "vehicles", "v"), None, {})["received"] == 0


# --- settings and addresses -------------------------------------------------------------------------------


def test_worker_metrics_addresses_parse_and_refuse_with_the_syntax() -> None:
    parsed = parse_worker_metrics_addresses(["iot/vehicles=127.0.0.1:9101,127.0.0.1:9102"])
    assert parsed == {"iot/vehicles": ("127.0.0.1:9101", "127.0.0.1:9102")}
    for bad in ("iot/vehicles", "vehicles=127.0.0.1:1", "iot/v=host", "iot/v="):
        with pytest.raises(ValueError, match="NAMESPACE/NAME=HOST:PORT"):
            parse_worker_metrics_addresses([bad])
    settings = OperatorSettings(namespaces=("iot",), worker_metrics_addresses=parsed)
    assert settings.worker_image == "mqtt-operator:0.1.0"


def test_worker_flags_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MQTT_OPERATOR_WORKER_IMAGE", raising=False)
    args = parser().parse_args(["run", "-n", "iot", "--worker-metrics-address", "iot/v=127.0.0.1:9101"])
    assert args.worker_metrics_address == ["iot/v=127.0.0.1:9101"]
    assert args.worker_image == "mqtt-operator:0.1.0"
    monkeypatch.setenv("MQTT_OPERATOR_WORKER_IMAGE", "registry.example/mqtt-operator:1.2.3")
    assert parser().parse_args(["run"]).worker_image == "registry.example/mqtt-operator:1.2.3"


def test_bootstrap_addresses() -> None:
    assert bootstrap_addresses("a:9092,b.kafka.svc:9093,[::1]:9094") == [
        ("a", 9092),
        ("b.kafka.svc", 9093),
        ("::1", 9094),
    ]
