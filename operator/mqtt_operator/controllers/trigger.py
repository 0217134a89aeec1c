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

import logging
from collections.abc import Mapping
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import Service

from mqtt_operator.api.function import FunctionTriggerSpec
from mqtt_operator.controllers.counters import CounterBook
from mqtt_operator.controllers.entries import InstanceEntry
from mqtt_operator.controllers.outcome import ConditionUpdate, Outcome, not_ready
from mqtt_operator.controllers.workers import (
    apply_workers,
    broker_login,
    broker_target,
    delete_workers,
    instance_problem,
    metrics_targets,
    parse_spec,
    scaling_down,
    tcp_probe,
    worker_fields,
)
from mqtt_operator.controllers.workers import (
    collect_counters as collect_worker_counters,
)
from mqtt_operator.kube.apply import get
from mqtt_operator.resources.identity import OwnerIdentity
from mqtt_operator.resources.trigger_config import (
    trigger_config,
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
KnativeService = create_namespaced_resource("serving.knative.dev", "v1", "Service", "services")


def names_of(body: Mapping[str, Any]) -> WorkerNames:
    meta = body["metadata"]
    return trigger_worker_names(meta["namespace"], meta["name"])


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
        # A Status answer: Knative's API is served, the object is missing.
        return not_ready(
            "ServiceNotFound",
            f"Knative Service {knative.name!r} (spec.function.knativeServiceRef) does not exist in "
            f"namespace {namespace!r}",
            retry_after=RETRY_SECONDS,
        )
    except Exception as err:
        # The API server answers a plain-text 404 (no Status) for an API group it does not serve.
        if getattr(getattr(err, "response", None), "status_code", None) != 404:
            raise
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
    names = names_of(body)
    parsed = parse_spec(body, FunctionTriggerSpec, names)
    if isinstance(parsed, Outcome):
        return parsed
    spec = parsed
    identity = OwnerIdentity.from_body(body)
    namespace = identity.namespace
    authorization = bool(instance and instance.authorization)
    fields: dict[str, Any] = {
        "shareGroup": names.share_group,
        "connectorUser": names.user if authorization else None,
    }
    problem = instance_problem(spec.instance_ref.name, namespace, instance, fields)
    if problem is not None or instance is None:
        return problem or Outcome()
    try:
        url = await resolve_url(client, namespace, spec)
        if isinstance(url, Outcome):
            return Outcome(url.conditions, {**fields, **url.fields}, url.retry_after, url.event)
        fields["functionUrl"] = url
        policy = worker_policy(identity, names, instance.name, trigger_rules(spec))
        login = await broker_login(client, settings, identity, names, instance, policy, fields)
        if isinstance(login, Outcome):
            return login
        config = trigger_config(names, spec, broker_target(instance), login.username, url)
        live_sts, waiting = await apply_workers(
            client, settings, identity, trigger_pod(names, spec), config, login, instance.authorization
        )
    except ApiError as err:
        return not_ready(
            "ApplyFailed",
            f"the API server refused an owned object: {err.status.message}",
            retry_after=RETRY_SECONDS,
            **fields,
        )
    fields.update(worker_fields(live_sts))
    if waiting:
        return scaling_down(waiting, fields)
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
    names = names_of(body)
    parsed = parse_spec(body, FunctionTriggerSpec, names)
    replicas = None if isinstance(parsed, Outcome) else parsed.replicas
    await delete_workers(client, settings, OwnerIdentity.from_body(body), names, instance, replicas)


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
    shown = (body.get("status") or {}).get("counters")
    fields, totals = await collect_worker_counters(
        body, client, settings, book, names_of(body), FUNCTION_METRICS
    )
    return fields, failure_event(shown, totals) if "counters" in fields else None
