"""FunctionTrigger's own part of the integration reconcile (integration.py): the function's address,
its workers' shape, whether the function answers, and a Warning Event when messages failed.

The steps FunctionTrigger adds to the shared ones, in order:

- before the login: the function's URL: `url` as given, a Service's cluster address
  (`ServiceNotFound`), or a Knative Service's `status.address.url` (`KnativeNotInstalled`,
  `ServiceNotFound`, `FunctionNotReady`);
- the verdict: disabled (no worker; their sessions stay in the broker, so messages published meanwhile
  wait for them), or `FunctionReachable`: what the workers report
  (`bridge_connected{endpoint="function"}`), or while no worker answers, a TCP connection the
  operator opens to the function's host and port (it calls nothing). An unreachable function makes the
  trigger not Ready, but the workers still run: they hold the sessions in which messages wait until the
  function answers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import Service

from mqtt_operator.api.function import FunctionTriggerSpec
from mqtt_operator.api.kinds import FUNCTION_TRIGGER
from mqtt_operator.api.status import FunctionTriggerStatus
from mqtt_operator.bridge.config import BridgeConfig
from mqtt_operator.controllers.integration import (
    RETRY_SECONDS,
    Event,
    Integration,
    Step,
    WorkerShape,
    tcp_probe,
)
from mqtt_operator.controllers.outcome import ConditionUpdate, Outcome, not_ready, ready
from mqtt_operator.kube.apply import get
from mqtt_operator.resources.trigger_config import trigger_config, trigger_pod, trigger_rules, worker_count
from mqtt_operator.resources.worker_config import BrokerTarget
from mqtt_operator.workers.scrape import FUNCTION_GAUGES, FUNCTION_METRICS, FUNCTION_REACHABLE, scrape_all

log = logging.getLogger(__name__)
KnativeService = create_namespaced_resource("serving.knative.dev", "v1", "Service", "services")


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


async def function_reachable(targets: Mapping[str, str], url: str) -> ConditionUpdate:
    scraped = await scrape_all(FUNCTION_TRIGGER.kind, targets, FUNCTION_GAUGES)
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


def failure_event(shown: Mapping[str, Any] | None, totals: Mapping[str, int]) -> Event | None:
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


class FunctionTrigger(Integration[FunctionTriggerSpec, FunctionTriggerStatus]):
    kind = FUNCTION_TRIGGER
    status_model = FunctionTriggerStatus
    shape = WorkerShape(worker_count, trigger_rules, trigger_pod)
    metrics = FUNCTION_METRICS

    def parse_spec(self, raw: Mapping[str, Any]) -> FunctionTriggerSpec:
        return FunctionTriggerSpec.model_validate(raw)

    def new_status(self) -> FunctionTriggerStatus:
        return FunctionTriggerStatus(share_group=self.names.share_group)

    def config(self, broker: BrokerTarget, username: str | None) -> BridgeConfig:
        assert self.status.function_url is not None
        return trigger_config(self.names, self.spec, broker, username, self.status.function_url)

    def checks_before_login(self) -> Sequence[Step]:
        return (self.find_function,)

    async def find_function(self) -> Outcome | None:
        url = await resolve_url(self.client, self.names.namespace, self.spec)
        if isinstance(url, Outcome):
            return url
        self.status.function_url = url
        return None

    async def verdict(self) -> Outcome:
        if not self.spec.enabled:
            return not_ready(
                "Disabled",
                "enabled: false: no worker runs; their MQTT sessions stay in the broker, so messages "
                "published meanwhile wait for them (up to the instance's sessions.expiry, "
                f"{self.instance.session_expiry_seconds} s)",
                warn=False,
                extra=(
                    ConditionUpdate("FunctionReachable", "Unknown", "Disabled", "not checked while disabled"),
                ),
            )
        url = self.status.function_url or ""
        reachable = await function_reachable(self.metrics_targets(), url)
        workers = self.worker_count()
        if reachable.status == "False":
            return not_ready(
                "FunctionUnreachable",
                f"{reachable.message}; {workers} worker(s) hold the subscription meanwhile",
                retry_after=RETRY_SECONDS,
                extra=(reachable,),
            )
        ordered = " (ordered: one worker, one call at a time)" if self.spec.ordered else ""
        return ready(
            "Running", f"{workers} worker(s){ordered}, {self.status.ready_replicas} ready", extra=(reachable,)
        )

    async def figures(self) -> tuple[dict[str, Any], Event | None]:
        """The counters, and a Warning Event when messages failed for good meanwhile."""
        shown = (self.body.get("status") or {}).get("counters")
        fields, totals = await self.collect_counters()
        return fields, failure_event(shown, totals) if "counters" in fields else None
