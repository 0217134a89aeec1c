"""Checking a Kafka connection before workers use it: the bootstrap answers, the credentials are
accepted, and the topics exist (or the cluster creates them).

Two steps, so that each failure gets its own reason: one connection per bootstrap address
(aiokafka's `create_conn`: TCP, TLS, ApiVersions, the SASL handshake) tells "unreachable" from
"authentication failed"; then a metadata request for the topics (aiokafka's admin client). That
request is sent as a producer's would be: a cluster with `auto.create.topics.enable` creates a missing
topic as it would for the workers, and one without it answers UNKNOWN_TOPIC_OR_PARTITION, which is
exactly "the topic is missing and nobody will create it".
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn

from mqtt_operator.logs import register_secret

CLIENT_ID = "mqtt-operator-probe"
# Each step (connecting to one bootstrap address, the metadata request) may take this long.
PROBE_TIMEOUT = 10.0
UNKNOWN_TOPIC = 3
LEADER_NOT_AVAILABLE = 5  # a topic the broker just auto-created: it exists
TOPIC_AUTHORIZATION_FAILED = 29
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
_AUTH_ERRORS = (
    kafka_errors.AuthenticationFailedError,
    kafka_errors.AuthenticationMethodNotSupported,
    kafka_errors.SaslAuthenticationFailed,
    kafka_errors.UnsupportedSaslMechanismError,
    kafka_errors.IllegalSaslStateError,
)


@dataclass(frozen=True)
class KafkaAccess:
    """How to reach a Kafka cluster, credentials included (never logged: registered for redaction)."""

    bootstrap_servers: str
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = None
    ca_pem: str | None = None  # None with TLS: the system's trusted CAs
    cert_pem: str | None = None
    key_pem: str | None = None

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")


@dataclass(frozen=True)
class KafkaCheck:
    """`reason` is None when the check passed, else KafkaUnreachable, AuthenticationFailed or TopicMissing."""

    reason: str | None
    message: str

    @property
    def ok(self) -> bool:
        return self.reason is None


def bootstrap_addresses(servers: str) -> list[tuple[str, int]]:
    """'a:9092,[::1]:9093' -> [('a', 9092), ('::1', 9093)]; the CRD's pattern guarantees the syntax."""
    result = []
    for item in servers.split(","):
        host, _, port = item.strip().rpartition(":")
        result.append((host.strip("[]"), int(port)))
    return result


def ssl_context(access: KafkaAccess) -> ssl.SSLContext:
    """TLS as the workers use it: the CA given (or the system's), a client certificate for mutual TLS."""
    context = (
        ssl.create_default_context(cadata=access.ca_pem) if access.ca_pem else ssl.create_default_context()
    )
    if access.cert_pem and access.key_pem:
        # load_cert_chain reads only files: write them to a private folder for the moment it takes.
        with tempfile.TemporaryDirectory(prefix="mqtt-operator-tls-") as folder:
            cert, key = os.path.join(folder, "tls.crt"), os.path.join(folder, "tls.key")
            for path, text in ((cert, access.cert_pem), (key, access.key_pem)):
                with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                    f.write(text)
            context.load_cert_chain(cert, key)
    return context


def _describe(err: BaseException) -> str:
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, TimeoutError | asyncio.TimeoutError):
        return "no answer in time"
    if isinstance(err, ssl.SSLError):
        return f"TLS failed: {err.reason or err}"
    return str(err) or type(err).__name__


async def check_kafka(access: KafkaAccess, topics: Sequence[str]) -> KafkaCheck:
    """Connect (and authenticate) to a bootstrap address, then ask for the topics' metadata."""
    for secret in (access.password, access.key_pem):
        if secret:
            register_secret(secret)
    try:
        context = ssl_context(access) if access.tls else None
    except (ssl.SSLError, ValueError) as err:
        return KafkaCheck("KafkaUnreachable", f"the TLS settings cannot be used: {_describe(err)}")
    sasl = {
        "sasl_mechanism": access.sasl_mechanism if access.sasl else "PLAIN",
        "sasl_plain_username": access.username,
        "sasl_plain_password": access.password,
    }
    failures: list[str] = []
    for host, port in bootstrap_addresses(access.bootstrap_servers):
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                conn = await create_conn(
                    host,
                    port,
                    client_id=CLIENT_ID,
                    request_timeout_ms=int(PROBE_TIMEOUT * 1000),
                    ssl_context=context,
                    security_protocol=access.security_protocol,
                    **sasl,
                )
        except _AUTH_ERRORS as err:
            return KafkaCheck(
                "AuthenticationFailed",
                f"Kafka at {host}:{port} refused the {access.sasl_mechanism} credentials "
                f"(spec.kafka.sasl.secretRef): {_describe(err)}",
            )
        except (OSError, kafka_errors.KafkaError, TimeoutError, ValueError) as err:
            failures.append(f"{host}:{port}: {_describe(err)}")
            continue
        conn.close()
        break
    else:
        return KafkaCheck(
            "KafkaUnreachable",
            f"no Kafka bootstrap server answered ({'; '.join(failures)}): check spec.kafka.bootstrapServers "
            "and that Kafka is running",
        )
    if not topics:
        return KafkaCheck(None, f"Kafka at {access.bootstrap_servers} answered")
    admin = AIOKafkaAdminClient(
        bootstrap_servers=access.bootstrap_servers,
        client_id=CLIENT_ID,
        request_timeout_ms=int(PROBE_TIMEOUT * 1000),
        security_protocol=access.security_protocol,
        ssl_context=context,
        **sasl,
    )
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await admin.start()
            described = await admin.describe_topics(list(topics))
    except (OSError, kafka_errors.KafkaError, TimeoutError) as err:
        return KafkaCheck(
            "KafkaUnreachable",
            f"Kafka at {access.bootstrap_servers} did not answer a metadata request: {_describe(err)}",
        )
    finally:
        await admin.close()
    errors = {str(t["topic"]): int(t["error_code"]) for t in described}
    denied = sorted(t for t, code in errors.items() if code == TOPIC_AUTHORIZATION_FAILED)
    if denied:
        return KafkaCheck(
            "AuthenticationFailed",
            f"Kafka refuses this connector's credentials access to topic(s) {', '.join(denied)}: "
            "grant them in Kafka's ACLs",
        )
    missing = sorted(t for t, code in errors.items() if code == UNKNOWN_TOPIC)
    if missing:
        return KafkaCheck(
            "TopicMissing",
            f"Kafka topic(s) {', '.join(missing)} do not exist and the cluster does not create topics "
            "on first use (auto.create.topics.enable=false): create them, or correct the topic names",
        )
    return KafkaCheck(
        None, f"Kafka at {access.bootstrap_servers} answered; topics {', '.join(topics)} are there"
    )
