"""What AuthUsers and AclPolicies cost from creation to Ready, counted: the operator's requests to a real
kube-apiserver (from its audit log, by verb and resource) and the dynamic-security commands and file
saves of a real Mosquitto. The bounds are the figures after issue 18's cuts (docs/broker-access.md,
"What an account costs"): a change that brings a write back fails here.

`pytest -s` prints the figures; ACCESS_WRITES_PAIRS=1000 counts at the size of bench/bench_access.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.generic_resource import create_namespaced_resource
from prometheus_client.parser import text_string_to_metric_families
from tests.integration.operator_stack import ADMIN, MQACL, MQI, MQU, instance

from testenv.cluster import Namespace, wait_for
from testenv.device import connects
from testenv.kube import ControlPlane
from testenv.mosquitto import FileSaves, Mosquitto, dynsec_file, from_rendered, init_dynsec
from testenv.operator import OperatorProcess
from testenv.process import free_port

pytestmark = pytest.mark.integration
CRDS = "crds"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
# Commands that change the broker (on Mosquitto 2.0 each one a save of its dynamic-security file, unless
# our plugin batches them).
MODIFYING = frozenset({"createClient", "addClientRole", "createRole", "setDefaultACLAccess"})
ACCESS_RESOURCES = frozenset({"authusers", "aclpolicies"})
PAIRS = int(os.environ.get("ACCESS_WRITES_PAIRS", "40"))
AuthUser = create_namespaced_resource("mqtt-operator.io", "v1alpha1", "AuthUser", "authusers")
AclPolicy = create_namespaced_resource("mqtt-operator.io", "v1alpha1", "AclPolicy", "aclpolicies")
LEGACY_ANNOTATION = "kopf.mqtt-operator.io/last-handled-configuration"


@dataclass
class Figures:
    requests: Counter[tuple[str, str]]  # (verb, resource[/subresource]) -> count
    commands: Counter[str]
    saves: int
    reconciles: Counter[str] = field(default_factory=Counter)  # kind -> handler runs

    @property
    def writes(self) -> Counter[tuple[str, str]]:
        return Counter({key: n for key, n in self.requests.items() if key[0] in WRITE_VERBS})


def operator_requests(cp: ControlPlane, namespace: str, since: int) -> Counter[tuple[str, str]]:
    """The operator's requests about objects in `namespace` after the first `since` audit events. The
    test's own are left out: its kubectl by the user agent, and the creates of AuthUsers and AclPolicies
    (the operator never creates one)."""
    counted: Counter[tuple[str, str]] = Counter()
    for event in cp.audit_events()[since:]:
        ref = event.get("objectRef") or {}
        if ref.get("namespace") != namespace or str(event.get("userAgent", "")).startswith("kubectl"):
            continue
        if event["verb"] == "create" and ref.get("resource") in ACCESS_RESOURCES:
            continue
        resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        # A refused request (a create answered 409 Conflict) changes nothing: counted apart, as a refusal.
        refused = int((event.get("responseStatus") or {}).get("code", 200)) >= 400
        counted[(f"{event['verb']} (refused)" if refused else event["verb"], resource)] += 1
    return counted


def operator_counters(operator: OperatorProcess, name: str, label: str) -> Counter[str]:
    """A counter of the operator's /metrics summed by one label."""
    counted: Counter[str] = Counter()
    for family in text_string_to_metric_families(operator.metrics_text()):
        for sample in family.samples:
            if sample.name == name:
                counted[sample.labels[label]] += int(sample.value)
    return counted


def all_ready(s: Namespace, names: list[str]) -> bool:
    for resource in (MQU, MQACL):
        items = json.loads(s.cp.kubectl("get", resource, "-n", s.namespace, "-o", "json").stdout)["items"]
        ready = {
            o["metadata"]["name"]
            for o in items
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in (o.get("status") or {}).get("conditions", [])
            )
        }
        if not set(names) <= ready:
            return False
    return True


def quiet(cp: ControlPlane, namespace: str, seconds: float = 3) -> None:
    """Until the operator made no request about the namespace's objects for `seconds`."""
    last, since = -1, time.monotonic()
    while time.monotonic() - since < seconds:
        now = sum(operator_requests(cp, namespace, 0).values())
        if now != last:
            last, since = now, time.monotonic()
        time.sleep(0.5)


async def create_pairs(kubeconfig: Path, namespace: str, names: list[str]) -> None:
    """One AuthUser (generated password) and one AclPolicy granting it two rules per name, created by 32
    concurrent requests, as the benchmark (bench/bench_access.py) creates them."""
    ref = {"instanceRef": {"name": "devices"}}
    objects: list[Any] = [AuthUser(metadata={"name": name}, spec=ref) for name in names]
    for name in names:
        rules = [
            {"effect": "allow", "actions": ["publish"], "topics": [f"devices/{name}/#"]},
            {"effect": "allow", "actions": ["subscribe", "receive"], "topics": [f"devices/{name}/cmd"]},
        ]
        objects.append(AclPolicy(metadata={"name": name}, spec={**ref, "users": [name], "rules": rules}))
    client = AsyncClient(config=KubeConfig.from_file(str(kubeconfig)), namespace=namespace)
    gate = asyncio.Semaphore(32)

    async def create(obj: Any) -> None:
        async with gate:
            await client.create(obj)

    try:
        await asyncio.gather(*(create(o) for o in objects))
    finally:
        await client.close()


def report(title: str, figures: Figures, pairs: int) -> str:
    lines = [f"{title} ({pairs} AuthUsers + {pairs} AclPolicies), per AuthUser+AclPolicy pair:"]
    for (verb, resource), count in sorted(figures.requests.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lines.append(f"  {verb:8} {resource:20} {count:6}  {count / pairs:.2f}")
    for command, count in sorted(figures.commands.items()):
        lines.append(f"  command  {command:20} {count:6}  {count / pairs:.2f}")
    lines.append(f"  dynamic-security file saves {figures.saves:6}  {figures.saves / pairs:.2f}")
    for kind, count in sorted(figures.reconciles.items()):
        lines.append(f"  reconciles of {kind:15} {count:6}  {count / pairs:.2f}")
    return "\n".join(lines)


@dataclass
class Audited(Namespace):
    operator: OperatorProcess | None = None
    broker: Mosquitto | None = None
    port: int = 0

    def start_operator(self) -> OperatorProcess:
        self.operator = OperatorProcess(
            self.cp,
            (self.namespace,),
            log_level="info",
            # No drift repair while counting (its re-checks would be counted), nor to refill a broker.
            extra_args=(
                "--broker-address",
                f"{self.namespace}/devices=127.0.0.1:{self.port}",
                "--drift-period",
                "3600",
            ),
        ).start()
        return self.operator

    def stop_operator(self) -> None:
        if self.operator:
            self.operator.stop()
            self.operator = None

    def create(self, names: list[str], timeout: float = 900) -> Figures:
        """Create the pairs at once and count until all are Ready and the operator went quiet."""
        assert self.operator is not None and self.broker is not None
        since = len(self.cp.audit_events())
        saves = FileSaves(dynsec_file(self.broker))
        commands = operator_counters(self.operator, "mqtt_operator_broker_commands_total", "command")
        reconciles = operator_counters(self.operator, "mqtt_operator_reconciles_total", "kind")
        try:
            asyncio.run(create_pairs(self.cp.kubeconfig, self.namespace, names))
            deadline = time.monotonic() + timeout
            while not all_ready(self, names):
                saves.count()  # often enough that the kernel's queue never overflows
                assert time.monotonic() < deadline, "not all Ready in time"
                time.sleep(1)
            quiet(self.cp, self.namespace)
            return Figures(
                requests=operator_requests(self.cp, self.namespace, since),
                commands=operator_counters(self.operator, "mqtt_operator_broker_commands_total", "command")
                - commands,
                saves=saves.count(),
                reconciles=operator_counters(self.operator, "mqtt_operator_reconciles_total", "kind")
                - reconciles,
            )
        finally:
            saves.close()


@pytest.fixture(scope="module")
def audited_plane() -> Iterator[ControlPlane]:
    """A control plane of its own, with an audit log (the shared one has none)."""
    cp = ControlPlane(audit=True).start()
    cp.kubectl("apply", "--server-side", "-f", CRDS)
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", CRDS)
    yield cp
    cp.stop()


@pytest.fixture
def audited(audited_plane: ControlPlane) -> Iterator[Audited]:
    """The operator, an MqttInstance `devices` with authorization on, and its broker, in a new namespace."""
    namespace = f"w-{time.monotonic_ns() % 10**9}"
    audited_plane.kubectl("create", "namespace", namespace)
    s = Audited(audited_plane, namespace, port=free_port())
    try:
        s.start_operator()
        s.apply(instance())
        conf = wait_for("the rendered ConfigMap", lambda: s.get("configmap", "devices-config"))
        admin = (ADMIN, s.secret("devices-admin"))
        s.broker = from_rendered(conf["data"]["mosquitto.conf"], 1883, s.port, admin).start()
        s.wait_condition(MQI, "devices", "True", "BrokerReady")
        yield s
    finally:
        s.stop_operator()
        if s.broker:
            s.broker.stop()


def test_writes_per_object_from_create_to_ready(audited: Audited) -> None:
    pairs = PAIRS
    names = [f"dev-{i:03d}" for i in range(pairs)]
    figures = audited.create(names)
    print(report("create to Ready", figures, pairs))
    # Every AuthUser's one status write says which password the broker holds, also when its handler got
    # the report of a later sync than the one that set it (else the next operator would set it again).
    users = json.loads(audited.cp.kubectl("get", MQU, "-n", audited.namespace, "-o", "json").stdout)
    secrets = json.loads(audited.cp.kubectl("get", "secrets", "-n", audited.namespace, "-o", "json").stdout)
    versions = {s["metadata"]["name"]: s["metadata"]["resourceVersion"] for s in secrets["items"]}
    for user in users["items"]:
        status = user["status"]
        assert status.get("passwordSecretResourceVersion") == versions[status["secretName"]], user
        assert status.get("lastPasswordSyncTime"), user
    # Per AuthUser: kopf's finalizer, our one status write, the generated Secret. Per AclPolicy: the
    # finalizer and the status. (Before issue 18: kopf's last-handled-configuration annotation too.)
    # A second create of a Secret (refused with 409, then read) happens when a sync starts before the Secret
    # index saw the Secret an earlier sync made: it writes nothing, and is counted apart.
    bounds = {
        ("patch", "authusers"): pairs,
        ("patch", "authusers/status"): pairs,
        ("create", "secrets"): pairs,
        ("patch", "aclpolicies"): pairs,
        ("patch", "aclpolicies/status"): pairs,
    }
    over = {key: n for key, n in figures.writes.items() if n > bounds.get(key, 0)}
    assert not over, f"more writes than {bounds}: {over}\n{report('create to Ready', figures, pairs)}"
    # The broker: one createClient, one createRole and one addClientRole per pair (and the default access
    # once), sent in batches of up to 100 per message. Mosquitto 2.0's dynamic security saves its file
    # after each command; our plugin makes that one save per pass of the broker's loop, and a pass handles
    # at least a whole message (40 pairs: 2 saves for 121 commands; 120 without the plugin's batching).
    modifying = sum(n for command, n in figures.commands.items() if command in MODIFYING)
    assert modifying <= 3 * pairs + 1, figures.commands
    assert figures.saves >= 1 and figures.saves * 5 <= modifying, (figures.saves, modifying)
    # Each object's handler ran once. (Before, under load, kopf often ran it twice: its annotation patch
    # after the handler made it wait for that write's watch event, and past its consistency timeout it
    # handled the older body, which had no diff base yet, as a creation again.)
    assert figures.reconciles["AuthUser"] <= pairs and figures.reconciles["AclPolicy"] <= pairs, figures


def test_a_restart_reconciles_every_object_and_writes_only_what_changed(audited: Audited) -> None:
    names = [f"dev-{i:03d}" for i in range(8)]
    audited.create(names)
    # A policy handled before its user was in the broker still lists the user as pending (it is granted
    # all the same): the next reconcile, this restart's, corrects that status. Known, left for later.
    policies = json.loads(audited.cp.kubectl("get", MQACL, "-n", audited.namespace, "-o", "json").stdout)
    stale = [p["metadata"]["name"] for p in policies["items"] if (p.get("status") or {}).get("pendingUsers")]
    audited.stop_operator()
    # While the operator is down: one spec changes, and one object carries the annotation an operator
    # before issue 18 wrote on every object (kopf's diff base).
    audited.patch(MQU, names[0], {"spec": {"description": "changed while the operator was down"}})
    audited.cp.kubectl(
        "annotate", "-n", audited.namespace, MQACL, names[1], f'{LEGACY_ANNOTATION}={{"spec":{{}}}}'
    )
    since = len(audited.cp.audit_events())
    operator = audited.start_operator()

    def observed_generation_2() -> bool:
        status = (audited.get(MQU, names[0]) or {}).get("status") or {}
        return bool(status.get("observedGeneration") == 2)

    wait_for("the change made while down reconciled", observed_generation_2, timeout=60)

    def legacy_removed() -> bool:
        meta = (audited.get(MQACL, names[1]) or {})["metadata"]
        return LEGACY_ANNOTATION not in (meta.get("annotations") or {})

    wait_for("the old annotation removed", legacy_removed, timeout=60)
    quiet(audited.cp, audited.namespace)
    # Every object's handler ran once after the start (kopf calls it a creation: its memory is new) ...
    reconciles = operator_counters(operator, "mqtt_operator_reconciles_total", "kind")
    assert reconciles["AuthUser"] == len(names) and reconciles["AclPolicy"] == len(names), reconciles
    # ... and wrote only what changed: the changed object's status, and the old annotation's removal (the
    # MqttInstance's reconcile applies its own objects again, as it always did: not counted here).
    writes = [
        (e["verb"], e["objectRef"]["resource"], e["objectRef"].get("subresource", ""), e["objectRef"]["name"])
        for e in audited.cp.audit_events()[since:]
        if e["verb"] in WRITE_VERBS
        and (e.get("objectRef") or {}).get("namespace") == audited.namespace
        and not e.get("userAgent", "").startswith("kubectl")
        and (
            e["objectRef"]["resource"] in ACCESS_RESOURCES or e["objectRef"]["name"].endswith("-credentials")
        )
    ]
    assert sorted(writes) == sorted(
        [
            ("patch", "aclpolicies", "", names[1]),
            ("patch", "authusers", "status", names[0]),
            *(("patch", "aclpolicies", "status", name) for name in stale),
        ]
    ), (writes, stale)

    # The broker lost everything while the operator was down: the start alone (no drift repair within
    # the hour) puts every account back.
    passwords = {name: audited.secret(f"{name}-credentials") for name in names}
    audited.stop_operator()
    assert audited.broker is not None
    audited.broker.stop(keep=True)
    init_dynsec(dynsec_file(audited.broker), ADMIN, audited.secret("devices-admin"))
    audited.broker.start()
    assert not connects(audited.port, names[0], passwords[names[0]])
    audited.start_operator()
    for name in names:
        wait_for(f"{name} back in the broker", lambda n=name: connects(audited.port, n, passwords[n]), 60)
