"""The conditions helper: transition times kept unless the status changes, generation recorded."""

from __future__ import annotations

from mqtt_operator.api.conditions import parse_conditions, remove_condition, set_condition

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def test_new_condition_is_appended_with_transition_time_and_generation() -> None:
    conds = set_condition([], "Ready", "False", "Pending", "waiting", 3, now=T0)
    assert [c.to_api() for c in conds] == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "Pending",
            "message": "waiting",
            "lastTransitionTime": T0,
            "observedGeneration": 3,
        }
    ]


def test_same_status_keeps_transition_time_but_updates_reason_message_generation() -> None:
    conds = set_condition([], "Ready", "False", "Pending", "waiting", 1, now=T0)
    conds = set_condition(conds, "Ready", "False", "BrokerUnreachable", "no answer", 2, now=T1)
    ready = next((c for c in conds if c.type == "Ready"), None)
    assert ready is not None
    assert (ready.last_transition_time, ready.reason, ready.observed_generation) == (
        T0,
        "BrokerUnreachable",
        2,
    )


def test_status_change_moves_transition_time() -> None:
    conds = set_condition([], "Ready", "False", "Pending", "", 1, now=T0)
    conds = set_condition(conds, "Ready", "True", "Reconciled", "", 1, now=T1)
    assert conds[0].last_transition_time == T1
    assert conds[0].status == "True"


def test_order_of_other_conditions_is_kept() -> None:
    conds = set_condition([], "Ready", "True", "A", "", 1, now=T0)
    conds = set_condition(conds, "BrokerReachable", "True", "B", "", 1, now=T0)
    conds = set_condition(conds, "Ready", "False", "C", "", 2, now=T1)
    assert [c.type for c in conds] == ["Ready", "BrokerReachable"]
    assert [c.type for c in remove_condition(conds, "Ready")] == ["BrokerReachable"]


def test_round_trip_through_the_api_shape() -> None:
    conds = set_condition([], "Ready", "Unknown", "Starting", "", None, now=T0)
    api = [c.to_api() for c in conds]
    assert "observedGeneration" not in api[0]
    assert parse_conditions(api) == conds
