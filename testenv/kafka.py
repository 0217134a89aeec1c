"""A real one-node Apache Kafka in KRaft mode on loopback."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from testenv.paths import TESTENV_DIR, run_dir, tool, versions
from testenv.process import Server, free_port

LOG4J = """\
log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
"""


def kafka_libs() -> Path:
    libs = TESTENV_DIR / "kafka" / versions()["KAFKA_VERSION"] / "libs"
    if not (libs.parent / ".complete").exists():
        raise FileNotFoundError(f"Kafka is not installed in {libs.parent}: run `make testenv`")
    return libs


@dataclass
class Kafka:
    """One broker+controller node; `bootstrap` is host:port once `start()` returned."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kafka-", dir=run_dir())))
    port: int = 0
    controller_port: int = 0
    server: Server | None = None
    heap: str = "512m"
    # False: a producer or consumer naming a missing topic gets UNKNOWN_TOPIC_OR_PARTITION instead of
    # a new topic, as on most production clusters.
    auto_create_topics: bool = True

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            "java",
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseG1GC",
            f"-Dlog4j.configuration=file:{self.root / 'log4j.properties'}",
            "-cp",
            f"{kafka_libs()}/*",
            main,
            *args,
        ]

    def start(self) -> Kafka:
        if not self.port:
            self.port, self.controller_port = free_port(), free_port()
        props = self.root / "server.properties"
        if not props.exists():
            props.write_text(
                "\n".join(
                    [
                        "process.roles=broker,controller",
                        "node.id=1",
                        f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                        f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                        f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
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
        self.server = Server("kafka", self._java("kafka.Kafka", str(props)), self.root / "kafka.log")
        self.server.start()
        self.server.wait_until(self._answers, 120, "answering metadata requests")
        return self

    def _answers(self) -> bool:
        # kcat -L is a real metadata request: the broker is registered and serving.
        proc = subprocess.run(
            [tool("kcat"), "-b", self.bootstrap, "-L", "-m", "3"], capture_output=True, text=True, timeout=10
        )
        return proc.returncode == 0 and "1 brokers" in proc.stdout

    def stop(self, keep_data: bool = False) -> None:
        """Stop the broker; keep_data leaves the log dir so a later `start()` resumes it."""
        if self.server is not None:
            self.server.stop(timeout=30)
            self.server = None
        if not keep_data:
            shutil.rmtree(self.root, ignore_errors=True)
