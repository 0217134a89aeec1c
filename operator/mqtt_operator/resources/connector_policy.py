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
from mqtt_operator.api.kinds import ACL_POLICY
from mqtt_operator.resources.connector_names import ACCESS_COMPONENT, connector_user_name
from mqtt_operator.resources.identity import ConnectorIdentity

# The AclPolicy CRD allows at most 32 topics per rule; a connector may list 64 filters.
TOPICS_PER_RULE = 32
DOWNLINK_TOPICS = ("#",)


def _rules(spec: KafkaConnectorSpec) -> list[dict[str, Any]]:
    if spec.mqtt_to_kafka is not None:
        filters = list(spec.mqtt_to_kafka.topic_filters)
        return [
            {
                "effect": "allow",
                "actions": ["subscribe", "receive"],
                "topics": filters[i : i + TOPICS_PER_RULE],
            }
            for i in range(0, len(filters), TOPICS_PER_RULE)
        ]
    return [{"effect": "allow", "actions": ["publish"], "topics": list(DOWNLINK_TOPICS)}]


def connector_policy(identity: ConnectorIdentity, spec: KafkaConnectorSpec) -> dict[str, Any]:
    user = connector_user_name(identity.name)
    return {
        "apiVersion": ACL_POLICY.api_version,
        "kind": ACL_POLICY.kind,
        "metadata": identity.metadata(user, ACCESS_COMPONENT),
        "spec": {
            "instanceRef": {"name": spec.instance_ref.name},
            "users": [user],
            "rules": _rules(spec),
            "description": f"what the workers of KafkaConnector {identity.name} may do",
        },
    }
