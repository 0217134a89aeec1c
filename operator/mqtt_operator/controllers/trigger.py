"""FunctionTrigger: the function's address, the trigger's own broker identity, the workers' ConfigMap and
StatefulSet, whether the function answers; on deletion, what it created goes; counters from its workers.

One reconcile, in this order (each step's failure is the outcome, so the earliest cause is reported):

1. the spec parses and the MqttInstance exists (`InvalidSpec`, `InstanceNotFound`, `NoPlainListener`);
2. the function's URL: `url` as given, a Service's cluster address (`ServiceNotFound`), or a Knative
   Service's `status.address.url` (`KnativeNotInstalled`, `ServiceNotFound`, `FunctionNotReady`);
3. with authorization on, the AuthUser and AclPolicy `<name>-trigger` are applied and Ready (`Pending`,
   `Conflict`); with it off, the trigger's are removed;
4. the ConfigMap and the StatefulSet (no replica while `enabled: false`: their sessions stay in the
   broker, so messages published meanwhile wait for them);
5. `FunctionReachable`: what the workers report (`bridge_connected{endpoint="function"}`), or while no
   worker answers, a TCP connection the operator opens to the function's host and port (it calls
   nothing). An unreachable function makes the trigger not Ready, but the workers still run: they
   hold the sessions in which messages wait until the function answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from lightkube import ApiError, AsyncClient
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import StatefulSet
from lightkube.resources.core_v1 import ConfigMap, Service
from pydantic import ValidationError

from mqtt_operator.api.conditions import now_rfc3339
from mqtt_operator.api.function import FunctionTriggerSpec
from mqtt_operator.broker.errors import BrokerError
from mqtt_operator.broker.probe import end_sessions
from mqtt_operator.controllers.counters import CounterBook
from mqtt_operator.controllers.entries import InstanceEntry
from mqtt_operator.controllers.outcome import ConditionUpdate, Outcome, not_ready
from mqtt_operator.controllers.workers import (
    broker_login,
    client_ids,
    existing_login,
    metrics_targets,
    remove_identity,
    worker_fields,
)
from mqtt_operator.kube.apply import apply, delete, get
from mqtt_operator.resources.bridge_config import BrokerTarget
from mqtt_operator.resources.bridge_statefulset import worker_statefulset
from mqtt_operator.resources.broker_config import config_hash
from mqtt_operator.resources.identity import OwnerIdentity
from mqtt_operator.resources.trigger_config import (
    trigger_config,
    trigger_config_map,
    trigger_pod,
    trigger_rules,
    worker_count,
)
from mqtt_operator.resources.worker_access import worker_policy
from mqtt_operator.resources.worker_names import WorkerNames, trigger_worker_names
from mqtt_operator.settings import OperatorSettings
from mqtt_operator.workers.scrape import FUNCTION_GAUGES, FUNCTION_METRICS, FUNCTION_REACHABLE, scrape_all

log = logging.getLogger(__name__)
RETRY_SECONDS = 30
PROBE_TIMEOUT = 3.0
COUNTERS_REFRESH = timedelta(seconds=60)
KnativeService = create_namespaced_resource("serving.knative.dev", "v1", "Service", "services")


def names_of(body: Mapping[str, Any]) -> WorkerNames:
    meta = body["metadata"]
    return trigger_worker_names(meta["namespace"], meta["name"])


def _parse(body: Mapping[str, Any]) -> FunctionTriggerSpec | Outcome:
    try:
        names_of(body).check()
        return FunctionTriggerSpec.model_validate(body.get("spec") or {})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return not_ready("InvalidSpec", f"spec.{where}: {first['msg']}" if where else first["msg"])
    except ValueError as err:
        return not_ready("InvalidSpec", str(err))


async def resolve_url(client: AsyncClient, namespace: str, spec: FunctionTriggerSpec) -> str | Outcome:
    """The URL the workers call, or why there is none yet."""
    target = spec.function
    if target.url is not None:
        return target.url
    if target.service_ref is not None:
        ref = target.service_ref
        if await get(client, Service, namespace, ref.name) is None:
            return not_ready(
                "ServiceNotFound",
                f"Service {ref.name!r} (spec.function.serviceRef) does not exist in namespace {namespace!r}",
                retry_after=RETRY_SECONDS,
            )
        return f"http://{ref.name}.{namespace}.svc:{ref.port}{ref.path}"
    knative = target.knative_service_ref
    assert knative is not None
    try:
        live = await client.get(KnativeService, knative.name, namespace=namespace)
    except ApiError as err:
        if err.status.code != 404:
            raise
        # 404 for the object, or for the whole resource type when Knative Serving is not installed.
        if (err.status.details and err.status.details.name) == knative.name:
            return not_ready(
                "ServiceNotFound",
                f"Knative Service {knative.name!r} (spec.function.knativeServiceRef) does not exist in "
                f"namespace {namespace!r}",
                retry_after=RETRY_SECONDS,
            )
        return not_ready(
            "KnativeNotInstalled",
            "spec.function.knativeServiceRef needs Knative Serving (services.serving.knative.dev), which "
            "this cluster does not serve: install it, or use spec.function.url or serviceRef",
            retry_after=RETRY_SECONDS * 4,
        )
    address = ((live.get("status") or {}).get("address") or {}).get("url") or (live.get("status") or {}).get(
        "url"
    )
    if not address:
        return not_ready(
            "FunctionNotReady",
            f"Knative Service {knative.name!r} has no address yet (status.address.url)",
            retry_after=10,
            warn=False,
        )
    return str(address).rstrip("/") + knative.path


async def tcp_probe(url: str) -> str | None:
    """None when a TCP connection to the URL's host and port opens; else why not. Sends nothing."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_TIMEOUT)
    except (OSError, TimeoutError) as err:
        return f"cannot connect to {host}:{port}: {err or type(err).__name__}"
    writer.close()
    return None


async def function_reachable(
    client: AsyncClient, settings: OperatorSettings, identity: OwnerIdentity, url: str
) -> ConditionUpdate:
    scraped = await scrape_all(await metrics_targets(client, settings, identity), FUNCTION_GAUGES)
    if scraped:
        reaching = sum(1 for values in scraped.values() if values.get(FUNCTION_REACHABLE, 0) > 0)
        if reaching:
            return ConditionUpdate(
                "FunctionReachable",
                "True",
                "Reachable",
                f"{reaching} of {len(scraped)} worker(s) reach {url}",
            )
        return ConditionUpdate(
            "FunctionReachable",
            "False",
            "Unreachable",
            f"no worker reaches {url} (messages wait in the broker and are delivered once it answers)",
        )
    why = await tcp_probe(url)
    if why is None:
        return ConditionUpdate(
            "FunctionReachable",
            "True",
            "Reachable",
            f"the operator connected to {url} (no worker reports yet)",
        )
    return ConditionUpdate("FunctionReachable", "False", "Unreachable", f"{why} (checked by the operator)")


async def reconcile_trigger(
    body: Mapping[str, Any], client: AsyncClient, settings: OperatorSettings, instance: InstanceEntry | None
) -> Outcome:
    """`instance` is the MqttInstance named by spec.instanceRef (from the index), None if there is none."""
    parsed = _parse(body)
    if isinstance(parsed, Outcome):
        return parsed
    spec = parsed
    identity = OwnerIdentity.from_body(body)
    names = names_of(body)
    namespace = identity.namespace
    authorization = bool(instance and instance.authorization)
    fields: dict[str, Any] = {
        "shareGroup": names.share_group,
        "connectorUser": names.user if authorization else None,
    }
    if instance is None or instance.deleting:
        return not_ready(
            "InstanceNotFound",
            f"MqttInstance {spec.instance_ref.name!r} does not exist in namespace {namespace!r}: "
            "create it or correct spec.instanceRef.name",
            retry_after=10,
            **fields,
        )
    if instance.mqtt_port is None:
        return not_ready(
            "NoPlainListener",
            f"MqttInstance {instance.name!r} has no mqtt listener, which the workers use: "
            "add spec.listeners.mqtt",
            **fields,
        )
    try:
        url = await resolve_url(client, namespace, spec)
        if isinstance(url, Outcome):
            return Outcome(url.conditions, {**fields, **url.fields}, url.retry_after, url.event)
        fields["functionUrl"] = url
        policy = worker_policy(identity, names, instance.name, trigger_rules(spec))
        login = await broker_login(client, settings, identity, names, instance, policy, fields)
        if isinstance(login, Outcome):
            return login
        broker = BrokerTarget(
            host=f"{instance.name}.{namespace}.svc",
            port=instance.mqtt_port,
            session_expiry_seconds=instance.session_expiry_seconds,
        )
        config_map = trigger_config_map(
            identity, names, trigger_config(names, spec, broker, login.username, url)
        )
        await apply(client, config_map)
        live_sts = await apply(
            client,
            worker_statefulset(
                identity,
                trigger_pod(names, spec),
                image=settings.worker_image,
                config_hash=config_hash(config_map["data"]),
                authorization=instance.authorization,
            ),
        )
    except ApiError as err:
        return not_ready(
            "ApplyFailed",
            f"the API server refused an owned object: {err.status.message}",
            retry_after=RETRY_SECONDS,
            **fields,
        )
    fields.update(worker_fields(live_sts))
    if not spec.enabled:
        return Outcome(
            conditions=(
                ConditionUpdate(
                    "Ready",
                    "False",
                    "Disabled",
                    "enabled: false: no worker runs; their MQTT sessions stay in the broker, so messages "
                    f"published meanwhile wait for them (up to the instance's sessions.expiry, "
                    f"{instance.session_expiry_seconds} s)",
                ),
                ConditionUpdate("FunctionReachable", "Unknown", "Disabled", "not checked while disabled"),
            ),
            fields=fields,
        )
    reachable = await function_reachable(client, settings, identity, url)
    workers = worker_count(spec)
    ordered = " (ordered: one worker, one call at a time)" if spec.ordered else ""
    if reachable.status == "False":
        return not_ready(
            "FunctionUnreachable",
            f"{reachable.message}; {workers} worker(s) hold the subscription meanwhile",
            retry_after=RETRY_SECONDS,
            extra=(reachable,),
            **fields,
        )
    return Outcome(
        conditions=(
            ConditionUpdate(
                "Ready", "True", "Running", f"{workers} worker(s){ordered}, {fields['readyReplicas']} ready"
            ),
            reachable,
        ),
        fields=fields,
    )


async def delete_trigger(
    body: Mapping[str, Any], client: AsyncClient, settings: OperatorSettings, instance: InstanceEntry | None
) -> None:
    """Remove the workers, their config, the trigger's broker identity, and (best effort) its sessions
    with the messages still queued for them."""
    identity = OwnerIdentity.from_body(body)
    names = names_of(body)
    live_sts = await get(client, StatefulSet, names.namespace, names.workload)
    await delete(client, StatefulSet, names.namespace, names.workload)
    await delete(client, ConfigMap, names.namespace, names.workload)
    login = await existing_login(client, settings, names, instance)
    parsed = _parse(body)
    if login is not None and not isinstance(parsed, Outcome):
        previous = int(((live_sts or {}).get("spec") or {}).get("replicas") or 0)
        try:
            await end_sessions(login, client_ids(names, parsed.replicas, previous))
        except BrokerError as err:
            log.warning("could not remove the workers' MQTT sessions: %s", err, extra={"trigger": names.name})
    await remove_identity(client, identity, names)


def _stale(counters: Mapping[str, Any], now: datetime) -> bool:
    text = counters.get("lastUpdateTime")
    if not text:
        return True
    try:
        return now - datetime.fromisoformat(str(text)) >= COUNTERS_REFRESH
    except ValueError:
        return True


def failure_event(shown: Mapping[str, Any] | None, totals: Mapping[str, int]) -> tuple[str, str, str] | None:
    """A Warning Event when messages failed for good since the counters were last shown."""
    if shown is None:
        return None
    failed = totals["failed"] - int(shown.get("failed", 0))
    dead = totals["deadLettered"] - int(shown.get("deadLettered", 0))
    if failed <= 0:
        return None
    return (
        "Warning",
        "MessagesFailed",
        f"{failed} message(s) failed for good since the last report ({dead} dead-lettered); "
        f"{totals['retried'] - int(shown.get('retried', 0))} retried call(s), "
        f"{totals['timedOut'] - int(shown.get('timedOut', 0))} timed out: see the workers' logs",
    )


async def collect_counters(
    body: Mapping[str, Any], client: AsyncClient, settings: OperatorSettings, book: CounterBook
) -> tuple[dict[str, Any], tuple[str, str, str] | None]:
    """The status fields the workers decide (counters summed since the trigger was created, replicas),
    only those that should be written; and an Event to record when messages failed meanwhile."""
    identity = OwnerIdentity.from_body(body)
    names = names_of(body)
    scraped = await scrape_all(await metrics_targets(client, settings, identity), FUNCTION_METRICS)
    status = body.get("status") or {}
    shown: Mapping[str, Any] | None = status.get("counters")
    totals = book.update((names.namespace, names.name, identity.uid), shown, scraped)
    fields: dict[str, Any] = dict(
        worker_fields(await get(client, StatefulSet, names.namespace, names.workload))
    )
    now = datetime.now(UTC)
    if shown is None:
        fields["counters"] = {**totals, **({"lastUpdateTime": now_rfc3339()} if scraped else {})}
    elif scraped and (any(totals[k] != shown.get(k) for k in FUNCTION_METRICS) or _stale(shown, now)):
        fields["counters"] = {**totals, "lastUpdateTime": now_rfc3339()}
    return fields, failure_event(shown, totals) if "counters" in fields else None
