"""The operator starts for real against the real API server and writes status through its helpers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testenv.cluster import wait_for
from testenv.kube import ControlPlane
from testenv.operator import OperatorProcess

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PAUSE = "mqtt-operator.io/pause-reconciliation"
# kopf's diff base, which operators before issue 18 wrote into every object they handled.
LEGACY_ANNOTATION = "kopf.mqtt-operator.io/last-handled-configuration"


def get(cp: ControlPlane, ns: str, resource: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cp.kubectl("get", "-n", ns, resource, name, "-o", "json").stdout)
    return out


def custom_objects() -> list[dict[str, Any]]:
    docs = [d for f in sorted(EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    return [d for d in docs if d["apiVersion"].startswith("mqtt-operator.io/")]


def resource_of(obj: dict[str, Any]) -> str:
    return f"{obj['kind'].lower()}.mqtt-operator.io"  # the CRD's singular name


def wait_observed(cp: ControlPlane, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The live object once its status has conditions for its current generation."""
    resource, name = resource_of(obj), obj["metadata"]["name"]

    def observed() -> dict[str, Any] | None:
        live = get(cp, ns, resource, name)
        status = live.get("status") or {}
        ok = status.get("observedGeneration") == live["metadata"]["generation"] and status.get("conditions")
        return live if ok else None

    result: dict[str, Any] = wait_for(f"status of {obj['kind']}/{name}", observed)
    return result


@pytest.fixture
def operator(crds_installed: ControlPlane, namespace: str) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(crds_installed, (namespace,)).start()
    yield proc
    proc.stop()


def test_every_kind_gets_observed_generation_and_conditions(
    operator: OperatorProcess, crds_installed: ControlPlane, namespace: str
) -> None:
    cp = crds_installed
    objects = custom_objects()
    assert {o["kind"] for o in objects} == {
        "MqttInstance",
        "AuthUser",
        "AclPolicy",
        "KafkaConnector",
        "ReplicationTask",
        "FunctionTrigger",
    }
    cp.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))
    for obj in objects:
        live = wait_observed(cp, namespace, obj)
        ready = next(c for c in live["status"]["conditions"] if c["type"] == "Ready")
        assert ready["observedGeneration"] == live["metadata"]["generation"]
        assert ready["lastTransitionTime"].endswith("Z")
    # Every log line is one JSON object (json.loads raises otherwise) and the start is logged.
    assert any(e["message"] == "operator started" for e in operator.log_entries())


def test_transition_time_kept_across_a_spec_change_and_pause_annotation(
    operator: OperatorProcess, crds_installed: ControlPlane, namespace: str
) -> None:
    cp = crds_installed
    user = next(o for o in custom_objects() if o["kind"] == "AuthUser")
    name = user["metadata"]["name"]
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(user))

    def status_at(generation: int) -> dict[str, Any] | None:
        live = get(cp, namespace, "authusers.mqtt-operator.io", name)
        status = live.get("status") or {}
        return status if status.get("observedGeneration") == generation else None

    first = wait_for("first status", lambda: status_at(1))
    cp.kubectl(
        "patch",
        "-n",
        namespace,
        "authusers.mqtt-operator.io",
        name,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"description": "changed by the test"}}),
    )
    second = wait_for("status of generation 2", lambda: status_at(2))
    ready1 = next(c for c in first["conditions"] if c["type"] == "Ready")
    ready2 = next(c for c in second["conditions"] if c["type"] == "Ready")
    assert ready2["observedGeneration"] == 2
    assert ready2["lastTransitionTime"] == ready1["lastTransitionTime"]

    cp.kubectl(
        "annotate",
        "-n",
        namespace,
        "authusers.mqtt-operator.io",
        name,
        "mqtt-operator.io/pause-reconciliation=true",
    )

    def paused() -> bool:
        conds = get(cp, namespace, "authusers.mqtt-operator.io", name)["status"]["conditions"]
        return any(c["type"] == "ReconciliationPaused" and c["status"] == "True" for c in conds)

    # A handler waiting to retry (the instance does not exist here) sees the annotation on its next run.
    wait_for("ReconciliationPaused condition", paused, timeout=60)
    cp.kubectl(
        "annotate",
        "-n",
        namespace,
        "authusers.mqtt-operator.io",
        name,
        "mqtt-operator.io/pause-reconciliation-",
    )
    wait_for("ReconciliationPaused removed", lambda: not paused(), timeout=60)


def test_a_restart_handles_every_kind_again_and_drops_an_older_operators_annotation(
    operator: OperatorProcess, crds_installed: ControlPlane, namespace: str
) -> None:
    """kopf's memory of each object is kept in the operator since issue 18 (handlers/handled.py), not in
    the object: after a restart every object is handled again, a change made while the operator was down
    (here the pause annotation, which changes no generation) is seen, and the annotation older operators
    wrote is removed."""
    cp = crds_installed
    objects = custom_objects()
    cp.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))
    for obj in objects:
        live = wait_observed(cp, namespace, obj)
        assert not [k for k in live["metadata"].get("annotations") or {} if k.startswith("kopf.")], live
    operator.stop()
    for obj in objects:
        cp.kubectl(
            "annotate",
            "-n",
            namespace,
            resource_of(obj),
            obj["metadata"]["name"],
            f"{PAUSE}=true",
            f'{LEGACY_ANNOTATION}={{"spec":{{}}}}',
        )
    restarted = OperatorProcess(cp, (namespace,)).start()
    try:
        for obj in objects:
            resource, name = resource_of(obj), obj["metadata"]["name"]

            def handled_again(resource: str = resource, name: str = name) -> bool:
                live = get(cp, namespace, resource, name)
                paused = any(
                    c["type"] == "ReconciliationPaused" and c["status"] == "True"
                    for c in (live.get("status") or {}).get("conditions", [])
                )
                return paused and LEGACY_ANNOTATION not in (live["metadata"].get("annotations") or {})

            wait_for(f"{obj['kind']}/{name} paused, without the old annotation", handled_again, timeout=60)
    finally:
        restarted.stop()
