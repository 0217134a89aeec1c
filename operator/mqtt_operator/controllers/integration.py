"""The one reconciler of the integrations that run workers (KafkaConnector, FunctionTrigger,
ReplicationTask). A kind subclasses `Integration` with its hooks (controllers/connector.py, trigger.py,
replication.py): its spec and status models, its workers' count, Pod, config and access rules, the
checks it adds, and the verdict; the steps, the cleanup and the counters are the same for all.

A reconcile is an ordered list of named steps over one `Integration` (the context, built once per
reconcile). A step returns None to go on, or the Outcome that ends the reconcile, so the earliest cause
is the one reported:

1. `parse`: the spec parses, the name fits the workers' names (`InvalidSpec`);
2. `check_instance`: the MqttInstance exists and has an mqtt listener (`InstanceNotFound`,
   `NoPlainListener`);
3. the kind's checks before the login (its Secrets, the function's address);
4. `log_in`: with authorization on, the AuthUser and AclPolicy `<name>-<suffix>` applied and Ready and
   the generated password there (`Pending`; `Conflict` when same-named objects are not the
   integration's); with it off, the integration's are removed and the workers log in anonymously;
5. the kind's checks before the workers change (KafkaConnector's connection check);
6. `apply_workers`: the ConfigMap, then the StatefulSet (a scale-down only through the retire gate);
7. `wait_for_retirement`: surplus workers hand their share back before the StatefulSet shrinks
   (`ScalingDown`);
8. the kind's `verdict`: Ready from its state (running, paused, stopped ...).

The status fields a reconcile decides are set on `self.status` (typed, api/status.py) as the steps go
and written with whatever outcome ends it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Generic, Literal, TypeVar
from urllib.parse import urlsplit

import aiohttp
from lightkube import ApiError, AsyncClient
from lightkube.resources.apps_v1 import StatefulSet
from lightkube.resources.core_v1 import ConfigMap
from pydantic import ValidationError

from mqtt_operator.api.base import Model
from mqtt_operator.api.conditions import now_rfc3339
from mqtt_operator.api.kinds import ACL_POLICY, AUTH_USER, Kind
from mqtt_operator.api.status import WorkerStatus
from mqtt_operator.bridge.config import BridgeConfig
from mqtt_operator.broker.errors import BrokerError
from mqtt_operator.broker.probe import MqttLogin, end_sessions
from mqtt_operator.controllers.counters import CounterBook
from mqtt_operator.controllers.entries import InstanceEntry
from mqtt_operator.controllers.latency import LatencyWindows
from mqtt_operator.controllers.outcome import Outcome, not_ready
from mqtt_operator.kube.apply import apply, delete, get
from mqtt_operator.kube.client import resource
from mqtt_operator.kube.secrets import read_secret
from mqtt_operator.resources.broker_config import config_hash
from mqtt_operator.resources.identity import OwnerIdentity
from mqtt_operator.resources.worker_access import worker_policy, worker_user
from mqtt_operator.resources.worker_config import METRICS_PORT, BrokerTarget, worker_config_map
from mqtt_operator.resources.worker_names import WORKER_COMPONENT, WorkerNames
from mqtt_operator.resources.worker_statefulset import WorkerPod, worker_statefulset
from mqtt_operator.settings import OperatorSettings
from mqtt_operator.workers.index import WorkerIndex
from mqtt_operator.workers.scrape import Counters, Series, scrape_all

log = logging.getLogger(__name__)
RETRY_SECONDS = 30
# Counters are written when they change, and at least this often while workers answer.
COUNTERS_REFRESH = timedelta(seconds=60)
PROBE_TIMEOUT = 3.0
RETIRE_TIMEOUT = aiohttp.ClientTimeout(total=5)

SpecT = TypeVar("SpecT", bound=Model)
StatusT = TypeVar("StatusT", bound=WorkerStatus)
Step = Callable[[], Awaitable[Outcome | None]]
Event = tuple[Literal["Normal", "Warning"], str, str]  # type, reason, message


@dataclasses.dataclass
class Memory:
    """What the operator keeps between reconciles of the integrations, for the life of the process
    (lost on a restart by design: each piece is rebuilt from the cluster or redone harmlessly)."""

    # Counters since creation, per kind (controllers/counters.py).
    counters: dict[str, CounterBook] = dataclasses.field(default_factory=dict)
    latency: LatencyWindows = dataclasses.field(default_factory=LatencyWindows)
    # (uid, generation) of the objects whose workers' sessions were ended for a stop: ending them again
    # would do no harm but cost the broker a login per worker on every re-check.
    sessions_ended: set[tuple[str, int]] = dataclasses.field(default_factory=set)
    # uid -> the workers' replicas this operator applied last: the index may not show them yet.
    applied: dict[str, int] = dataclasses.field(default_factory=dict)

    def book(self, kind: str, metrics: Mapping[str, Series]) -> CounterBook:
        return self.counters.setdefault(kind, CounterBook(metrics))

    def forget(self, key: tuple[str, str, str]) -> None:
        for book in self.counters.values():
            book.forget(key)
        self.latency.forget(key)
        self.sessions_ended = {entry for entry in self.sessions_ended if entry[0] != key[2]}
        self.applied.pop(key[2], None)


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or ())


def ready_condition(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"].get("generation"):
        return None  # not reconciled since the last change
    return next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), None)


def spec_replicas(sts: Mapping[str, Any] | None) -> int:
    return int(((sts or {}).get("spec") or {}).get("replicas") or 0)


def workers_left(live_sts: Mapping[str, Any]) -> int:
    """Worker Pods that may still hold their sessions (0 when the controller saw the scale-down done)."""
    status = live_sts.get("status") or {}
    observed = status.get("observedGeneration")
    if observed is not None and observed < live_sts["metadata"].get("generation", 0):
        return max(1, int(status.get("replicas") or 0))  # the scale-down was not seen yet
    return int(status.get("replicas") or 0)


def broker_address(settings: OperatorSettings, instance: InstanceEntry) -> tuple[str, int]:
    """Where the operator reaches the instance's mqtt listener (the workers use its Service)."""
    assert instance.mqtt_port is not None
    ns = instance.namespace
    return settings.broker_address(ns, instance.name, f"{instance.name}.{ns}.svc", instance.mqtt_port)


async def tcp_probe(url: str) -> str | None:
    """None when a TCP connection to the URL's (or `host:port`'s) host and port opens; else why not.
    Sends nothing, so it calls no function and produces no message."""
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_TIMEOUT)
    except (OSError, TimeoutError) as err:
        return f"cannot connect to {host}:{port}: {err or type(err).__name__}"
    writer.close()
    return None


def _stale(counters: Mapping[str, Any], now: datetime) -> bool:
    text = counters.get("lastUpdateTime")
    if not text:
        return True
    try:
        return now - datetime.fromisoformat(str(text)) >= COUNTERS_REFRESH
    except ValueError:
        return True


async def _retire(session: aiohttp.ClientSession, ip: str) -> bool:
    """POST /retire to a worker: whether it has retired (False while retiring or not answering)."""
    try:
        async with session.post(f"http://{ip}:{METRICS_PORT}/retire") as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError) as err:
        log.debug("worker did not answer /retire: %s", err, extra={"worker": ip})
        return False


@dataclasses.dataclass(frozen=True)
class WorkerShape(Generic[SpecT]):
    """A kind's pure builders of its workers (resources/<kind>_config.py)."""

    count: Callable[[SpecT], int]  # how many workers the spec asks for now (0 while paused ...)
    rules: Callable[[SpecT], list[dict[str, Any]]]  # the AclPolicy rules of its own broker account
    pod: Callable[[WorkerNames, SpecT], WorkerPod]


class Integration(ABC, Generic[SpecT, StatusT]):
    """One reconcile, cleanup or counters tick of one integration object.

    Built from the object's body once; `spec` exists after the `parse` step (every later step and hook
    may read it)."""

    kind: ClassVar[Kind]
    status_model: ClassVar[type[WorkerStatus]]
    shape: ClassVar[WorkerShape[Any]]
    # The status.counters (or top-level) figures its workers report, and their metrics.
    metrics: ClassVar[Mapping[str, Series]]

    def __init__(
        self,
        body: Mapping[str, Any],
        client: AsyncClient,
        settings: OperatorSettings,
        instance: InstanceEntry | None,
        workers: WorkerIndex,
        memory: Memory,
    ) -> None:
        self.body = body
        self.client = client
        self.settings = settings
        self.instance_entry = instance
        self.workers = workers
        self.memory = memory
        self.names = WorkerNames.of(body)
        self.identity = OwnerIdentity.from_body(body)
        self.login: MqttLogin | None = None
        self.live: dict[str, Any] | None = None  # the StatefulSet as applied by this reconcile
        self.retiring: list[str] = []  # surplus workers a scale-down waits for
        self.replicas_before = 0  # the workers' replicas before this reconcile applied its own
        self._spec: SpecT | None = None
        self._status: StatusT | None = None

    # --- what each kind says about itself -----------------------------------------------------------

    @staticmethod
    def instance_ref(body: Mapping[str, Any]) -> str:
        """The name of the MqttInstance the workers use, read from the raw body (before parsing, to look
        it up in the index): `spec.instanceRef.name` unless the kind says otherwise."""
        return str(((body.get("spec") or {}).get("instanceRef") or {}).get("name", ""))

    @abstractmethod
    def parse_spec(self, raw: Mapping[str, Any]) -> SpecT: ...

    @abstractmethod
    def new_status(self) -> StatusT:
        """The status fields the spec alone decides (share group, consumer group ...)."""

    def worker_count(self) -> int:
        return self.shape.count(self.spec)

    @abstractmethod
    def config(self, broker: BrokerTarget, username: str | None) -> BridgeConfig: ...

    def checks_before_login(self) -> Sequence[Step]:
        return ()

    def checks_before_workers(self) -> Sequence[Step]:
        return ()

    @abstractmethod
    async def verdict(self) -> Outcome:
        """Ready (or not) once the workers are applied."""

    # --- the context ------------------------------------------------------------------------------

    @property
    def spec(self) -> SpecT:
        assert self._spec is not None, "read after the parse step"
        return self._spec

    @property
    def status(self) -> StatusT:
        assert self._status is not None, "read after the parse step"
        return self._status

    @property
    def instance(self) -> InstanceEntry:
        assert self.instance_entry is not None, "read after the check_instance step"
        return self.instance_entry

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.names.namespace, self.names.name, self.identity.uid)

    def previous(self) -> Mapping[str, Any] | None:
        """The workers' StatefulSet as the cluster has it (kopf's index; None if there is none)."""
        return self.workers.statefulset(self.names.namespace, self.names.workload)

    def previous_replicas(self) -> int:
        """The workers' replicas before this reconcile: the more of what the index shows and what this
        operator applied last (the index may lag its own write by a moment)."""
        return max(spec_replicas(self.previous()), self.memory.applied.get(self.identity.uid, 0))

    def running_pods(self) -> dict[str, str]:
        """Worker Pod name -> IP of the running workers (kopf's index)."""
        return self.workers.running_pods(
            self.names.namespace, self.identity.selector_labels(WORKER_COMPONENT)
        )

    def show_workers(self, sts: Mapping[str, Any] | None) -> None:
        status = (sts or {}).get("status") or {}
        self.status.replicas = int(status.get("replicas") or 0)
        self.status.ready_replicas = int(status.get("readyReplicas") or 0)

    # --- the reconcile ----------------------------------------------------------------------------

    def steps(self) -> list[Step]:
        return [
            self.parse,
            self.check_instance,
            *self.checks_before_login(),
            self.log_in,
            *self.checks_before_workers(),
            self.apply_workers,
            self.wait_for_retirement,
            self.verdict,
        ]

    async def reconcile(self) -> Outcome:
        try:
            for step in self.steps():
                outcome = await step()
                if outcome is not None:
                    return self._with_status(outcome)
        except ApiError as err:
            return self._with_status(
                not_ready(
                    "ApplyFailed",
                    f"the API server refused an owned object: {err.status.message}",
                    retry_after=RETRY_SECONDS,
                )
            )
        raise AssertionError("the verdict step always returns an outcome")

    def _with_status(self, outcome: Outcome) -> Outcome:
        fields = self._status.fields() if self._status is not None else {}
        return dataclasses.replace(outcome, fields={**fields, **outcome.fields})

    async def parse(self) -> Outcome | None:
        """The typed spec, or `InvalidSpec` naming the field (the CRD refuses most of this already)."""
        try:
            self.names.check()
            self._spec = self.parse_spec(self.body.get("spec") or {})
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return not_ready("InvalidSpec", f"spec.{where}: {first['msg']}" if where else first["msg"])
        except ValueError as err:
            return not_ready("InvalidSpec", str(err))
        self._status = self.new_status()
        authorization = self.instance_entry is not None and self.instance_entry.authorization
        self.status.connector_user = self.names.user if authorization else None
        return None

    async def check_instance(self) -> Outcome | None:
        instance = self.instance_entry
        if instance is None or instance.deleting:
            return not_ready(
                "InstanceNotFound",
                f"MqttInstance {self.instance_ref(self.body)!r} does not exist in namespace "
                f"{self.names.namespace!r}: create it or correct its instanceRef.name",
                retry_after=10,
            )
        if instance.mqtt_port is None:
            return not_ready(
                "NoPlainListener",
                f"MqttInstance {instance.name!r} has no mqtt listener, which the workers use: "
                "add spec.listeners.mqtt",
            )
        return None

    def worker_rules(self) -> list[dict[str, Any]]:
        """The AclPolicy rules of the workers' own broker account."""
        return self.shape.rules(self.spec)

    async def log_in(self) -> Outcome | None:
        """The login the workers use: the integration's own account, or anonymous when the instance
        enforces no authorization (then its own objects are removed)."""
        host, port = broker_address(self.settings, self.instance)
        if not self.instance.authorization:
            await self.remove_identity()
            self.login = MqttLogin(host, port, None, None)
            return None
        foreign = await self.foreign_identity()
        if foreign is not None:
            return not_ready(
                "Conflict",
                f"{foreign} exists and does not belong to this {self.identity.kind}; its workers need that "
                "name for their own broker account: rename or delete the existing object",
                retry_after=RETRY_SECONDS,
            )
        instance = self.instance.name
        user = await apply(self.client, worker_user(self.identity, self.names, instance))
        policy = await apply(
            self.client, worker_policy(self.identity, self.names, instance, self.worker_rules())
        )
        waiting = []
        for obj in (user, policy):
            cond = ready_condition(obj)
            if cond is None or cond.get("status") != "True":
                why = f" ({cond.get('reason')}: {cond.get('message')})" if cond else ""
                waiting.append(f"{obj['kind']} {obj['metadata']['name']}{why}")
        if waiting:
            return not_ready(
                "Pending",
                f"waiting for the workers' own broker identity to be Ready: {'; '.join(waiting)}",
                retry_after=5,
                warn=False,
            )
        secret = await read_secret(self.client, self.names.namespace, self.names.credentials)
        password = secret.data.get("password") if secret else None
        if not password:
            return not_ready(
                "Pending",
                f"waiting for the generated password in Secret {self.names.credentials!r}",
                retry_after=5,
                warn=False,
            )
        self.login = MqttLogin(host, port, self.names.user, password)
        return None

    async def apply_workers(self) -> Outcome | None:
        """The ConfigMap, then the StatefulSet (rolled when the config changes; shrunk only through the
        retire gate)."""
        assert self.login is not None
        instance = self.instance
        broker = BrokerTarget(
            host=f"{instance.name}.{instance.namespace}.svc",
            port=self.instance.mqtt_port or 0,
            session_expiry_seconds=instance.session_expiry_seconds,
            client_events_topic=instance.client_events_topic,
        )
        config_map = worker_config_map(self.identity, self.names, self.config(broker, self.login.username))
        await apply(self.client, config_map)
        pod = self.shape.pod(self.names, self.spec)
        self.replicas_before = self.previous_replicas()
        replicas = await self.scale_down_gate(pod.replicas)
        self.live = await apply(
            self.client,
            worker_statefulset(
                self.identity,
                dataclasses.replace(pod, replicas=replicas),
                image=self.settings.worker_image,
                config_hash=config_hash(config_map["data"]),
                authorization=instance.authorization,
            ),
        )
        self.memory.applied[self.identity.uid] = replicas
        self.show_workers(self.live)
        return None

    async def wait_for_retirement(self) -> Outcome | None:
        if not self.retiring:
            return None
        return not_ready(
            "ScalingDown",
            f"waiting for {', '.join(self.retiring)} to hand their share of the subscription back "
            "(POST /retire) before the workers are scaled down",
            retry_after=3,
            warn=False,
        )

    async def scale_down_gate(self, desired: int) -> int:
        """The replicas to apply now; fills `retiring` with the workers a scale-down still waits for.

        Mosquitto keeps routing a share of a `$share` group to an offline persistent session, so a
        replica removed with its session left behind would swallow messages until the session expires.
        Before the StatefulSet shrinks, each surplus worker is asked to retire (POST /retire:
        unsubscribe, process what was queued for it, end its session); once all running ones have, the
        StatefulSet shrinks and the sessions of surplus workers that were not running are ended (losing
        only what they had queued, instead of everything routed to them until they expire). Scaling to
        0 (paused, disabled) keeps every session on purpose: the messages wait there for the same
        workers to come back.
        """
        current = self.replicas_before
        if desired == 0 or desired >= current:
            return desired
        assert self.login is not None
        pods = self.running_pods()
        surplus = [f"{self.names.workload}-{ordinal}" for ordinal in range(desired, current)]
        running = [pod for pod in surplus if pod in pods]
        async with aiohttp.ClientSession(timeout=RETIRE_TIMEOUT) as session:
            retired = await asyncio.gather(*(_retire(session, pods[pod]) for pod in running))
        self.retiring = [pod for pod, done in zip(running, retired, strict=True) if not done]
        if self.retiring:
            return current
        not_running = [pod for pod in surplus if pod not in pods]
        if not_running:
            log.warning(
                "ending the sessions of surplus workers that were not running: what was queued for them "
                "is lost",
                extra={"workers": not_running},
            )
        try:
            await end_sessions(self.login, [self.names.replica_client_id(o) for o in range(desired, current)])
        except BrokerError as err:
            log.warning(
                "could not end the surplus workers' sessions: %s", err, extra={"owner": self.names.name}
            )
        return desired

    async def end_all_sessions(self) -> Outcome | None:
        """For a stop: once no worker runs, end every worker's session (and the messages queued in it).
        Done once per generation."""
        done = (self.identity.uid, int(self.body["metadata"].get("generation") or 0))
        if done in self.memory.sessions_ended:
            return None
        assert self.live is not None and self.login is not None
        left = workers_left(self.live)
        if left:
            return not_ready(
                "Stopping",
                f"waiting for {left} worker(s) to stop before their MQTT sessions are removed",
                retry_after=5,
                warn=False,
            )
        try:
            await end_sessions(self.login, self.names.client_ids(self.spec_replicas(), self.replicas_before))
        except BrokerError as err:
            return not_ready(
                "BrokerUnreachable", f"cannot remove the workers' MQTT sessions: {err}", retry_after=15
            )
        self.memory.sessions_ended.add(done)
        return None

    def spec_replicas(self) -> int:
        replicas: int = getattr(self.spec, "replicas")  # noqa: B009 - every integration spec has it
        return replicas

    # --- the integration's own broker identity -----------------------------------------------------

    async def foreign_identity(self) -> str | None:
        """The AuthUser or AclPolicy named for the workers that exists but is not this integration's, if
        any: applying over it would take it over, and deleting the integration would delete it."""
        for kind in (AUTH_USER, ACL_POLICY):
            live = await get(self.client, resource(kind), self.names.namespace, self.names.user)
            if live is not None and not owned_by(live, self.identity.uid):
                return f"{kind.kind} {self.names.user}"
        return None

    async def remove_identity(self) -> None:
        """Delete the integration's AuthUser and AclPolicy; ones it does not own are left alone."""
        for kind in (ACL_POLICY, AUTH_USER):
            live = await get(self.client, resource(kind), self.names.namespace, self.names.user)
            if live is not None and owned_by(live, self.identity.uid):
                await delete(self.client, resource(kind), self.names.namespace, self.names.user)

    async def existing_login(self) -> MqttLogin | None:
        """The workers' login as it stands, without applying anything (for cleanup); None if none."""
        instance = self.instance_entry
        if instance is None or instance.deleting or instance.mqtt_port is None:
            return None
        host, port = broker_address(self.settings, instance)
        if not instance.authorization:
            return MqttLogin(host, port, None, None)
        secret = await read_secret(self.client, self.names.namespace, self.names.credentials)
        if secret is None or not secret.data.get("password"):
            return None
        return MqttLogin(host, port, self.names.user, secret.data["password"])

    # --- deletion ---------------------------------------------------------------------------------

    async def cleanup(self) -> None:
        """Remove the workers, their config, the integration's broker identity and (best effort) its
        sessions with the messages still queued for them.

        In a cluster the ownerReferences would let the garbage collector remove the objects too; doing
        it here does not depend on one running. Sessions left behind would hold the broker's memory
        until they expire."""
        ns, workload = self.names.namespace, self.names.workload
        previous = self.previous_replicas()
        await delete(self.client, StatefulSet, ns, workload)
        await delete(self.client, ConfigMap, ns, workload)
        login = await self.existing_login()
        if login is not None and await self.parse() is None:
            try:
                await end_sessions(login, self.names.client_ids(self.spec_replicas(), previous))
            except BrokerError as err:
                log.warning(
                    "could not remove the workers' MQTT sessions: %s", err, extra={"owner": self.names.name}
                )
        await self.remove_identity()
        self.memory.forget(self.key)

    # --- figures from the workers ------------------------------------------------------------------

    def metrics_targets(self) -> dict[str, str]:
        """worker name -> host:port of its /metrics: the running worker Pods, or the operator's override."""
        override = self.settings.worker_metrics_addresses.get(f"{self.names.namespace}/{self.names.name}")
        if override is not None:
            return {address: address for address in override}
        return {pod: f"{ip}:{METRICS_PORT}" for pod, ip in self.running_pods().items()}

    async def collect_figures(self) -> tuple[dict[str, Any], Event | None]:
        """`figures()`, checked against the kind's typed status (a field its CRD lacks fails here)."""
        fields, event = await self.figures()
        return self.status_model.model_validate(fields).fields(), event

    async def figures(self) -> tuple[dict[str, Any], Event | None]:
        """The status fields the workers decide, only those that should be written, and an Event to
        record about what they did meanwhile (None). By default `status.counters`: each of `metrics`
        summed over the workers since the object was created, written when a value changes and at
        least every COUNTERS_REFRESH while workers answer; and replicas and ready replicas."""
        fields, _ = await self.collect_counters()
        return fields, None

    async def collect_counters(self) -> tuple[dict[str, Any], Counters]:
        scraped = await scrape_all(self.kind.kind, self.metrics_targets(), self.metrics)
        shown: Mapping[str, Any] | None = (self.body.get("status") or {}).get("counters")
        book = self.memory.book(self.kind.kind, self.metrics)
        totals = book.update(self.key, shown, scraped)
        fields: dict[str, Any] = self.worker_fields()
        if shown is None:
            fields["counters"] = {**totals, **({"lastUpdateTime": now_rfc3339()} if scraped else {})}
        elif scraped and (
            any(totals[k] != shown.get(k) for k in self.metrics) or _stale(shown, datetime.now(UTC))
        ):
            fields["counters"] = {**totals, "lastUpdateTime": now_rfc3339()}
        return fields, totals

    def worker_fields(self) -> dict[str, Any]:
        status = (self.previous() or {}).get("status") or {}
        selector = self.identity.selector_labels(WORKER_COMPONENT)
        return {
            "replicas": int(status.get("replicas") or 0),
            "readyReplicas": int(status.get("readyReplicas") or 0),
            "selector": ",".join(f"{key}={value}" for key, value in sorted(selector.items())),
        }
