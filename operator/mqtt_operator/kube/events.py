"""Kubernetes Events about our objects: the user-facing record of what the operator did or could not do."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from lightkube import AsyncClient
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event

from mqtt_operator.logs import redact

EventType = Literal["Normal", "Warning"]
COMPONENT = "mqtt-operator"


def build_event(body: Mapping[str, Any], type: EventType, reason: str, message: str) -> Event:
    """A core/v1 Event about `body`; the message is redacted like a log line and cut to the API's limit."""
    meta = body["metadata"]
    now = datetime.now(UTC)
    return Event(
        metadata=ObjectMeta(generateName=f"{meta['name']}.", namespace=meta["namespace"]),
        involvedObject=ObjectReference(
            apiVersion=body["apiVersion"],
            kind=body["kind"],
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta.get("uid"),
            resourceVersion=meta.get("resourceVersion"),
        ),
        type=type,
        reason=reason,
        message=redact(message)[:1024],
        source=EventSource(component=COMPONENT),
        firstTimestamp=now,
        lastTimestamp=now,
        count=1,
    )


async def record_event(
    client: AsyncClient, body: Mapping[str, Any], type: EventType, reason: str, message: str
) -> None:
    await client.create(build_event(body, type, reason, message))
