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


def _types(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_a_spec_error_is_stalled_a_retry_is_reconciling_and_ready_clears_both() -> None:
    stalled = desired_status(
        body(), Outcome(conditions=(ConditionUpdate("Ready", "False", "InvalidSpec", "x"),))
    )
    assert _types(stalled) == {"Ready": ("False", "InvalidSpec"), "Stalled": ("True", "InvalidSpec")}
    waiting = desired_status(
        body(status=stalled),
        Outcome(conditions=(ConditionUpdate("Ready", "False", "BrokerUnreachable", "y"),), retry_after=15),
    )
    assert _types(waiting) == {
        "Ready": ("False", "BrokerUnreachable"),
        "Reconciling": ("True", "BrokerUnreachable"),
    }
    ready = desired_status(
        body(status=waiting), Outcome(conditions=(ConditionUpdate("Ready", "True", "Synced", ""),))
    )
    assert _types(ready) == {"Ready": ("True", "Synced")}


def test_a_state_the_spec_asks_for_is_neither_reconciling_nor_stalled() -> None:
    stopped = desired_status(
        body(), Outcome(conditions=(ConditionUpdate("Ready", "False", "Stopped", "replicas 0"),))
    )
    assert _types(stopped) == {"Ready": ("False", "Stopped")}


def test_reconciling_keeps_its_transition_time_so_a_repeat_writes_nothing() -> None:
    outcome = Outcome(
        conditions=(ConditionUpdate("Ready", "False", "Pending", "0 of 2 ready"),), retry_after=5
    )
    first = desired_status(body(), outcome)
    again = desired_status(body(status=first), outcome)
    assert status_changes(first, again) == {}
