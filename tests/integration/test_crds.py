"""The six CRDs against a real kube-apiserver: examples accepted, invalid objects refused with a message
that names the field, transition rules, defaults, categories, printer columns and `kubectl explain`.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from testenv.kube import ControlPlane

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
KINDS = ["MqttInstance", "AuthUser", "AclPolicy", "KafkaConnector", "ReplicationTask", "FunctionTrigger"]
DELETE = object()


def example(name: str) -> dict[str, Any]:
    """The single custom resource of examples/<name>.yaml."""
    docs = [d for d in yaml.safe_load_all((EXAMPLES / f"{name}.yaml").read_text()) if d]
    return next(d for d in docs if d["apiVersion"].startswith("mqtt-operator.io/"))


def edit(obj: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    """A copy of obj with each dotted path ("spec.rules.0.effect") set to its value, or removed (DELETE)."""
    out = copy.deepcopy(obj)
    for path, value in edits.items():
        parts: list[Any] = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = out
        for p in parts[:-1]:
            if isinstance(p, str) and p not in node:
                node[p] = {}
            node = node[p]
        if value is DELETE:
            del node[parts[-1]]
        else:
            node[parts[-1]] = copy.deepcopy(value)
    return out


def kubectl_json(cp: ControlPlane, verb: str, obj: dict[str, Any], ns: str, *extra: str, check: bool = False):
    return cp.kubectl(verb, "-n", ns, *extra, "-f", "-", input=json.dumps(obj), check=check)


def get(cp: ControlPlane, kind: str, name: str, ns: str) -> dict[str, Any]:
    out = cp.kubectl("get", "-n", ns, f"{kind.lower()}.mqtt-operator.io", name, "-o", "json").stdout
    result: dict[str, Any] = json.loads(out)
    return result


# ---------------------------------------------------------------------------------------------------
# Examples, category, printer columns
# ---------------------------------------------------------------------------------------------------


def test_there_is_one_example_per_kind_all_on_instance_devices() -> None:
    kinds = []
    for path in EXAMPLE_FILES:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        crs = [d for d in docs if d["apiVersion"].startswith("mqtt-operator.io/")]
        assert len(crs) == 1, f"{path.name} must hold exactly one custom resource"
        cr = crs[0]
        kinds.append(cr["kind"])
        assert path.stem == cr["kind"].lower()
        refs = json.dumps(cr["spec"])
        if cr["kind"] != "MqttInstance":
            assert '"instanceRef": {"name": "devices"}' in refs, f"{path.name} must use instance devices"
        else:
            assert cr["metadata"]["name"] == "devices"
    assert sorted(kinds) == sorted(KINDS)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_is_accepted(crds_installed: ControlPlane, namespace: str, path: Path) -> None:
    proc = crds_installed.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False)
    assert proc.returncode == 0, proc.stderr


def test_get_mqtt_lists_all_six_kinds(crds_installed: ControlPlane, namespace: str) -> None:
    crds_installed.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))
    names = crds_installed.kubectl("get", "mqtt", "-n", namespace, "-o", "name").stdout.split()
    groups = {n.split("/")[0] for n in names}
    assert groups == {f"{k.lower()}.mqtt-operator.io" for k in KINDS}, names
    # Short names work too.
    for short in ("mqi", "mqu", "mqacl", "mqkc", "mqrt", "mqft"):
        assert crds_installed.kubectl("get", short, "-n", namespace, "-o", "name").stdout.strip()


def test_printer_columns_show_ready_and_reason_from_status(
    crds_installed: ControlPlane, namespace: str
) -> None:
    cp = crds_installed
    kubectl_json(cp, "create", example("mqttinstance"), namespace, check=True)
    status = {
        "status": {
            "observedGeneration": 1,
            "readyReplicas": 1,
            "endpoints": {"mqtt": f"devices.{namespace}.svc:1883"},
            "adminSecretName": "devices-admin",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "BrokerUnreachable",
                    "message": "the broker does not answer",
                    "lastTransitionTime": "2025-01-01T00:00:00Z",
                    "observedGeneration": 1,
                }
            ],
        }
    }
    cp.kubectl(
        "patch",
        "-n",
        namespace,
        "mqi",
        "devices",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    table = cp.kubectl("get", "-n", namespace, "mqi", "devices").stdout.splitlines()
    header, row = table[0].split(), table[1].split()
    assert header[:6] == ["NAME", "READY", "REASON", "REPLICAS", "AVAILABLE", "ENDPOINT"]
    assert row[:6] == ["devices", "False", "BrokerUnreachable", "1", "1", f"devices.{namespace}.svc:1883"]
    assert header[-1] == "AGE"
    # The status schema is declared: a condition with an unknown status is refused.
    bad = copy.deepcopy(status)
    bad["status"]["conditions"][0]["status"] = "Maybe"
    proc = cp.kubectl(
        "patch",
        "-n",
        namespace,
        "mqi",
        "devices",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(bad),
        check=False,
    )
    assert proc.returncode != 0
    assert "status.conditions[0].status" in proc.stderr


# ---------------------------------------------------------------------------------------------------
# Invalid objects: each refused, with the field named in the message
# ---------------------------------------------------------------------------------------------------


@dataclass
class Bad:
    id: str
    example: str
    edits: dict[str, Any]
    field: str
    words: list[str] = field(default_factory=list)


RMQ_SOURCE = {"endpoints": "rocketmq-proxy:8081", "topic": "pile-cmd", "consumerGroup": "pile-cmd-devices"}
MQTT_TARGET = {"instanceRef": {"name": "devices"}, "topic": "piles/{key}/cmd", "qos": 1}

BAD = [
    # MqttInstance
    Bad(
        "mqi-replicas-mosquitto",
        "mqttinstance",
        {"spec.replicas": 2},
        "spec.replicas",
        ["Mosquitto does not cluster"],
    ),
    Bad(
        "mqi-engine-enum",
        "mqttinstance",
        {"spec.engine": "emqx"},
        "spec.engine",
        ["Unsupported value", "mosquitto"],
    ),
    Bad(
        "mqi-mqtts-needs-tls",
        "mqttinstance",
        {"spec.listeners.mqtts": {"port": 8883}},
        "spec.listeners.mqtts.tls",
        ["Required value"],
    ),
    Bad(
        "mqi-ports-differ",
        "mqttinstance",
        {"spec.listeners.websocket.port": 1883},
        "spec.listeners",
        ["ports must differ"],
    ),
    Bad(
        "mqi-exporter-port-is-a-listeners",
        "mqttinstance",
        {"spec.monitoring": {"exporter": {"enabled": True, "port": 1883}}},
        "spec.monitoring.exporter.port",
        ["must differ from every listener's port"],
    ),
    Bad(
        "mqi-exporter-needs-plain-mqtt",
        "mqttinstance",
        {"spec.monitoring": {"exporter": {"enabled": True}}, "spec.listeners.mqtt": DELETE},
        "spec.monitoring.exporter.enabled",
        ["needs listeners.mqtt"],
    ),
    Bad(
        "mqi-exporter-sys-interval",
        "mqttinstance",
        {"spec.monitoring": {"exporter": {"enabled": True, "sysIntervalSeconds": 0}}},
        "spec.monitoring.exporter.sysIntervalSeconds",
    ),
    Bad(
        "mqi-exporter-unknown-field",
        "mqttinstance",
        {"spec.monitoring": {"exporter": {"enabled": True, "bindAddress": ":9234"}}},
        "spec.monitoring.exporter.bindAddress",
    ),
    Bad(
        "mqi-port-range",
        "mqttinstance",
        {"spec.listeners.mqtt.port": 70000},
        "spec.listeners.mqtt.port",
        ["65535"],
    ),
    Bad(
        "mqi-no-listener", "mqttinstance", {"spec.listeners": {}}, "spec.listeners", ["at least one listener"]
    ),
    Bad(
        "mqi-expiry-duration",
        "mqttinstance",
        {"spec.sessions.expiry": "2 hours"},
        "spec.sessions.expiry",
        ["should match"],
    ),
    Bad(
        "mqi-extra-listener",
        "mqttinstance",
        {"spec.config.extra": "retain_available true\nlistener 1884\n"},
        "spec.config.extra",
        ["options the operator manages", "listener"],
    ),
    Bad(
        "mqi-extra-plugin-opt",
        "mqttinstance",
        {"spec.config.extra": "  plugin_opt_config_file /x.json"},
        "spec.config.extra",
        ["options the operator manages", "plugin_opt_*"],
    ),
    Bad(
        "mqi-max-packet-size",
        "mqttinstance",
        {"spec.limits.maxPacketSize": "1Ti"},
        "spec.limits.maxPacketSize",
        ["256Mi"],
    ),
    Bad(
        "mqi-max-packet-size-int",
        "mqttinstance",
        {"spec.limits.maxPacketSize": 10},
        "spec.limits.maxPacketSize",
        ["between 20 bytes"],
    ),
    Bad(
        "mqi-deletion-policy",
        "mqttinstance",
        {"spec.deletionPolicy": "orphan"},
        "spec.deletionPolicy",
        ["Unsupported value", "retain"],
    ),
    Bad(
        "mqi-service-type",
        "mqttinstance",
        {"spec.service": {"type": "ExternalName"}},
        "spec.service.type",
        ["Unsupported value"],
    ),
    # A rule on metadata.name sits on the root object, so the API server has no field path to print.
    Bad(
        "mqi-name-dns-label",
        "mqttinstance",
        {"metadata.name": "1devices"},
        "<nil>",
        ["metadata.name of an MqttInstance", "DNS label of at most 52 characters"],
    ),
    Bad("mqi-unknown-field", "mqttinstance", {"spec.replica": 1}, "spec.replica", ["unknown field"]),
    Bad(
        "mqi-resubscribe-wait-long",
        "mqttinstance",
        {"spec.persistence.resubscribeWait": "25h"},
        "spec.persistence.resubscribeWait",
        ["at most 24h"],
    ),
    Bad(
        "mqi-resubscribe-wait-unit",
        "mqttinstance",
        {"spec.persistence.resubscribeWait": "1d"},
        "spec.persistence.resubscribeWait",
        ["should match"],
    ),
    # AuthUser
    Bad("mqu-username-slash", "authuser", {"spec.username": "cars/1"}, "spec.username", ["should match"]),
    Bad("mqu-username-wildcard", "authuser", {"spec.username": "car+"}, "spec.username", ["should match"]),
    Bad(
        "mqu-instance-ref-required",
        "authuser",
        {"spec.instanceRef": DELETE},
        "spec.instanceRef",
        ["Required value"],
    ),
    Bad(
        "mqu-password-ref-name",
        "authuser",
        {"spec.passwordSecretRef": {"key": "pw"}},
        "spec.passwordSecretRef.name",
        ["Required value"],
    ),
    Bad(
        "mqu-description-length",
        "authuser",
        {"spec.description": "x" * 1025},
        "spec.description",
        ["Too long", "1024"],
    ),
    # AclPolicy
    Bad("mqacl-users-empty", "aclpolicy", {"spec.users": []}, "spec.users", ["at least 1 items"]),
    Bad(
        "mqacl-effect-enum",
        "aclpolicy",
        {"spec.rules.0.effect": "permit"},
        "spec.rules[0].effect",
        ["Unsupported value", "allow", "deny"],
    ),
    Bad(
        "mqacl-action-enum",
        "aclpolicy",
        {"spec.rules.0.actions": ["write"]},
        "spec.rules[0].actions[0]",
        ["Unsupported value", "publish"],
    ),
    Bad(
        "mqacl-action-unique",
        "aclpolicy",
        {"spec.rules.0.actions": ["subscribe", "subscribe"]},
        "spec.rules[0].actions[1]",
        ["Duplicate value"],
    ),
    Bad(
        "mqacl-topic-share",
        "aclpolicy",
        {"spec.rules.0.topics": ["$share/g/vehicles/#"]},
        "spec.rules[0].topics[0]",
        ["$share/", "granted in both"],
    ),
    Bad(
        "mqacl-topic-percent",
        "aclpolicy",
        {"spec.rules.0.topics": ["devices/%x/#"]},
        "spec.rules[0].topics[0]",
        ["%u", "%c"],
    ),
    Bad(
        "mqacl-topic-hash-middle",
        "aclpolicy",
        {"spec.rules.1.topics": ["vehicles/#/state"]},
        "spec.rules[1].topics[0]",
        ["'#' is allowed only as the whole last level"],
    ),
    Bad(
        "mqacl-topics-empty",
        "aclpolicy",
        {"spec.rules.0.topics": []},
        "spec.rules[0].topics",
        ["at least 1 items"],
    ),
    Bad("mqacl-priority-range", "aclpolicy", {"spec.priority": 5000}, "spec.priority", ["1000"]),
    # KafkaConnector
    Bad(
        "mqrt-name-too-long",
        "replicationtask",
        {"metadata.name": "a" * 41},
        "<nil>",
        ["metadata.name of a ReplicationTask", "at most 40 characters"],
    ),
    Bad(
        "mqft-name-too-long",
        "functiontrigger",
        {"metadata.name": "a" * 45},
        "<nil>",
        ["metadata.name of a FunctionTrigger", "at most 44 characters"],
    ),
    Bad(
        "mqkc-name-too-long",
        "kafkaconnector",
        {"metadata.name": "a" * 46},
        "<nil>",
        ["metadata.name of a KafkaConnector", "at most 45 characters"],
    ),
    Bad(
        "mqkc-block-required",
        "kafkaconnector",
        {"spec.mqttToKafka": DELETE},
        "spec.mqttToKafka",
        ["direction mqttToKafka needs the mqttToKafka block"],
    ),
    Bad(
        "mqkc-other-block-forbidden",
        "kafkaconnector",
        {"spec.kafkaToMqtt": {"topic": "mq2mqtt"}},
        "spec.kafkaToMqtt",
        ["not allowed with direction mqttToKafka"],
    ),
    Bad(
        "mqkc-topic-xor-routing",
        "kafkaconnector",
        {"spec.mqttToKafka.routing": {"byParentTopic": {"allowed": ["vehicles"]}}},
        "spec.mqttToKafka",
        ["exactly one of topic", "routing.byParentTopic"],
    ),
    Bad(
        "mqkc-key-path-required",
        "kafkaconnector",
        {"spec.mqttToKafka.key": {"from": "payloadField"}},
        "spec.mqttToKafka.key.path",
        ["required when from is payloadField"],
    ),
    Bad(
        "mqkc-key-path-only-payload",
        "kafkaconnector",
        {"spec.mqttToKafka.key": {"from": "clientId", "path": "$.plate"}},
        "spec.mqttToKafka.key.path",
        ["required when from is payloadField, and allowed only then"],
    ),
    Bad(
        "mqkc-key-from-enum",
        "kafkaconnector",
        {"spec.mqttToKafka.key": {"from": "plate"}},
        "spec.mqttToKafka.key.from",
        ["Unsupported value", "payloadField"],
    ),
    Bad(
        "mqkc-ordered-needs-key-partitioning",
        "kafkaconnector",
        {"spec.mqttToKafka.partitioning": "roundRobin"},
        "spec.mqttToKafka.ordered",
        ["needs partitioning: key"],
    ),
    Bad(
        "mqkc-kafka-topic-name",
        "kafkaconnector",
        {"spec.mqttToKafka.topic": "vehicle state"},
        "spec.mqttToKafka.topic",
        ["should match"],
    ),
    Bad(
        "mqkc-filter-plus",
        "kafkaconnector",
        {"spec.mqttToKafka.topicFilters": ["vehicles/+x/state"]},
        "spec.mqttToKafka.topicFilters[0]",
        ["'+' is allowed only as a whole topic level"],
    ),
    Bad(
        "mqkc-bootstrap-port",
        "kafkaconnector",
        {"spec.kafka.bootstrapServers": "kafka"},
        "spec.kafka.bootstrapServers",
        ["should match"],
    ),
    Bad(
        "mqkc-sasl-mechanism",
        "kafkaconnector",
        {"spec.kafka.sasl": {"mechanism": "GSSAPI", "secretRef": {"name": "kafka-creds"}}},
        "spec.kafka.sasl.mechanism",
        ["Unsupported value", "SCRAM-SHA-512"],
    ),
    Bad(
        "mqkc-downlink-default-topic",
        "kafkaconnector",
        {
            "spec.direction": "kafkaToMqtt",
            "spec.mqttToKafka": DELETE,
            "spec.kafkaToMqtt": {"topic": "mq2mqtt", "defaultTopic": "vehicles/+/cmd"},
        },
        "spec.kafkaToMqtt.defaultTopic",
        ["cannot contain the wildcards"],
    ),
    Bad(
        "mqkc-downlink-qos",
        "kafkaconnector",
        {
            "spec.direction": "kafkaToMqtt",
            "spec.mqttToKafka": DELETE,
            "spec.kafkaToMqtt": {"topic": "mq2mqtt", "defaultQos": 3},
        },
        "spec.kafkaToMqtt.defaultQos",
        ["Unsupported value"],
    ),
    Bad(
        "mqkc-device-events-empty",
        "kafkaconnector",
        {"spec.deviceEvents": {}},
        "spec.deviceEvents",
        ["connectTopic, disconnectTopic or both"],
    ),
    Bad(
        "mqkc-state-enum",
        "kafkaconnector",
        {"spec.state": "deleted"},
        "spec.state",
        ["Unsupported value", "stopped"],
    ),
    # ReplicationTask
    Bad(
        "mqrt-display-name",
        "replicationtask",
        {"spec.displayName": "pile wills"},
        "spec.displayName",
        ["should match"],
    ),
    Bad(
        "mqrt-source-one-side",
        "replicationtask",
        {"spec.source.rocketmq": RMQ_SOURCE},
        "spec.source",
        ["exactly one of mqtt and rocketmq"],
    ),
    Bad(
        "mqrt-mqtt-to-mqtt",
        "replicationtask",
        {"spec.target": {"mqtt": MQTT_TARGET}},
        "spec",
        ["one side must be MQTT and the other RocketMQ"],
    ),
    Bad(
        "mqrt-consumer-group-required",
        "replicationtask",
        {
            "spec.source": {"rocketmq": RMQ_SOURCE},
            "spec.deadLetter": DELETE,
            "spec.source.rocketmq.consumerGroup": DELETE,
            "spec.target": {"mqtt": MQTT_TARGET},
        },
        "spec.source.rocketmq.consumerGroup",
        ["Required value"],
    ),
    Bad(
        "mqrt-target-topic-wildcard",
        "replicationtask",
        {
            "spec.source": {"rocketmq": RMQ_SOURCE},
            "spec.deadLetter": DELETE,
            "spec.target": {"mqtt": {**MQTT_TARGET, "topic": "piles/+/cmd"}},
        },
        "spec.target.mqtt.topic",
        ["cannot contain the wildcards"],
    ),
    Bad(
        "mqrt-target-topic-placeholder",
        "replicationtask",
        {
            "spec.source": {"rocketmq": RMQ_SOURCE},
            "spec.deadLetter": DELETE,
            "spec.target": {"mqtt": {**MQTT_TARGET, "topic": "piles/{device}/cmd"}},
        },
        "spec.target.mqtt.topic",
        ["placeholders", "{key}"],
    ),
    Bad(
        "mqrt-state-enum",
        "replicationtask",
        {"spec.state": "stopped"},
        "spec.state",
        ["Unsupported value", "paused"],
    ),
    Bad(
        "mqrt-ordered-needs-keys",
        "replicationtask",
        {"spec.target.rocketmq.ordered": True, "spec.target.rocketmq.keys": {"from": "none"}},
        "spec.target.rocketmq.ordered",
        ["needs keys"],
    ),
    Bad(
        "mqrt-dead-letter-wildcard",
        "replicationtask",
        {"spec.deadLetter.mqttTopic": "piles/+/dead-letter"},
        "spec.deadLetter.mqttTopic",
        ["cannot contain the wildcards"],
    ),
    Bad(
        "mqrt-dead-letter-reserved",
        "replicationtask",
        {"spec.deadLetter.mqttTopic": "$SYS/dead-letter"},
        "spec.deadLetter.mqttTopic",
        ["reserved by the broker"],
    ),
    Bad(
        "mqrt-dead-letter-rocketmq-source",
        "replicationtask",
        {"spec.source": {"rocketmq": RMQ_SOURCE}, "spec.target": {"mqtt": MQTT_TARGET}},
        "spec.deadLetter",
        ["deadLetter is for an MQTT source only", "%DLQ%<consumerGroup>"],
    ),
    Bad(
        "mqrt-rocketmq-topic",
        "replicationtask",
        {"spec.target.rocketmq.topic": "pile.faults"},
        "spec.target.rocketmq.topic",
        ["should match"],
    ),
    # FunctionTrigger
    Bad(
        "mqft-function-one-of",
        "functiontrigger",
        {"spec.function.url": "http://battery-alerts.fn.svc/"},
        "spec.function",
        ["exactly one of url, serviceRef and knativeServiceRef"],
    ),
    Bad(
        "mqft-function-none",
        "functiontrigger",
        {"spec.function": {}},
        "spec.function",
        ["exactly one of url, serviceRef and knativeServiceRef"],
    ),
    Bad(
        "mqft-url-scheme",
        "functiontrigger",
        {"spec.function": {"url": "ftp://battery-alerts/"}},
        "spec.function.url",
        ["http:// or https://"],
    ),
    Bad(
        "mqft-ordered-concurrency",
        "functiontrigger",
        {"spec.ordering": "ordered"},
        "spec.concurrency",
        ["ordering: ordered", "concurrency"],
    ),
    Bad(
        "mqft-batch-range",
        "functiontrigger",
        {"spec.batch.maxMessages": 0},
        "spec.batch.maxMessages",
        ["greater than or equal to 1"],
    ),
    Bad(
        "mqft-retry-delays",
        "functiontrigger",
        {"spec.retry.initialDelay": "2m", "spec.retry.maxDelay": "1m"},
        "spec.retry.initialDelay",
        ["must not exceed retry.maxDelay"],
    ),
    Bad(
        "mqft-max-wait-duration",
        "functiontrigger",
        {"spec.batch.maxWait": "sixty"},
        "spec.batch.maxWait",
        ["should match"],
    ),
    Bad(
        "mqft-dead-letter-wildcard",
        "functiontrigger",
        {"spec.deadLetter.mqttTopic": "dead/#"},
        "spec.deadLetter.mqttTopic",
        ["cannot contain the wildcards"],
    ),
    Bad(
        "mqft-reply-reserved",
        "functiontrigger",
        {"spec.replyTopic": "$SYS/reply"},
        "spec.replyTopic",
        ["reserved by the broker"],
    ),
    Bad(
        "mqft-reply-placeholder",
        "functiontrigger",
        {"spec.replyTopic": "vehicles/{vin}/cmd"},
        "spec.replyTopic",
        ["placeholders", "{level.N}"],
    ),
    Bad(
        "mqft-filter-empty",
        "functiontrigger",
        {"spec.topicFilters": [""]},
        "spec.topicFilters[0]",
        ["at least 1 chars"],
    ),
    Bad(
        "mqft-filter-too-long",
        "functiontrigger",
        {"spec.topicFilters": ["v/" * 513]},
        "spec.topicFilters[0]",
        ["Too long", "1024"],
    ),
    Bad(
        "mqft-filter-nul",
        "functiontrigger",
        {"spec.topicFilters": ["vehicles/\u0000/battery"]},
        "spec.topicFilters[0]",
        ["NUL"],
    ),
    Bad(
        "mqft-filter-share",
        "functiontrigger",
        {"spec.topicFilters": ["$share/g/vehicles/+/battery"]},
        "spec.topicFilters[0]",
        ["operator builds the shared subscription"],
    ),
    Bad(
        "mqft-filter-duplicate",
        "functiontrigger",
        {"spec.topicFilters": ["a/#", "a/#"]},
        "spec.topicFilters[1]",
        ["Duplicate value"],
    ),
    Bad(
        "mqft-format-enum",
        "functiontrigger",
        {"spec.format": "xml"},
        "spec.format",
        ["Unsupported value", "cloudevents"],
    ),
    Bad("mqft-timeout-zero", "functiontrigger", {"spec.timeout": "0s"}, "spec.timeout", ["greater than 0"]),
]


GOOD = [
    # The rules must not refuse what users legitimately write.
    (
        "mqi-exporter",
        "mqttinstance",
        {
            "spec.networkPolicy": {"enabled": True},
            "spec.monitoring": {
                "exporter": {
                    "enabled": True,
                    "image": "mirror.example/mosquitto-exporter:0.8.0",
                    "port": 9100,
                    "sysIntervalSeconds": 5,
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
                    "scrapeFrom": [
                        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
                    ],
                }
            },
        },
    ),
    (
        "filters-wildcards",
        "functiontrigger",
        {
            "spec.topicFilters": [
                "#",
                "+",
                "+/+/#",
                "vehicles/+",
                "vehicles//state",
                "$SYS/broker/#",
                "véhicules/+/état",
            ]
        },
    ),
    (
        "acl-percent-patterns",
        "aclpolicy",
        {
            "spec.rules.0.topics": ["devices/%u/#", "clients/%c/+", "cars/%u-%c"],
            "spec.users": ["car-1", "Wagen_ü"],
        },
    ),
    (
        "mqi-all-listeners",
        "mqttinstance",
        {
            "spec.listeners": {
                "mqtt": {"port": 1883},
                "mqtts": {"port": 8883, "tls": {"secretName": "devices-tls"}},
                "websocket": {"port": 8443, "tls": {"secretName": "devices-tls"}},
            },
            "spec.limits.maxPacketSize": 268435455,
            "spec.replicas": 0,
            "spec.sessions.expiry": "1d12h",
            "spec.config.extra": "retain_available true\nlog_type notice\n# listener in a comment is fine\n",
            "spec.networkPolicy": {
                "enabled": True,
                "allowFrom": [{"namespaceSelector": {"matchLabels": {"team": "iot"}}}],
            },
            "spec.tolerations": [{"key": "iot", "operator": "Exists", "effect": "NoSchedule"}],
            "spec.affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                        ]
                    }
                }
            },
        },
    ),
    (
        "mqu-secret-and-client-id",
        "authuser",
        {
            "spec.passwordSecretRef": {"name": "pile-7-password"},
            "spec.username": "pile-7",
            "spec.clientId": "pile-7",
        },
    ),
    (
        "mqkc-downlink-with-tls-and-sasl",
        "kafkaconnector",
        {
            "spec.direction": "kafkaToMqtt",
            "spec.mqttToKafka": DELETE,
            "spec.deviceEvents": DELETE,
            "spec.kafka": {
                "bootstrapServers": "b-1.kafka:9096,b-2.kafka:9096,[::1]:9092",
                "tls": {"caSecretRef": {"name": "kafka-ca"}},
                "sasl": {"mechanism": "SCRAM-SHA-512", "secretRef": {"name": "kafka-creds"}},
            },
            "spec.kafkaToMqtt": {
                "topic": "mq2mqtt",
                "consumerGroup": "mq2mqtt-devices",
                "defaultTopic": "devices/cmd",
                "defaultQos": 0,
                "headers": {"topic": "mqttTopic", "qos": "qosLevel", "retain": "retain"},
            },
        },
    ),
    (
        "mqkc-parent-topic-routing",
        "kafkaconnector",
        {
            "spec.mqttToKafka": {
                "topicFilters": ["#"],
                "routing": {"byParentTopic": {"allowed": ["vehicles", "meters"]}},
                "key": {"from": "topic"},
                "partitioning": "roundRobin",
            }
        },
    ),
    (
        "mqrt-rocketmq-to-mqtt",
        "replicationtask",
        {
            "spec.source": {
                "rocketmq": {
                    **RMQ_SOURCE,
                    "tagFilter": "cmd || ota",
                    "ordered": True,
                    "credentialsSecretRef": {"name": "rmq"},
                }
            },
            "spec.target": {"mqtt": {**MQTT_TARGET, "topic": "piles/{key}/cmd/{property.kind}"}},
            "spec.deadLetter": DELETE,
        },
    ),
    (
        "mqft-ordered-url",
        "functiontrigger",
        {
            "spec.ordering": "ordered",
            "spec.concurrency": DELETE,
            "spec.batch": {"maxMessages": 100, "maxWait": "500ms"},
            "spec.function": {"url": "https://fn.example.com/battery?token=x"},
            "spec.replyTopic": "cars/{topic}/r",
        },
    ),
    (
        "mqft-knative",
        "functiontrigger",
        {
            "spec.function": {"knativeServiceRef": {"name": "battery-alerts"}},
            "spec.format": "json",
            "spec.replyTopic": DELETE,
            "spec.deadLetter": DELETE,
            "spec.retry": {"attempts": 0, "backoff": "fixed"},
        },
    ),
]


@pytest.mark.parametrize(("case_id", "example_name", "edits"), GOOD, ids=[g[0] for g in GOOD])
def test_valid_variant_is_accepted(
    crds_installed: ControlPlane, namespace: str, case_id: str, example_name: str, edits: dict[str, Any]
) -> None:
    obj = edit(example(example_name), edits)
    proc = kubectl_json(crds_installed, "create", obj, namespace, "--dry-run=server")
    assert proc.returncode == 0, proc.stderr


def test_the_invalid_table_is_large_enough() -> None:
    assert len(BAD) >= 30
    assert len({b.id for b in BAD}) == len(BAD)


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_invalid_object_is_refused(crds_installed: ControlPlane, namespace: str, case: Bad) -> None:
    obj = edit(example(case.example), case.edits)
    proc = kubectl_json(crds_installed, "create", obj, namespace, "--dry-run=server")
    assert proc.returncode != 0, f"accepted: {json.dumps(obj['spec'])}"
    message = proc.stderr
    # The API server prints "<path>: Invalid value ..." (or 'unknown field "<path>"').
    assert f"{case.field}:" in message or f'"{case.field}"' in message, message
    for word in case.words:
        assert word in message, message


# ---------------------------------------------------------------------------------------------------
# Transition rules (immutable fields, edits only while paused)
# ---------------------------------------------------------------------------------------------------


def replace(cp: ControlPlane, kind: str, name: str, ns: str, edits: dict[str, Any]):
    current = get(cp, kind, name, ns)
    return kubectl_json(cp, "replace", edit(current, edits), ns)


def test_authuser_username_is_immutable(crds_installed: ControlPlane, namespace: str) -> None:
    cp = crds_installed
    kubectl_json(cp, "create", example("authuser"), namespace, check=True)
    name = example("authuser")["metadata"]["name"]
    for edits in ({"spec.username": "someone-else"}, {"spec.username": DELETE}):
        proc = replace(cp, "AuthUser", name, namespace, edits)
        assert proc.returncode != 0
        assert "spec.username" in proc.stderr and "immutable" in proc.stderr, proc.stderr
    # Unset at creation (it defaults to metadata.name): setting it later is refused as well.
    bare = edit(example("authuser"), {"metadata.name": "bare", "spec.username": DELETE})
    kubectl_json(cp, "create", bare, namespace, check=True)
    proc = replace(cp, "AuthUser", "bare", namespace, {"spec.username": "bare"})
    assert proc.returncode != 0 and "spec.username is immutable" in proc.stderr, proc.stderr
    # Other fields stay editable.
    proc = replace(cp, "AuthUser", name, namespace, {"spec.description": "new text"})
    assert proc.returncode == 0, proc.stderr


INSTANCE_REF_PATHS = [
    ("authuser", "spec.instanceRef"),
    ("aclpolicy", "spec.instanceRef"),
    ("kafkaconnector", "spec.instanceRef"),
    ("functiontrigger", "spec.instanceRef"),
    ("replicationtask", "spec.source.mqtt.instanceRef"),
]


@pytest.mark.parametrize(("example_name", "path"), INSTANCE_REF_PATHS, ids=[p[0] for p in INSTANCE_REF_PATHS])
def test_instance_ref_is_immutable(
    crds_installed: ControlPlane, namespace: str, example_name: str, path: str
) -> None:
    cp = crds_installed
    obj = example(example_name)
    kubectl_json(cp, "create", obj, namespace, check=True)
    edits: dict[str, Any] = {f"{path}.name": "other"}
    if example_name == "replicationtask":
        edits["spec.state"] = "paused"  # even while paused the instance cannot change
        kubectl_json(
            cp,
            "replace",
            edit(get(cp, obj["kind"], obj["metadata"]["name"], namespace), {"spec.state": "paused"}),
            namespace,
            check=True,
        )
    proc = replace(cp, obj["kind"], obj["metadata"]["name"], namespace, edits)
    assert proc.returncode != 0
    assert path in proc.stderr and "instanceRef is immutable" in proc.stderr, proc.stderr
    assert f"create a new {obj['kind']}" in proc.stderr


def test_replication_task_edits_only_while_paused(crds_installed: ControlPlane, namespace: str) -> None:
    cp = crds_installed
    obj = example("replicationtask")
    name = obj["metadata"]["name"]
    kubectl_json(cp, "create", obj, namespace, check=True)
    refused = "source and target can be edited only while the task is paused: set spec.state to paused first"

    proc = replace(cp, "ReplicationTask", name, namespace, {"spec.target.rocketmq.tag": "fault"})
    assert proc.returncode != 0 and refused in proc.stderr and "spec:" in proc.stderr, proc.stderr
    # Pausing and editing in the same update is refused too: the OLD object must be paused.
    proc = replace(
        cp,
        "ReplicationTask",
        name,
        namespace,
        {"spec.state": "paused", "spec.source.mqtt.topicFilters": ["piles/+/will", "piles/+/fault"]},
    )
    assert proc.returncode != 0 and refused in proc.stderr, proc.stderr
    # Fields other than source/target stay editable while running, the dead letter among them.
    assert replace(cp, "ReplicationTask", name, namespace, {"spec.replicas": 2}).returncode == 0
    edited = {"spec.deadLetter.mqttTopic": "piles/faults/dead-letter"}
    assert replace(cp, "ReplicationTask", name, namespace, edited).returncode == 0

    assert replace(cp, "ReplicationTask", name, namespace, {"spec.state": "paused"}).returncode == 0
    proc = replace(
        cp,
        "ReplicationTask",
        name,
        namespace,
        {
            "spec.source.mqtt.topicFilters": ["piles/+/will", "piles/+/fault"],
            "spec.target.rocketmq.tag": "fault",
        },
    )
    assert proc.returncode == 0, proc.stderr
    # Resuming in the same update as a last edit is allowed (the old object was paused).
    proc = replace(
        cp,
        "ReplicationTask",
        name,
        namespace,
        {"spec.state": "running", "spec.target.rocketmq.topic": "pile-alarms"},
    )
    assert proc.returncode == 0, proc.stderr
    stored = get(cp, "ReplicationTask", name, namespace)["spec"]
    assert stored["state"] == "running" and stored["target"]["rocketmq"]["topic"] == "pile-alarms"
    proc = replace(cp, "ReplicationTask", name, namespace, {"spec.target.rocketmq.topic": "pile-faults"})
    assert proc.returncode != 0 and refused in proc.stderr, proc.stderr


def test_kafka_connector_direction_is_immutable(crds_installed: ControlPlane, namespace: str) -> None:
    cp = crds_installed
    obj = example("kafkaconnector")
    kubectl_json(cp, "create", obj, namespace, check=True)
    proc = replace(
        cp,
        "KafkaConnector",
        obj["metadata"]["name"],
        namespace,
        {
            "spec.direction": "kafkaToMqtt",
            "spec.mqttToKafka": DELETE,
            "spec.kafkaToMqtt": {"topic": "mq2mqtt"},
        },
    )
    assert proc.returncode != 0
    assert "spec.direction" in proc.stderr and "direction is immutable" in proc.stderr, proc.stderr


def test_mqtt_instance_volume_grows_but_never_shrinks(crds_installed: ControlPlane, namespace: str) -> None:
    cp = crds_installed
    obj = edit(
        example("mqttinstance"), {"spec.persistence.size": "2Gi", "spec.persistence.storageClassName": "fast"}
    )
    kubectl_json(cp, "create", obj, namespace, check=True)
    proc = replace(cp, "MqttInstance", "devices", namespace, {"spec.persistence.size": "1Gi"})
    assert proc.returncode != 0
    assert "spec.persistence.size" in proc.stderr and "cannot shrink" in proc.stderr, proc.stderr
    proc = replace(cp, "MqttInstance", "devices", namespace, {"spec.persistence.storageClassName": "slow"})
    assert proc.returncode != 0
    assert "spec.persistence.storageClassName" in proc.stderr and "immutable" in proc.stderr, proc.stderr
    assert replace(cp, "MqttInstance", "devices", namespace, {"spec.persistence.size": "5Gi"}).returncode == 0


# ---------------------------------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------------------------------

MINIMAL: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "MqttInstance": (
        {},
        {
            "engine": "mosquitto",
            "replicas": 1,
            "listeners": {"mqtt": {"port": 1883}},
            "service": {"type": "ClusterIP"},
            "authorization": {"enabled": True},
            "sessions": {"expiry": "2h", "maxQueuedMessages": 100000, "maxInflightMessages": 1000},
            "limits": {"maxPacketSize": "2Mi", "maxConnections": -1},
            "persistence": {
                "enabled": True,
                "size": "1Gi",
                "autosaveInterval": "5s",
                "resubscribeWait": "60s",
            },
            "monitoring": {"exporter": {"enabled": False, "port": 9234, "sysIntervalSeconds": 10}},
            "deletionPolicy": "delete",
        },
    ),
    "AuthUser": (
        {"instanceRef": {"name": "devices"}, "passwordSecretRef": {"name": "car-1-password"}},
        {"passwordSecretRef": {"name": "car-1-password", "key": "password"}},
    ),
    "AclPolicy": (
        {
            "instanceRef": {"name": "devices"},
            "users": ["car-1"],
            "rules": [{"effect": "allow", "actions": ["publish"], "topics": ["vehicles/%u/#"]}],
        },
        {"priority": 0},
    ),
    "KafkaConnector": (
        {
            "instanceRef": {"name": "devices"},
            "direction": "mqttToKafka",
            "kafka": {"bootstrapServers": "kafka:9092"},
            "mqttToKafka": {"topicFilters": ["vehicles/+/state"], "topic": "vehicle-state"},
        },
        {
            "state": "running",
            "replicas": 1,
            "mqttToKafka": {
                "topicFilters": ["vehicles/+/state"],
                "topic": "vehicle-state",
                "key": {"from": "clientId"},
                "value": "raw",
                "headers": {"system": True, "userProperties": True},
                "partitioning": "key",
                "ordered": False,
            },
        },
    ),
    "ReplicationTask": (
        {"source": {"rocketmq": RMQ_SOURCE}, "target": {"mqtt": MQTT_TARGET}},
        {
            "state": "running",
            "replicas": 1,
            "source": {"rocketmq": {**RMQ_SOURCE, "tagFilter": "*", "ordered": False, "tls": False}},
            "target": {"mqtt": {**MQTT_TARGET, "retain": False}},
        },
    ),
    "FunctionTrigger": (
        {
            "instanceRef": {"name": "devices"},
            "topicFilters": ["vehicles/+/battery"],
            "function": {"knativeServiceRef": {"name": "battery-alerts"}},
        },
        {
            "function": {"knativeServiceRef": {"name": "battery-alerts", "path": "/"}},
            "format": "cloudevents",
            "ordering": "unordered",
            "batch": {"maxMessages": 1, "maxWait": "60s"},
            "retry": {"attempts": 3, "backoff": "exponential", "initialDelay": "1s", "maxDelay": "60s"},
            "timeout": "30s",
            "base64Payload": False,
            "enabled": True,
        },
    ),
}


def subset(expected: Any, actual: Any, path: str = "spec") -> list[str]:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r}"]
        out: list[str] = []
        for k, v in expected.items():
            out += subset(v, actual.get(k), f"{path}.{k}")
        return out
    return [] if expected == actual else [f"{path}: expected {expected!r}, got {actual!r}"]


@pytest.mark.parametrize("kind", KINDS)
def test_defaults_are_applied(crds_installed: ControlPlane, namespace: str, kind: str) -> None:
    spec, expected = MINIMAL[kind]
    obj = {
        "apiVersion": "mqtt-operator.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "minimal"},
        "spec": spec,
    }
    kubectl_json(crds_installed, "create", obj, namespace, check=True)
    stored = get(crds_installed, kind, "minimal", namespace)["spec"]
    assert subset(expected, stored) == []
    if kind == "FunctionTrigger":
        assert "concurrency" not in stored  # no default: ordered triggers must be able to leave it unset


# ---------------------------------------------------------------------------------------------------
# kubectl explain
# ---------------------------------------------------------------------------------------------------

EXPLAIN = [
    ("mqttinstances.spec.sessions", ["persistent session", "maxQueuedMessages", "Mosquitto"]),
    ("authusers.spec.username", ["defaults to metadata.name", "Immutable"]),
    ("aclpolicies.spec.rules.topics", ["%u", "expanded by the operator"]),
    ("kafkaconnectors.spec.mqttToKafka.key", ["payloadField", "$.plate"]),
    ("replicationtasks.spec.state", ["paused", "edited only while paused"]),
    ("functiontriggers.spec.batch", ["maxWait", "partial batch"]),
]


@pytest.mark.parametrize(("field_path", "words"), EXPLAIN, ids=[e[0] for e in EXPLAIN])
def test_kubectl_explain_prints_descriptions(
    crds_installed: ControlPlane, field_path: str, words: list[str]
) -> None:
    # The API server publishes a new CRD's OpenAPI a moment after it is Established.
    deadline = time.monotonic() + 60
    while True:
        proc = crds_installed.kubectl("explain", field_path, check=False)
        text = " ".join(proc.stdout.split())
        if proc.returncode == 0 and all(w in text for w in words):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"kubectl explain {field_path}:\n{proc.stdout}\n{proc.stderr}")
        time.sleep(1)
