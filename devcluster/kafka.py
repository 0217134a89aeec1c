"""Kafka as an "external" service of the local cluster: the test environment's Kafka, listening on the
runner's host address (port 9092, where Pods reach it), named `kafka-bootstrap.kafka.svc` by a Service
without selector and an EndpointSlice, the way a cluster names a service that runs outside it."""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass
from typing import Any

from testenv.kafka import LOG4J, Kafka
from testenv.process import free_port

PORT = 9092
ALIAS_NAMESPACE = "kafka"
ALIAS_SERVICE = "kafka-bootstrap"


@dataclass
class ExternalKafka(Kafka):
    """One KRaft node whose client listener is `host:9092` (the runner's gateway)."""

    host: str = "127.0.0.1"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> ExternalKafka:
        self.port = self.port or PORT
        self.controller_port = self.controller_port or free_port()
        props = self.root / "server.properties"
        if not props.exists():
            props.write_text(
                "\n".join(
                    [
                        "process.roles=broker,controller",
                        "node.id=1",
                        f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                        f"listeners=PLAINTEXT://{self.bootstrap},CONTROLLER://127.0.0.1:{self.controller_port}",
                        f"advertised.listeners=PLAINTEXT://{self.bootstrap}",
                        "controller.listener.names=CONTROLLER",
                        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                        "inter.broker.listener.name=PLAINTEXT",
                        f"log.dirs={self.root / 'data'}",
                        "num.partitions=1",
                        "offsets.topic.replication.factor=1",
                        "offsets.topic.num.partitions=4",
                        "transaction.state.log.replication.factor=1",
                        "transaction.state.log.min.isr=1",
                        "group.initial.rebalance.delay.ms=0",
                        "message.max.bytes=4194304",
                        f"auto.create.topics.enable={'true' if self.auto_create_topics else 'false'}",
                        "",
                    ]
                )
            )
            (self.root / "log4j.properties").write_text(LOG4J)
            subprocess.run(
                self._java("kafka.tools.StorageTool", "format", "-t", str(uuid.uuid4()), "-c", str(props)),
                check=True,
                capture_output=True,
                timeout=120,
            )
        super().start()
        return self


def alias_manifests(address: str) -> list[dict[str, Any]]:
    """`kafka-bootstrap.kafka.svc:9092` -> `address:9092`, as examples/kafkaconnector.yaml expects."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ALIAS_NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": ALIAS_SERVICE, "namespace": ALIAS_NAMESPACE},
            "spec": {"ports": [{"name": "kafka", "port": PORT, "protocol": "TCP"}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{ALIAS_SERVICE}-external",
                "namespace": ALIAS_NAMESPACE,
                "labels": {"kubernetes.io/service-name": ALIAS_SERVICE},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address]}],
            "ports": [{"name": "kafka", "port": PORT, "protocol": "TCP"}],
        },
    ]
