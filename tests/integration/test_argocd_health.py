"""The Argo CD health checks of argocd/ run by gopher-lua (health-lua, as Argo CD runs them): on every
case of each kind's health_test.yaml, and on live objects the real operator drove into each state.

`test_live_objects` is also how the testdata are made: `python hack/argocd_health.py capture` runs it
with ARGOCD_HEALTH_CAPTURE set, and then it writes each live object it checked (less the API server's
bookkeeping) into testdata/ and the expected health into health_test.yaml, so every case Argo CD's own
test runs on is an object the operator wrote.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hack import argocd_health
from tests.integration.operator_stack import MetricsServer, Stack, operator_stack
from tests.integration.test_bridge_helpers import create_topic
from tests.integration.test_kstatus import expected_kstatus, kstatus

from mqtt_operator.api.kinds import ALL_KINDS, PAUSE_ANNOTATION
from mqtt_operator.resources.worker_names import WorkerNames
from testenv.cluster import wait_for
from testenv.kafka import Kafka
from testenv.kube import ControlPlane
from testenv.paths import tool

pytestmark = pytest.mark.integration

CAPTURE = bool(os.environ.get("ARGOCD_HEALTH_CAPTURE"))
API_VERSION = "mqtt-operator.io/v1alpha1"
PLURALS = {k.kind: f"{k.plural}.mqtt-operator.io" for k in ALL_KINDS}
Health = tuple[str, str]


def lua_health(script: Path, obj: dict[str, Any]) -> dict[str, str]:
    """What Argo CD would say of `obj` with `script`: {"status": ..., "message": ...}."""
    proc = subprocess.run(
        [tool("health-lua"), str(script), "-"],
        input=json.dumps(obj),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, str] = json.loads(proc.stdout)
    return result


@pytest.mark.parametrize("kind", [k.kind for k in ALL_KINDS])
def test_health_test_cases(kind: str) -> None:
    """Every case of the kind's health_test.yaml, as Argo CD's TestLuaHealthScript runs it."""
    folder = argocd_health.kind_dir(kind)
    cases = yaml.safe_load((folder / "health_test.yaml").read_text())["tests"]
    assert cases, f"{folder}/health_test.yaml has no case"
    for case in cases:
        obj = yaml.safe_load((folder / case["inputPath"]).read_text())
        assert obj["kind"] == kind, case["inputPath"]
        want = {"status": case["healthStatus"]["status"], "message": case["healthStatus"].get("message", "")}
        got = lua_health(folder / "health.lua", obj)
        assert {"status": got.get("status", ""), "message": got.get("message", "")} == want, case["inputPath"]


def test_argocd_cm_patch_applies(control_plane: ControlPlane, namespace: str) -> None:
    """The documented command, on a ConfigMap like Argo CD's: each kind's key holds the one script."""
    control_plane.kubectl(
        "create", "configmap", "argocd-cm", "-n", namespace, "--from-literal=url=https://argocd"
    )
    control_plane.kubectl(
        "patch", "configmap", "argocd-cm", "-n", namespace, "--type", "merge",
        "--patch-file", str(argocd_health.CM_PATCH),
    )  # fmt: skip
    proc = control_plane.kubectl("get", "configmap", "argocd-cm", "-n", namespace, "-o", "json")
    data = json.loads(proc.stdout)["data"]
    script = argocd_health.SOURCE.read_text()
    for kind in PLURALS:
        assert data[f"resource.customizations.health.mqtt-operator.io_{kind}"] == script, kind
    assert data["url"] == "https://argocd"


# --- live objects ------------------------------------------------------------------------------


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    conds = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == type_), None)


def when(obj: dict[str, Any], type_: str, status: str = "True") -> dict[str, Any] | None:
    cond = condition(obj, type_)
    return cond if cond is not None and cond["status"] == status else None


# What each state should look like in Argo CD, from the object the operator wrote; None while the
# object is not in that state yet.
def healthy(obj: dict[str, Any]) -> Health | None:
    ready = when(obj, "Ready")
    return ("Healthy", ready["message"]) if ready else None


def stalled(obj: dict[str, Any]) -> Health | None:
    cond = when(obj, "Stalled") or when(obj, "Ready", "False")
    return ("Degraded", cond["message"]) if cond else None


def retrying(obj: dict[str, Any]) -> Health | None:
    """Ready=False for a cause the operator retries: Reconciling=True says so. (An operator that does
    not write Reconciling yet leaves only Ready=False, which reads as Degraded.)"""
    if not when(obj, "Ready", "False"):
        return None
    reconciling = when(obj, "Reconciling")
    return ("Progressing", reconciling["message"]) if reconciling else ("Degraded", obj_ready_message(obj))


def at_rest(obj: dict[str, Any]) -> Health | None:
    ready = when(obj, "Ready", "False")
    return (
        ("Suspended", ready["message"])
        if ready and ready["reason"] in {"Paused", "Stopped", "Disabled"}
        else None
    )


def paused(obj: dict[str, Any]) -> Health | None:
    cond = when(obj, "ReconciliationPaused")
    return ("Suspended", cond["message"]) if cond else None


def deleting(obj: dict[str, Any]) -> Health | None:
    return ("Progressing", "deleting") if obj["metadata"].get("deletionTimestamp") else None


def behind(obj: dict[str, Any]) -> Health | None:
    generation, observed = obj["metadata"]["generation"], (obj.get("status") or {}).get("observedGeneration")
    if observed is None or observed >= generation:
        return None
    return (
        "Progressing",
        f"waiting for the operator to observe generation {generation} (observed: {observed})",
    )


def unseen(obj: dict[str, Any]) -> Health | None:
    return None if obj.get("status") else ("Progressing", "waiting for the operator to observe the object")


def obj_ready_message(obj: dict[str, Any]) -> str:
    ready = condition(obj, "Ready")
    return ready["message"] if ready else ""


@dataclass(frozen=True)
class Case:
    kind: str
    name: str
    file: str  # testdata/<file>.yaml
    expect: Callable[[dict[str, Any]], Health | None]


def manifest(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


DEVICES = {"instanceRef": {"name": "devices"}}
NOWHERE = {"instanceRef": {"name": "nowhere"}}
READ = [{"effect": "allow", "actions": ["subscribe"], "topics": ["vehicles/#"]}]


def connector(bootstrap: str, **spec: Any) -> dict[str, Any]:
    return {
        **DEVICES,
        "direction": "mqttToKafka",
        "kafka": {"bootstrapServers": bootstrap},
        "mqttToKafka": {"topicFilters": ["vehicles/+/state"], "topic": "vehicle-state"},
        **spec,
    }


def replication(endpoint: str, **spec: Any) -> dict[str, Any]:
    return {
        "source": {"mqtt": {**DEVICES, "topicFilters": ["piles/+/will"]}},
        "target": {"rocketmq": {"endpoints": endpoint, "topic": "pile-faults"}},
        **spec,
    }


def trigger(url: str, **spec: Any) -> dict[str, Any]:
    return {**DEVICES, "topicFilters": ["vehicles/+/battery"], "function": {"url": url}, **spec}


@pytest.fixture
def function() -> Iterator[MetricsServer]:
    """Something that answers on the FunctionTrigger's URL (the operator only connects to it)."""
    server = MetricsServer()
    yield server
    server.stop()


def check(s: Stack, case: Case, timeout: float = 60) -> dict[str, Any]:
    """Wait until `case`'s object is in its state and the Lua check says what the state implies."""
    script = argocd_health.kind_dir(case.kind) / "health.lua"
    last: dict[str, Any] = {}

    def matches() -> dict[str, Any] | None:
        obj = s.get(PLURALS[case.kind], case.name)
        if obj is None:
            return None
        expected = case.expect(obj)
        got = lua_health(script, obj)
        last.update(object=obj.get("status"), expected=expected, got=got)
        return (
            obj if expected is not None and got == {"status": expected[0], "message": expected[1]} else None
        )

    try:
        result: dict[str, Any] = wait_for(f"{case.kind}/{case.name} as {case.file}", matches, timeout)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{json.dumps(last, indent=1)}") from None
    return result


def test_live_objects(
    crds_installed: ControlPlane, namespace: str, kafka: Kafka, function: MetricsServer
) -> None:
    create_topic(kafka.bootstrap, "vehicle-state")
    captured: list[tuple[Case, dict[str, Any]]] = []
    with operator_stack(crds_installed, namespace, {}) as s:
        broker = f"127.0.0.1:{s.port}"  # what RocketMQ's proxy would be: the operator only connects
        closed = "127.0.0.1:9"  # nothing listens on discard
        s.device("dashboard", READ)
        for kind, user in (
            ("KafkaConnector", "clash"),
            ("ReplicationTask", "clash"),
            ("FunctionTrigger", "clash"),
        ):
            # An AuthUser the integration's workers need the name of: the operator will not take it over.
            taken = WorkerNames(kind, namespace, user).user
            s.apply(manifest("AuthUser", taken, DEVICES))
        url = f"http://{function.address}/"
        objects = [
            manifest("MqttInstance", "offline", {"listeners": {"mqtt": {"port": 1883}}}),
            manifest("AuthUser", "lost", NOWHERE),
            manifest("AuthUser", "impostor", {**DEVICES, "username": "mqtt-operator-admin"}),
            manifest("AclPolicy", "lost", {**NOWHERE, "users": ["lost"], "rules": READ}),
            manifest("KafkaConnector", "uplink", connector(kafka.bootstrap)),
            manifest("KafkaConnector", "held", connector(kafka.bootstrap, state="paused")),
            manifest("KafkaConnector", "clash", connector(kafka.bootstrap)),
            manifest("KafkaConnector", "orphan", {**connector(kafka.bootstrap), **NOWHERE}),
            manifest("ReplicationTask", "wills", replication(broker)),
            manifest("ReplicationTask", "held", replication(broker, state="paused")),
            manifest("ReplicationTask", "clash", replication(broker)),
            manifest("ReplicationTask", "unreachable", replication(closed)),
            manifest("FunctionTrigger", "alerts", trigger(url)),
            manifest("FunctionTrigger", "held", trigger(url, enabled=False)),
            manifest("FunctionTrigger", "clash", trigger(url)),
            manifest("FunctionTrigger", "orphan", {**trigger(url), **NOWHERE}),
        ]
        crds_installed.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))
        live = [
            Case("MqttInstance", "devices", "healthy", healthy),
            Case("MqttInstance", "offline", "progressing_brokerUnreachable", retrying),
            Case("AuthUser", "dashboard", "healthy", healthy),
            Case("AuthUser", "lost", "progressing_instanceNotFound", retrying),
            Case("AuthUser", "impostor", "degraded_conflict", stalled),
            Case("AclPolicy", "dashboard", "healthy", healthy),
            Case("AclPolicy", "lost", "progressing_instanceNotFound", retrying),
            Case("KafkaConnector", "uplink", "healthy", healthy),
            Case("KafkaConnector", "held", "suspended_statePaused", at_rest),
            Case("KafkaConnector", "clash", "degraded_conflict", stalled),
            Case("KafkaConnector", "orphan", "progressing_instanceNotFound", retrying),
            Case("ReplicationTask", "wills", "healthy", healthy),
            Case("ReplicationTask", "held", "suspended_statePaused", at_rest),
            Case("ReplicationTask", "clash", "degraded_conflict", stalled),
            Case("ReplicationTask", "unreachable", "progressing_rocketmqUnreachable", retrying),
            Case("FunctionTrigger", "alerts", "healthy", healthy),
            Case("FunctionTrigger", "held", "suspended_disabled", at_rest),
            Case("FunctionTrigger", "clash", "degraded_conflict", stalled),
            Case("FunctionTrigger", "orphan", "progressing_instanceNotFound", retrying),
        ]
        for case in live:
            captured.append((case, check(s, case)))

        # The annotation stops reconciling: one healthy object of each kind.
        pausing = [c for c in live if c.file == "healthy"]
        for case in pausing:
            s.patch(PLURALS[case.kind], case.name, {"metadata": {"annotations": {PAUSE_ANNOTATION: "true"}}})
        for case in pausing:
            paused_case = Case(case.kind, case.name, "suspended_annotation", paused)
            captured.append((paused_case, check(s, paused_case)))

        # With the operator gone nothing moves on: a new generation stays unobserved, a delete stays
        # held by the operator's finalizer, a new object gets no status.
        assert s.operator is not None
        s.operator.stop()
        spec_changes: dict[str, tuple[str, dict[str, Any]]] = {
            "MqttInstance": ("offline", {"spec": {"replicas": 0}}),
            "AuthUser": ("lost", {"spec": {"description": "changed"}}),
            "AclPolicy": ("lost", {"spec": {"description": "changed"}}),
            "KafkaConnector": ("held", {"spec": {"replicas": 2}}),
            "ReplicationTask": ("held", {"spec": {"replicas": 2}}),
            "FunctionTrigger": ("held", {"spec": {"replicas": 2}}),
        }
        for kind, (name, change) in spec_changes.items():
            s.patch(PLURALS[kind], name, change)
            behind_case = Case(kind, name, "progressing_generationNotObserved", behind)
            captured.append((behind_case, check(s, behind_case, timeout=10)))
        for case in pausing:
            crds_installed.kubectl("delete", "-n", namespace, PLURALS[case.kind], case.name, "--wait=false")
            deleting_case = Case(case.kind, case.name, "progressing_deleting", deleting)
            captured.append((deleting_case, check(s, deleting_case, timeout=10)))
        for case in pausing:
            spec = next(o["spec"] for o in objects if o["kind"] == case.kind)
            s.apply(manifest(case.kind, "unseen", spec))
            unseen_case = Case(case.kind, "unseen", "progressing_noStatus", unseen)
            captured.append((unseen_case, check(s, unseen_case, timeout=10)))
    # The same live objects as Flux and kpt see them (tests/integration/test_kstatus.py says why each).
    for case, obj in captured:
        assert kstatus(obj)["status"] == expected_kstatus(case.file), (case, kstatus(obj))
    if CAPTURE:
        write_testdata(captured, namespace)


def clean(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    """`obj` as testdata: without the API server's, kubectl's and kopf's bookkeeping, in namespace
    `default`."""
    obj = copy.deepcopy(obj)
    meta = obj["metadata"]
    for key in ("managedFields", "uid", "resourceVersion"):
        meta.pop(key, None)
    # kubectl's copy of the manifest and kopf's progress records: bookkeeping, not the object's state.
    annotations = {
        key: value
        for key, value in (meta.get("annotations") or {}).items()
        if key != "kubectl.kubernetes.io/last-applied-configuration" and not key.startswith("kopf.")
    }
    meta.pop("annotations", None)
    if annotations:
        meta["annotations"] = annotations
    result: dict[str, Any] = json.loads(json.dumps(obj).replace(namespace, "default"))
    return result


def write_testdata(captured: list[tuple[Case, dict[str, Any]]], namespace: str) -> None:
    """Each kind's testdata/ and health_test.yaml from the captured objects (stale testdata removed)."""
    for kind in PLURALS:
        folder = argocd_health.kind_dir(kind)
        (folder / "testdata").mkdir(parents=True, exist_ok=True)
        tests: list[tuple[str, str, str]] = []
        for case, obj in captured:
            if case.kind != kind:
                continue
            data = clean(obj, namespace)
            expected = case.expect(data)
            assert expected is not None, (case, data)
            path = f"testdata/{case.file}.yaml"
            (folder / path).write_text(yaml.safe_dump(data, sort_keys=False))
            tests.append((expected[0], expected[1], path))
        for stale in (folder / "testdata").glob("*.yaml"):
            if f"testdata/{stale.name}" not in {t[2] for t in tests}:
                stale.unlink()
        (folder / "health_test.yaml").write_text(argocd_health.render_health_test(tests))
