"""The names an integration's workers and broker identity go by (KafkaConnector, FunctionTrigger,
ReplicationTask): its StatefulSet and ConfigMap, AuthUser and AclPolicy, share group and client ids.
Nothing else spells them.

A KafkaConnector and a FunctionTrigger of the same name may live in one namespace, so each kind has its
own suffixes and its own share group: two kinds sharing `$share/<group>/...` would split each other's
messages. The names are part of the running system (a new name would orphan the workers' sessions and
the messages queued in them), so each kind's rule below never changes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from mqtt_operator.api.kinds import FUNCTION_TRIGGER, KAFKA_CONNECTOR, REPLICATION_TASK
from mqtt_operator.resources.credentials_secret import generated_secret_name

# The `app.kubernetes.io/component` label of the worker Pods and their objects (part of the
# StatefulSet's immutable selector: it keeps the value it was born with), and of the integration's own
# AuthUser and AclPolicy.
WORKER_COMPONENT = "bridge"
ACCESS_COMPONENT = "broker-access"

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# A StatefulSet Pod carries `controller-revision-hash: <sts>-<10 chars>`, a label value of at most 63
# characters: the StatefulSet name may have 52.
MAX_WORKLOAD_NAME = 52


@dataclass(frozen=True)
class NamingRule:
    workload_suffix: str  # `<name>-<suffix>`: the StatefulSet and ConfigMap
    user_suffix: str  # `<name>-<suffix>`: the AuthUser, AclPolicy and broker username
    # `<namespace>.<group_word>.<name>`: the share group and client id prefix. None: `<namespace>.<name>`,
    # the KafkaConnector's, which came first. Names have no dots, so the two forms never meet.
    group_word: str | None


RULES: Mapping[str, NamingRule] = {
    KAFKA_CONNECTOR.kind: NamingRule("bridge", "connector", None),
    FUNCTION_TRIGGER.kind: NamingRule("trigger", "trigger", "functiontrigger"),
    REPLICATION_TASK.kind: NamingRule("replication", "replication", "replicationtask"),
}


@dataclass(frozen=True)
class WorkerNames:
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Self:
        meta = body["metadata"]
        return cls(body["kind"], meta["namespace"], meta["name"])

    @property
    def _rule(self) -> NamingRule:
        return RULES[self.kind]

    @property
    def workload(self) -> str:
        """The workers' StatefulSet and ConfigMap; the Pods are `<workload>-<ordinal>`."""
        return f"{self.name}-{self._rule.workload_suffix}"

    @property
    def user(self) -> str:
        """The integration's own AuthUser, AclPolicy and broker username."""
        return f"{self.name}-{self._rule.user_suffix}"

    @property
    def share_group(self) -> str:
        """The workers subscribe as `$share/<share_group>/<filter>`."""
        word = self._rule.group_word
        return f"{self.namespace}.{word}.{self.name}" if word else f"{self.namespace}.{self.name}"

    @property
    def client_id_prefix(self) -> str:
        """A worker's client id is `<prefix>-<Pod name>` (BridgeConfig's rule)."""
        return self.share_group

    @property
    def credentials(self) -> str:
        """The Secret the AuthUser's generated password lands in (key `password`)."""
        return generated_secret_name(self.user)

    def replica_client_id(self, ordinal: int) -> str:
        """Stable across restarts: a StatefulSet Pod keeps its name."""
        return f"{self.client_id_prefix}-{self.workload}-{ordinal}"

    def client_ids(self, *replica_counts: int) -> list[str]:
        """Every client id a worker may have used while the StatefulSet had up to this many replicas."""
        return [self.replica_client_id(i) for i in range(max(*replica_counts, 1))]

    def check(self) -> None:
        """Refuse a name the StatefulSet and its Pods could not be named after (the CRD says the same)."""
        longest = MAX_WORKLOAD_NAME - (len(self.workload) - len(self.name))
        if len(self.name) > longest or not _DNS_LABEL.match(self.name):
            raise ValueError(
                f"metadata.name {self.name!r} must be a DNS label of at most {longest} characters starting "
                f"with a letter: it names the worker StatefulSet {self.workload} and its Pods"
            )
