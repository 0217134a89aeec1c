"""The connector's own AclPolicy `<name>-connector`: exactly what its workers need, nothing more.

- mqttToKafka: subscribe + receive on its topic filters. The ACL translation (broker/acl.py) grants
  each filter also as `$share/+/<filter>`, the form the workers subscribe with.
- kafkaToMqtt: publish on `#`. Each record's header chooses its topic, so no narrower filter is
  known in advance (a `defaultTopic` covers only records without that header). `#` never matches a
  topic starting with `$`, so `$SYS` and `$CONTROL` stay closed. To confine a downlink, add an
  AclPolicy for the user `<name>-connector` with a higher priority that denies the rest.
"""

from __future__ import annotations

from typing import Any

from mqtt_operator.api.connector import KafkaConnectorSpec
from mqtt_operator.resources.identity import ConnectorIdentity
from mqtt_operator.resources.worker_access import allow_rules, worker_policy
from mqtt_operator.resources.worker_names import connector_worker_names

DOWNLINK_TOPICS = ("#",)
DEVICE_EVENTS_TOPIC = "$SYS/broker/log/N"


def _rules(spec: KafkaConnectorSpec) -> list[dict[str, Any]]:
    if spec.mqtt_to_kafka is not None:
        rules = allow_rules(["subscribe", "receive"], spec.mqtt_to_kafka.topic_filters)
    else:
        rules = allow_rules(["publish"], DOWNLINK_TOPICS)
    if spec.device_events is not None:
        # The broker's connect/disconnect notices (bridge/device_events.py).
        rules += allow_rules(["subscribe", "receive"], [DEVICE_EVENTS_TOPIC])
    return rules


def connector_policy(identity: ConnectorIdentity, spec: KafkaConnectorSpec) -> dict[str, Any]:
    names = connector_worker_names(identity.namespace, identity.name)
    return worker_policy(identity, names, spec.instance_ref.name, _rules(spec))
