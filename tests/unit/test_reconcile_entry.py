"""The shared reconcile flow's pure part: the status it decides to write."""

from __future__ import annotations

from typing import Any

from mqtt_operator.api.kinds import PAUSE_ANNOTATION
from mqtt_operator.controllers.outcome import ConditionUpdate, Outcome
from mqtt_operator.handlers.reconcile import desired_status, is_paused
from mqtt_operator.kube.status import status_changes


def body(
    generation: int = 2, status: dict[str, Any] | None = None, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "mqtt-operator.io/v1alpha1",
        "kind": "AuthUser",
        "metadata": {
            "name": "u",
            "namespace": "ns",
            "generation": generation,
            "annotations": annotations or {},
        },
        "spec": {},
        "status": status or {},
    }


def test_outcome_sets_observed_generation_conditions_and_fields() -> None:
    status = desired_status(
        body(),
        Outcome(conditions=(ConditionUpdate("Ready", "True", "Synced", "ok"),), fields={"username": "u"}),
    )
    assert status["observedGeneration"] == 2
    assert status["username"] == "u"
    assert [(c["type"], c["status"], c["observedGeneration"]) for c in status["conditions"]] == [
        ("Ready", "True", 2)
    ]


def test_paused_object_gets_only_the_paused_condition() -> None:
    b = body(annotations={PAUSE_ANNOTATION: "true"})
    assert is_paused(b)
    status = desired_status(b, None)
    assert set(status) == {"conditions"}
    assert status["conditions"][0]["type"] == "ReconciliationPaused"


def test_unpausing_removes_the_paused_condition() -> None:
    paused = desired_status(body(annotations={PAUSE_ANNOTATION: "true"}), None)
    resumed = desired_status(
        body(status=paused), Outcome(conditions=(ConditionUpdate("Ready", "True", "Synced", ""),))
    )
    assert [c["type"] for c in resumed["conditions"]] == ["Ready"]
    assert not is_paused(body(annotations={PAUSE_ANNOTATION: "false"}))


def test_unchanged_status_means_no_write() -> None:
    outcome = Outcome(conditions=(ConditionUpdate("Ready", "True", "Synced", ""),))
    first = desired_status(body(), outcome)
    second = desired_status(body(status=first), outcome)
    assert status_changes(first, second) == {}
    assert status_changes(first, {**second, "observedGeneration": 3}) == {"observedGeneration": 3}
