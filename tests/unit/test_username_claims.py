"""Who may have a username in a broker: the pure rule the account sync applies before planning."""

from __future__ import annotations

from mqtt_operator.api.access import AuthUserSpec
from mqtt_operator.controllers.access import username_claims
from mqtt_operator.controllers.entries import UserEntry


def entry(
    name: str, username: str | None = None, created: str = "2026-01-01T00:00:00Z", deleting: bool = False
) -> UserEntry:
    spec = AuthUserSpec.model_validate(
        {"instanceRef": {"name": "devices"}, **({"username": username} if username else {})}
    )
    return UserEntry("ns", name, "uid-" + name, "devices", spec, deleting, None, created=created)


def test_the_older_authuser_keeps_a_shared_username_and_the_newer_is_told_which_has_it() -> None:
    refused = username_claims(
        [
            entry("b-newer", "car-1", "2026-01-02T00:00:00Z"),
            entry("a-older", "car-1", "2026-01-03T00:00:00Z"),
            entry("car-1", created="2026-01-01T00:00:00Z"),
        ]
    )
    assert set(refused) == {"b-newer", "a-older"}
    assert "AuthUser 'car-1'" in refused["a-older"]


def test_the_admin_account_is_never_an_authusers_and_deleting_objects_claim_nothing() -> None:
    refused = username_claims(
        [
            entry("taker", "mqtt-operator-admin"),
            entry("gone", "car-2", deleting=True),
            entry("car-2-user", "car-2"),
        ]
    )
    assert list(refused) == ["taker"]
    assert "reserved" in refused["taker"]
