"""FunctionTrigger: the typed spec of one MQTT -> HTTP function trigger (the CRD's defaults repeated, so a
spec built without the API server's defaulting means the same)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from mqtt_operator.api.base import LocalObjectRef, Model, duration_seconds


class ServiceRef(Model):
    name: str
    port: int = 80
    path: str = "/"


class KnativeServiceRef(Model):
    name: str
    path: str = "/"


class FunctionTarget(Model):
    url: str | None = None
    service_ref: ServiceRef | None = None
    knative_service_ref: KnativeServiceRef | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> FunctionTarget:
        given = [x for x in (self.url, self.service_ref, self.knative_service_ref) if x is not None]
        if len(given) != 1:
            raise ValueError("function needs exactly one of url, serviceRef and knativeServiceRef")
        return self


class Batch(Model):
    max_messages: int = 1
    max_wait: str = "60s"


class Retry(Model):
    attempts: int = 3
    backoff: Literal["exponential", "fixed"] = "exponential"
    initial_delay: str = "1s"
    max_delay: str = "60s"
    unavailable_for: str = "5m"


class FunctionDeadLetter(Model):
    mqtt_topic: str


# When `concurrency` is unset: calls in flight per worker for unordered triggers.
DEFAULT_CONCURRENCY = 16


class FunctionTriggerSpec(Model):
    instance_ref: LocalObjectRef
    topic_filters: tuple[str, ...]
    function: FunctionTarget
    format: Literal["cloudevents", "json"] = "cloudevents"
    ordering: Literal["ordered", "unordered"] = "unordered"
    concurrency: int | None = None
    batch: Batch = Batch()
    retry: Retry = Retry()
    timeout: str = "30s"
    dead_letter: FunctionDeadLetter | None = None
    reply_topic: str | None = None
    base64_payload: bool = False
    enabled: bool = True
    replicas: int = 1
    resources: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _durations(self) -> FunctionTriggerSpec:
        # The CRD's patterns guarantee the syntax; parsing here fails loudly on a spec built elsewhere.
        retry = self.retry
        durations = (retry.initial_delay, retry.max_delay, retry.unavailable_for)
        for text in (self.batch.max_wait, *durations, self.timeout):
            duration_seconds(text)
        return self

    @property
    def ordered(self) -> bool:
        return self.ordering == "ordered"

    @property
    def calls_in_flight(self) -> int:
        return 1 if self.ordered else (self.concurrency or DEFAULT_CONCURRENCY)
