"""Starting the operator: kopf settings, the shared context, the handlers, then kopf's loop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from mqtt_operator import metrics
from mqtt_operator.api.kinds import ALL_KINDS, FINALIZER, GROUP, VERSION
from mqtt_operator.broker.pool import BrokerPool
from mqtt_operator.controllers.access import AccessSync
from mqtt_operator.handlers import access, integrations
from mqtt_operator.handlers.context import OperatorContext
from mqtt_operator.handlers.handled import HandledMemory
from mqtt_operator.handlers.reconcile import count_object
from mqtt_operator.kube.client import make_client
from mqtt_operator.settings import OperatorSettings

log = logging.getLogger("mqtt_operator")


def configure_kopf(
    settings: kopf.OperatorSettings, operator: OperatorSettings, handled: HandledMemory
) -> None:
    settings.persistence.finalizer = FINALIZER
    # What kopf knows of each object stays in memory (handlers/handled.py): no annotation PATCH per
    # handled object; only a retry's wake-up still writes one (kopf's touch-dummy annotation).
    settings.persistence.progress_storage = handled.progress
    settings.persistence.diffbase_storage = handled.diffbase
    # Our Events are written deliberately by kube/events.py; kopf's per-log-line Events would
    # duplicate them and could carry text we never meant to publish.
    settings.posting.enabled = False
    # One operator per namespace set; no peering objects (and no RBAC for them) needed.
    settings.peering.standalone = True
    settings.peering.clusterwide = operator.all_namespaces
    settings.networking.error_backoffs = (1, 2, 4, 8, 16, 30)
    settings.execution.max_workers = 8
    # How many objects are handled at once. Unbounded, 2,000 objects applied together were 2,000
    # handlers in flight, each with its bodies and state, and the heap kept the peak: 232 MiB against
    # 156 MiB with 256 at once (docs/helm.md, "Memory and objectWorkers").
    settings.queueing.worker_limit = operator.object_workers
    # Handlers retry with backoff through TemporaryError; this bounds unexpected exceptions too.
    settings.execution.default_backoff = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


def build_registry(operator: OperatorSettings) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    with _default_registry(registry):
        access.register(operator.drift_period_seconds)
        integrations.register_all(operator.drift_period_seconds)
        for kind in ALL_KINDS:
            kopf.on.event(GROUP, VERSION, kind.plural)(count_object)

        @kopf.on.startup()
        async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
            handled = HandledMemory()
            configure_kopf(settings, operator, handled)
            client = make_client(operator.field_manager)
            pool = BrokerPool()
            memo["ctx"] = OperatorContext(
                settings=operator,
                client=client,
                pool=pool,
                access=AccessSync(client, pool, operator),
                handled=handled,
            )
            log.info("operator started", extra={"namespaces": list(operator.namespaces) or "all"})

        @kopf.on.login()
        def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
            # kopf's built-in logins: the pod's service account in a cluster, else $KUBECONFIG.
            return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

        @kopf.on.cleanup()
        async def cleanup(memo: kopf.Memo, **_: Any) -> None:
            ctx: OperatorContext | None = memo.get("ctx")
            if ctx is not None:
                await ctx.pool.close()
                await ctx.client.close()

    return registry


class _default_registry:
    """Temporarily make `registry` kopf's default so the decorators register into it."""

    def __init__(self, registry: kopf.OperatorRegistry) -> None:
        self.registry = registry
        self.previous: kopf.OperatorRegistry | None = None

    def __enter__(self) -> None:
        self.previous = kopf.get_default_registry()
        kopf.set_default_registry(self.registry)

    def __exit__(self, *exc: object) -> None:
        assert self.previous is not None
        kopf.set_default_registry(self.previous)


def run(operator: OperatorSettings, stop_flag: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (or `stop_flag`)."""
    liveness = f"http://0.0.0.0:{operator.health_port}/healthz" if operator.health_port else None
    metrics.serve(operator.metrics_port)
    kopf.run(
        registry=build_registry(operator),
        clusterwide=operator.all_namespaces,
        namespaces=operator.namespaces,
        standalone=True,
        liveness_endpoint=liveness,
        memo=kopf.Memo(),
        stop_flag=stop_flag,
    )
