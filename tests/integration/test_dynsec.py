"""The dynamic-security client and planner against a real Mosquitto 2.0 with the plugin loaded.

Devices are paho-mqtt MQTT 5 clients; what they are allowed is read from the broker's own answers
(CONNACK, PUBACK and SUBACK reason codes), never assumed.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from mqtt_operator.broker.acl import Rule, Subject, merge_grants, policy_roles
from mqtt_operator.broker.client import DynsecClient
from mqtt_operator.broker.errors import (
    BrokerAuthFailed,
    BrokerTimeout,
    BrokerUnreachable,
    ClientAlreadyExists,
)
from mqtt_operator.broker.model import (
    DENY_BY_DEFAULT,
    Acl,
    DesiredClient,
    DesiredRole,
    Ownership,
    RoleGrant,
)
from mqtt_operator.broker.plan import Plan, plan
from testenv import device
from testenv.mosquitto import Mosquitto, dynsec_plugin
from testenv.paths import tool

pytestmark = pytest.mark.integration

ADMIN_PASSWORD = "admin-password-1"
OWN = Ownership()
NOT_AUTHORIZED = device.NOT_AUTHORIZED


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    """Mosquitto with dynamic security, an `admin` account and Mosquitto's own default ACL access."""
    server = Mosquitto(config="")
    config = server.root / "dynsec.json"
    subprocess.run(
        [tool("mosquitto_ctrl"), "dynsec", "init", str(config), "admin", ADMIN_PASSWORD],
        check=True,
        capture_output=True,
        timeout=10,
    )
    config.chmod(0o666)
    server.config = f"plugin {dynsec_plugin()}\nplugin_opt_config_file {config}\n"
    server.start()
    yield server
    server.stop()


def admin(broker: Mosquitto, **kwargs: Any) -> DynsecClient:
    return DynsecClient("127.0.0.1", broker.port, "admin", ADMIN_PASSWORD, **kwargs)


def Device(broker: Mosquitto, username: str, password: str, client_id: str | None = None) -> device.Device:
    """A paho MQTT 5 client on `broker` whose calls return the broker's reason codes."""
    return device.Device(broker.port, username, password, client_id)


def connects(broker: Mosquitto, username: str, password: str) -> bool:
    return device.connects(broker.port, username, password)


async def sync(
    client: DynsecClient,
    clients: Sequence[DesiredClient],
    roles: Sequence[DesiredRole],
    password_changes: set[str] | None = None,
) -> Plan:
    """What the reconcile does: read the broker, plan, apply; returns the plan it applied."""
    actual_clients, actual_roles = await client.list_clients(), await client.list_roles()
    todo = plan(
        clients,
        roles,
        actual_clients,
        actual_roles,
        ownership=OWN,
        password_changes=password_changes or set(),
        desired_defaults=DENY_BY_DEFAULT,
        actual_defaults=await client.get_default_acl_access(),
    )
    results = await client.execute(todo.commands)
    assert [r.error for r in results if not r.ok] == []
    return todo


async def sync_policies(
    client: DynsecClient, users: dict[str, str], policies: Sequence[tuple[str, int, list[Rule], list[str]]]
) -> Plan:
    """users: username -> password; policies: (name, priority, rules, usernames)."""
    translated = [
        policy_roles(name, rules, prio, [Subject(u) for u in names], role_prefix=OWN.role_prefix)
        for name, prio, rules, names in policies
    ]
    grants = merge_grants(translated)
    desired = [DesiredClient(u, pw, grants.get(u, ())) for u, pw in users.items()]
    return await sync(client, desired, [role for t in translated for role in t.roles])


def test_a_device_connects_with_its_password_only_and_a_rotation_takes_effect_at_once(
    broker: Mosquitto,
) -> None:
    async def scenario() -> None:
        async with admin(broker) as client:
            await sync(client, [DesiredClient("car-1", "first-password-1")], [])
            assert connects(broker, "car-1", "first-password-1")
            assert not connects(broker, "car-1", "wrong-password-1")

            rotated = DesiredClient("car-1", "second-password-2")
            assert [c.name for c in (await sync(client, [rotated], [], {"car-1"})).commands] == [
                "setClientPassword"
            ]
            assert connects(broker, "car-1", "second-password-2")
            assert not connects(broker, "car-1", "first-password-1")

            await sync(client, [], [])
            assert not connects(broker, "car-1", "second-password-2")

    asyncio.run(scenario())


def test_publish_and_subscribe_outside_the_policy_are_refused_with_0x87(broker: Mosquitto) -> None:
    rules = [
        Rule("allow", ("publish",), ("vehicles/+/state",)),
        Rule("allow", ("subscribe", "receive"), ("vehicles/#",)),
    ]
    listen_only = [Rule("allow", ("subscribe",), ("vehicles/#",))]

    async def scenario() -> None:
        async with admin(broker) as client:
            users = {"car": "car-password-1", "mute": "mute-password-1"}
            await sync_policies(
                client, users, [("fleet", 0, rules, ["car"]), ("mute", 0, listen_only, ["mute"])]
            )

    asyncio.run(scenario())
    car, mute = Device(broker, "car", "car-password-1"), Device(broker, "mute", "mute-password-1")
    try:
        assert car.connect() == 0 and mute.connect() == 0
        assert car.subscribe("vehicles/#") < 0x80
        assert car.subscribe("other/#") == NOT_AUTHORIZED
        assert mute.subscribe("vehicles/#") < 0x80
        assert car.publish("vehicles/7/state") < 0x80
        assert car.publish("vehicles/7/command") == NOT_AUTHORIZED
        assert car.publish("other/x") == NOT_AUTHORIZED
        assert car.messages.get(timeout=5)[0] == "vehicles/7/state"
        # Receiving is denied by default: the message reached `car`; a subscriber without receive gets none.
        time.sleep(0.5)
        assert mute.messages.empty()
    finally:
        car.close()
        mute.close()


def test_a_shared_subscription_is_allowed_exactly_when_the_policy_grants_its_filter(
    broker: Mosquitto,
) -> None:
    policy = policy_roles(
        "bridge",
        [Rule("allow", ("subscribe", "receive"), ("vehicles/#",))],
        0,
        [Subject("worker")],
        role_prefix="mqop:",
    )
    # A role with only the plain filter, as one would write it by hand: not enough for $share (FACTS.md).
    plain = DesiredRole("mqop:plain", (Acl("subscribePattern", "vehicles/#", 0, True),))
    clients = [
        DesiredClient("worker", "worker-password-1", policy.grants["worker"]),
        DesiredClient("plain", "plain-password-1", (RoleGrant("mqop:plain"),)),
    ]

    async def scenario() -> None:
        async with admin(broker) as client:
            await sync(client, clients, [*policy.roles, plain])

    asyncio.run(scenario())
    worker, plain_device = (
        Device(broker, "worker", "worker-password-1"),
        Device(broker, "plain", "plain-password-1"),
    )
    try:
        assert worker.connect() == 0 and plain_device.connect() == 0
        assert worker.subscribe("$share/g/vehicles/#") < 0x80
        assert worker.subscribe("$share/other-group/vehicles/+/state") < 0x80
        assert worker.subscribe("$share/g/meters/#") == NOT_AUTHORIZED
        assert plain_device.subscribe("vehicles/#") < 0x80
        assert plain_device.subscribe("$share/g/vehicles/#") == NOT_AUTHORIZED
    finally:
        worker.close()
        plain_device.close()


def test_deny_subscribe_alone_does_not_stop_delivery_through_a_wider_filter(broker: Mosquitto) -> None:
    """What the translation's warning about deny-subscribe-without-receive rests on."""
    wide = Rule("allow", ("subscribe", "receive", "publish"), ("vehicles/#",))
    deny_sub = Rule("deny", ("subscribe",), ("vehicles/secret/#",))
    deny_both = Rule("deny", ("subscribe", "receive"), ("vehicles/secret/#",))

    async def scenario() -> None:
        async with admin(broker) as client:
            users = {"leaky": "leaky-password-1", "tight": "tight-password-1"}
            await sync_policies(
                client,
                users,
                [("leaky", 0, [deny_sub, wide], ["leaky"]), ("tight", 0, [deny_both, wide], ["tight"])],
            )

    asyncio.run(scenario())
    leaky, tight = Device(broker, "leaky", "leaky-password-1"), Device(broker, "tight", "tight-password-1")
    try:
        assert leaky.connect() == 0 and tight.connect() == 0
        for device in (leaky, tight):
            assert device.subscribe("vehicles/secret/#") == NOT_AUTHORIZED
            assert device.subscribe("vehicles/#") < 0x80
        assert leaky.publish("vehicles/secret/x") < 0x80
        assert leaky.messages.get(timeout=5)[0] == "vehicles/secret/x"
        time.sleep(0.5)
        assert tight.messages.empty()
    finally:
        leaky.close()
        tight.close()


def test_percent_u_confines_each_device_to_its_own_subtree(broker: Mosquitto) -> None:
    async def scenario() -> None:
        async with admin(broker) as client:
            await sync_policies(
                client,
                {"alice": "alice-password-1", "bob": "bob-password-1"},
                [("own", 0, [Rule("allow", ("publish",), ("devices/%u/#",))], ["alice", "bob"])],
            )

    asyncio.run(scenario())
    alice = Device(broker, "alice", "alice-password-1")
    try:
        assert alice.connect() == 0
        assert alice.publish("devices/alice/temp") < 0x80
        assert alice.publish("devices/bob/temp") == NOT_AUTHORIZED
        assert alice.publish("devices/%u/temp") == NOT_AUTHORIZED
    finally:
        alice.close()


@pytest.mark.parametrize(
    ("open_priority", "lock_priority", "secret_allowed"),
    [(0, 10, False), (10, 0, True), (0, 0, False)],
    ids=["higher-deny-wins", "higher-allow-wins", "equal-priority-deny-first"],
)
def test_the_higher_priority_policy_wins(
    broker: Mosquitto, open_priority: int, lock_priority: int, secret_allowed: bool
) -> None:
    async def scenario() -> None:
        async with admin(broker) as client:
            await sync_policies(
                client,
                {"car": "car-password-1"},
                [
                    # "a-open" sorts before "lock": name order alone would check the allow first.
                    ("a-open", open_priority, [Rule("allow", ("publish",), ("vehicles/#",))], ["car"]),
                    ("lock", lock_priority, [Rule("deny", ("publish",), ("vehicles/secret/#",))], ["car"]),
                ],
            )

    asyncio.run(scenario())
    car = Device(broker, "car", "car-password-1")
    try:
        assert car.connect() == 0
        assert car.publish("vehicles/1/state") < 0x80
        assert (car.publish("vehicles/secret/key") < 0x80) is secret_allowed
    finally:
        car.close()


def test_an_unchanged_policy_sends_nothing_and_keeps_devices_connected(broker: Mosquitto) -> None:
    users = {"car": "car-password-1", "other": "other-password-1"}
    fleet = ("fleet", 0, [Rule("allow", ("publish", "subscribe", "receive"), ("vehicles/#",))], ["car"])
    unrelated = ("unrelated", 0, [Rule("allow", ("publish",), ("meters/#",))], ["other"])

    async def apply(*policies: tuple[str, int, list[Rule], list[str]]) -> Plan:
        async with admin(broker) as client:
            return await sync_policies(client, users, policies)

    asyncio.run(apply(fleet, unrelated))
    car = Device(broker, "car", "car-password-1")
    try:
        assert car.connect() == 0
        assert car.subscribe("vehicles/#") < 0x80

        assert asyncio.run(apply(fleet, unrelated)).commands == ()
        changed_unrelated = ("unrelated", 0, [Rule("allow", ("publish",), ("meters/+/reading",))], ["other"])
        assert len(asyncio.run(apply(fleet, changed_unrelated)).commands) == 2
        time.sleep(0.5)
        assert not car.disconnected.is_set()
        assert car.publish("vehicles/1/state") < 0x80
        assert car.messages.get(timeout=5)[0] == "vehicles/1/state"

        # Why it matters: Mosquitto disconnects every holder of a role whose ACLs change.
        wider = (
            "fleet",
            0,
            [Rule("allow", ("publish", "subscribe", "receive"), ("vehicles/#", "fleet/#"))],
            ["car"],
        )
        assert [c.name for c in asyncio.run(apply(wider, changed_unrelated)).commands] == ["addRoleACL"] * 4
        assert car.disconnected.wait(5)
    finally:
        car.close()


def bulk_accounts(count: int) -> tuple[list[DesiredClient], list[DesiredRole]]:
    """`count` clients `bulk-<i>` (password `bulk-password-<i:04>`), each granted its own role."""
    roles = [
        DesiredRole(f"mqop:bulk/{i}", (Acl("publishClientSend", f"bulk/{i}/#", 1, True),))
        for i in range(count)
    ]
    clients = [
        DesiredClient(
            f"bulk-{i}", f"bulk-password-{i:04}", (RoleGrant(f"mqop:bulk/{i}", 0),), owner=f"ns/bulk-{i}"
        )
        for i in range(count)
    ]
    return clients, roles


def test_a_thousand_clients_and_roles_are_created_in_batches(broker: Mosquitto) -> None:
    count = 1000
    clients, roles = bulk_accounts(count)

    async def scenario() -> None:
        async with admin(broker, batch_size=100) as client:
            started = time.monotonic()
            applied = await sync(client, clients, roles)
            elapsed = time.monotonic() - started
            print(f"\n{len(applied.commands)} commands ({count} clients + roles) applied in {elapsed:.2f} s")
            assert len(applied.commands) == 3 * count + 1  # create role, create client, grant; + default ACLs
            assert len(await client.list_clients()) == count + 1
            assert len(await client.list_roles()) == count + 1
            started = time.monotonic()
            assert (await sync(client, clients, roles)).commands == ()
            print(
                f"reading back and planning {count} + {count} objects took {time.monotonic() - started:.2f} s"
            )

    asyncio.run(scenario())
    assert connects(broker, "bulk-999", "bulk-password-0999")


def test_concurrent_callers_and_connections_get_their_own_answers(broker: Mosquitto) -> None:
    names = [f"user-{i}" for i in range(60)]

    async def scenario() -> None:
        async with admin(broker, batch_size=7) as first, admin(broker) as second:
            await sync(first, [DesiredClient(n, f"{n}-password") for n in names], [])
            # Answers are broadcast to every subscriber of the response topic: each must pick its own.
            found = await asyncio.gather(
                *(client.get_client(n) for n in names for client in (first, second)),
                first.list_clients(),
                second.get_client("nobody"),
            )
            *singles, listed, nobody = found
            assert [c.username for c in singles if c is not None] == [n for n in names for _ in (1, 2)]
            assert len(listed) == len(names) + 1
            assert nobody is None

    asyncio.run(scenario())


def test_command_errors_are_typed_and_never_carry_the_password(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    password = "never-show-this-password-42"

    async def scenario() -> None:
        async with admin(broker) as client:
            await client.create_client("dup", password)
            with pytest.raises(ClientAlreadyExists) as exists:
                await client.create_client("dup", password)
            assert password not in str(exists.value) and "'dup'" in str(exists.value)
            results = await client.execute([])
            assert results == []

    with caplog.at_level(logging.DEBUG, logger="mqtt_operator"):
        asyncio.run(scenario())
    assert "createClient" in caplog.text
    assert password not in caplog.text and ADMIN_PASSWORD not in caplog.text


def test_connection_failures_say_why(broker: Mosquitto) -> None:
    async def refused() -> None:
        async with DynsecClient("127.0.0.1", broker.port, "admin", "wrong-password-1"):
            pass

    with pytest.raises(BrokerAuthFailed, match="refused user 'admin'") as wrong:
        asyncio.run(refused())
    assert "wrong-password-1" not in str(wrong.value)

    async def not_admin() -> None:
        async with admin(broker) as client:
            await client.create_client("plain", "plain-password-1")
        async with DynsecClient("127.0.0.1", broker.port, "plain", "plain-password-1") as client:
            await client.list_clients()

    with pytest.raises(BrokerAuthFailed, match=r"a subscription to .* admin role"):
        asyncio.run(not_admin())

    async def listener_only() -> None:
        # Allowed to read the answers but not to send commands: the broker's PUBACK 0x87 says so.
        listen = Acl("subscribePattern", "$CONTROL/dynamic-security/#", 0, True)
        receive = Acl("publishClientReceive", "$CONTROL/dynamic-security/#", 0, True)
        async with admin(broker) as client:
            await sync(
                client,
                [DesiredClient("ear", "ear-password-1", (RoleGrant("mqop:ear"),))],
                [DesiredRole("mqop:ear", (listen, receive))],
            )
        async with DynsecClient("127.0.0.1", broker.port, "ear", "ear-password-1") as client:
            await client.list_clients()

    with pytest.raises(BrokerAuthFailed, match=r"to publish to .*Not authorized"):
        asyncio.run(listener_only())

    async def closed_port() -> None:
        async with DynsecClient("127.0.0.1", broker.port, "admin", ADMIN_PASSWORD, timeout=5) as client:
            broker.stop(keep=True)
            await client.list_clients()

    with pytest.raises(BrokerUnreachable, match=f"127.0.0.1:{broker.port}"):
        asyncio.run(closed_port())
    with pytest.raises(BrokerUnreachable, match="connection refused"):
        asyncio.run(admin(broker).connect())


def test_the_next_call_reconnects_after_the_broker_restarts(broker: Mosquitto) -> None:
    async def scenario() -> None:
        async with admin(broker) as client:
            await client.create_client("kept", "kept-password-1")
            broker.stop(keep=True)
            broker.start()
            for _ in range(50):
                try:
                    assert await client.get_client("kept") is not None
                    return
                except BrokerUnreachable:
                    await asyncio.sleep(0.1)
            raise AssertionError("no reconnection after the broker restarted")

    asyncio.run(scenario())


def test_a_broker_without_the_plugin_times_out_with_a_clear_error() -> None:
    server = Mosquitto().start()  # anonymous access, no dynamic security: nobody answers $CONTROL
    try:

        async def scenario() -> None:
            async with DynsecClient(
                "127.0.0.1", server.port, "anyone", "any-password-1", timeout=1
            ) as client:
                await client.list_clients()

        with pytest.raises(BrokerTimeout, match="unanswered for 1 s"):
            asyncio.run(scenario())
    finally:
        server.stop()
