"""The names one integration's workers and broker identity go by, for every kind that runs bridge workers.

A KafkaConnector and a FunctionTrigger of the same name may live in one namespace, so each kind has its
own suffix (the StatefulSet, ConfigMap, AuthUser and AclPolicy) and its own share group: two kinds
sharing `$share/<group>/...` would split each other's messages. KafkaConnector keeps the names it had
before this module existed (connector_names.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mqtt_operator.resources import connector_names
from mqtt_operator.resources.credentials_secret import generated_secret_name

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# A StatefulSet Pod carries `controller-revision-hash: <sts>-<10 chars>`, a label value of at most 63
# characters: the StatefulSet name may have 52.
MAX_WORKLOAD_NAME = 52


@dataclass(frozen=True)
class WorkerNames:
    kind: str
    namespace: str
    name: str
    workload: str  # the workers' StatefulSet and ConfigMap; Pods are `<workload>-<ordinal>`
    user: str  # the integration's own AuthUser, AclPolicy and broker username
    share_group: str  # the workers subscribe as `$share/<share_group>/<filter>`
    client_id_prefix: str  # a worker's client id is `<prefix>-<Pod name>` (BridgeConfig's rule)

    @property
    def credentials(self) -> str:
        """The Secret the AuthUser's generated password lands in (key `password`)."""
        return generated_secret_name(self.user)

    def replica_client_id(self, ordinal: int) -> str:
        """Stable across restarts: a StatefulSet Pod keeps its name."""
        return f"{self.client_id_prefix}-{self.workload}-{ordinal}"

    def check(self) -> None:
        """Refuse a name the StatefulSet and its Pods could not be named after (the CRD says the same)."""
        longest = MAX_WORKLOAD_NAME - (len(self.workload) - len(self.name))
        if len(self.name) > longest or not _DNS_LABEL.match(self.name):
            raise ValueError(
                f"metadata.name {self.name!r} must be a DNS label of at most {longest} characters starting "
                f"with a letter: it names the worker StatefulSet {self.workload} and its Pods"
            )


def connector_worker_names(namespace: str, name: str) -> WorkerNames:
    return WorkerNames(
        kind="KafkaConnector",
        namespace=namespace,
        name=name,
        workload=connector_names.bridge_name(name),
        user=connector_names.connector_user_name(name),
        share_group=connector_names.share_group(namespace, name),
        client_id_prefix=connector_names.client_id_prefix(namespace, name),
    )


def trigger_worker_names(namespace: str, name: str) -> WorkerNames:
    # Names have no dots, so `<ns>.functiontrigger.<name>` never equals a connector's `<ns>.<name>`.
    group = f"{namespace}.functiontrigger.{name}"
    return WorkerNames(
        kind="FunctionTrigger",
        namespace=namespace,
        name=name,
        workload=f"{name}-trigger",
        user=f"{name}-trigger",
        share_group=group,
        client_id_prefix=group,
    )


def replication_worker_names(namespace: str, name: str) -> WorkerNames:
    group = f"{namespace}.replicationtask.{name}"
    return WorkerNames(
        kind="ReplicationTask",
        namespace=namespace,
        name=name,
        workload=f"{name}-replication",
        user=f"{name}-replication",
        share_group=group,
        client_id_prefix=group,
    )
