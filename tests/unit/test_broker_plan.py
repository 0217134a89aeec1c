"""The broker planner and the AclPolicy translation, without a broker.

`FakeDynsec` applies commands the way Mosquitto 2.0.11's dynamic-security plugin does (read from
its source: one ACL per (type, topic), grants ordered by priority then name, first matching ACL
decides), so idempotence and priority semantics can be checked here; tests/integration/test_dynsec.py
checks the same against the real broker.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from paho.mqtt.client import topic_matches_sub

from mqtt_operator.broker import commands as cmd
from mqtt_operator.broker.acl import (
    PRIORITY_MAX,
    AclPolicyError,
    PolicyRoles,
    Rule,
    Subject,
    is_policy_role,
    merge_grants,
    policy_roles,
    role_priority,
)
from mqtt_operator.broker.commands import Command
from mqtt_operator.broker.errors import (
    ClientAlreadyExists,
    ClientNotFound,
    CommandError,
    InvalidCommand,
    RoleNotFound,
    command_error,
)
from mqtt_operator.broker.model import (
    DENY_BY_DEFAULT,
    Acl,
    BrokerClient,
    BrokerRole,
    DefaultAclAccess,
    DesiredClient,
    DesiredRole,
    Ownership,
    RoleGrant,
)
from mqtt_operator.broker.plan import Plan, plan

OWN = Ownership()
MARK = OWN.client_marker
ADMIN_CLIENT = BrokerClient("admin", textname="Dynsec admin user", roles=(RoleGrant("admin"),))
ADMIN_ROLE = BrokerRole("admin", acls=(Acl("publishClientSend", "$CONTROL/dynamic-security/#", 0, True),))


class FakeDynsec:
    """Broker state changed by commands as the plugin changes it; counts the clients it would kick."""

    def __init__(self, clients: list[BrokerClient], roles: list[BrokerRole]) -> None:
        self.clients = {c.username: c for c in clients}
        self.roles = {r.rolename: r for r in roles}
        self.kicked: set[str] = set()

    def holders(self, rolename: str) -> set[str]:
        return {c.username for c in self.clients.values() if any(g.rolename == rolename for g in c.roles)}

    def apply(self, commands: tuple[Command, ...] | list[Command]) -> None:
        for command in commands:
            getattr(self, "do_" + command.name)(**command.fields)

    def do_createRole(self, rolename: str, acls: Sequence[dict[str, Any]] = (), **texts: str) -> None:
        assert rolename not in self.roles
        self.roles[rolename] = BrokerRole(rolename, None, texts.get("textdescription"), cmd.parse_acls(acls))

    def do_modifyRole(self, rolename: str, **texts: str) -> None:
        self.roles[rolename] = replace(self.roles[rolename], textdescription=texts.get("textdescription"))

    def do_deleteRole(self, rolename: str) -> None:
        del self.roles[rolename]
        self.kicked |= self.holders(rolename)
        for name, c in self.clients.items():
            self.clients[name] = replace(c, roles=tuple(g for g in c.roles if g.rolename != rolename))

    def do_addRoleACL(self, rolename: str, **acl: Any) -> None:
        role = self.roles[rolename]
        new = cmd.parse_acls([acl])[0]
        assert new.key not in {a.key for a in role.acls}, "ACL with this topic already exists"
        self.roles[rolename] = replace(role, acls=tuple(sorted((*role.acls, new))))
        self.kicked |= self.holders(rolename)

    def do_removeRoleACL(self, rolename: str, acltype: str, topic: str) -> None:
        role = self.roles[rolename]
        assert (acltype, topic) in {a.key for a in role.acls}, "ACL not found"
        self.roles[rolename] = replace(role, acls=tuple(a for a in role.acls if a.key != (acltype, topic)))
        self.kicked |= self.holders(rolename)

    def do_createClient(self, username: str, password: str, **texts: str) -> None:
        assert username not in self.clients and password
        self.clients[username] = BrokerClient(
            username, texts.get("clientid"), texts.get("textname"), texts.get("textdescription")
        )

    def do_modifyClient(self, username: str, **texts: str) -> None:
        c = self.clients[username]
        if "clientid" in texts:
            c = replace(c, clientid=texts["clientid"] or None)
        if "textname" in texts:
            c = replace(c, textname=texts["textname"])
        if "textdescription" in texts:
            c = replace(c, textdescription=texts["textdescription"])
        self.clients[username] = c
        self.kicked.add(username)

    def do_enableClient(self, username: str) -> None:
        self.clients[username] = replace(self.clients[username], disabled=False)

    def do_deleteClient(self, username: str) -> None:
        del self.clients[username]
        self.kicked.add(username)

    def do_setClientPassword(self, username: str, password: str) -> None:
        assert username in self.clients and password
        self.kicked.add(username)

    def do_addClientRole(self, username: str, rolename: str, priority: int) -> None:
        c = self.clients[username]
        assert rolename in self.roles and rolename not in {g.rolename for g in c.roles}
        self.clients[username] = replace(c, roles=tuple(sorted((*c.roles, RoleGrant(rolename, priority)))))
        self.kicked.add(username)

    def do_removeClientRole(self, username: str, rolename: str) -> None:
        c = self.clients[username]
        assert rolename in {g.rolename for g in c.roles}
        self.clients[username] = replace(c, roles=tuple(g for g in c.roles if g.rolename != rolename))
        self.kicked.add(username)

    def may_publish(self, username: str, topic: str, default: bool = False) -> bool:
        """Mosquitto's check for publishClientSend: roles by priority desc then name; first match decides."""
        grants = sorted(self.clients[username].roles, key=lambda g: (-g.priority, g.rolename))
        for grant in grants:
            acls = sorted(self.roles[grant.rolename].acls, key=lambda a: -a.priority)
            for acl in acls:
                if acl.acltype == "publishClientSend" and topic_matches_sub(acl.topic, topic):
                    return acl.allow
        return default


def run(
    desired_clients: list[DesiredClient],
    desired_roles: list[DesiredRole],
    fake: FakeDynsec,
    **kwargs: Any,
) -> Plan:
    return plan(
        desired_clients, desired_roles, fake.clients.values(), fake.roles.values(), ownership=OWN, **kwargs
    )


def names(p: Plan) -> list[str]:
    return [c.name for c in p.commands]


def empty_broker() -> FakeDynsec:
    return FakeDynsec([ADMIN_CLIENT], [ADMIN_ROLE])


ROLE = DesiredRole(
    "mqop:fleet#allow",
    (Acl("publishClientSend", "vehicles/+/state", 0, True), Acl("subscribePattern", "vehicles/#", 0, True)),
    "AclPolicy devices/fleet",
)
ALICE = DesiredClient(
    "alice", "alice-password-1", (RoleGrant("mqop:fleet#allow", 0),), "a car", owner="ns/alice"
)


# -- planner ----------------------------------------------------------------------------------------


def test_new_objects_are_created_roles_first_and_grants_added_one_by_one() -> None:
    p = run([ALICE], [ROLE], empty_broker())
    assert names(p) == ["createRole", "createClient", "addClientRole"]
    create_client = p.commands[1]
    # Never createClient's `roles` field: Mosquitto 2.0 then links the role one way only (see commands.py).
    assert "roles" not in create_client.fields
    assert create_client.fields["textname"] == f"{MARK} ns/alice"
    assert create_client.fields["textdescription"] == "a car"
    assert dict(p.commands[2].fields) == {"username": "alice", "rolename": "mqop:fleet#allow", "priority": 0}


def test_applied_plan_leaves_nothing_to_do_and_kicks_no_one() -> None:
    fake = empty_broker()
    fake.apply(run([ALICE], [ROLE], fake).commands)
    fake.kicked.clear()
    again = run([ALICE], [ROLE], fake)
    assert again.commands == () and not again
    assert fake.kicked == set()


def test_changed_policy_edits_only_the_differing_acl_entries() -> None:
    fake = empty_broker()
    fake.apply(run([ALICE], [ROLE], fake).commands)
    changed = replace(
        ROLE,
        acls=(
            Acl("publishClientSend", "vehicles/+/state", 0, True),
            Acl("subscribePattern", "fleet/#", 0, True),
        ),
    )
    p = run([ALICE], [changed], fake)
    assert [(c.name, c.fields.get("topic")) for c in p.commands] == [
        ("removeRoleACL", "vehicles/#"),
        ("addRoleACL", "fleet/#"),
    ]


def test_changed_effect_of_one_acl_is_a_remove_then_an_add() -> None:
    fake = empty_broker()
    fake.apply(run([ALICE], [ROLE], fake).commands)
    flipped = replace(
        ROLE,
        acls=(
            Acl("publishClientSend", "vehicles/+/state", 0, False),
            Acl("subscribePattern", "vehicles/#", 0, True),
        ),
    )
    p = run([ALICE], [flipped], fake)
    assert names(p) == ["removeRoleACL", "addRoleACL"]
    assert p.commands[1].fields["allow"] is False
    fake.apply(p.commands)
    assert run([ALICE], [flipped], fake).commands == ()


def test_client_roles_are_added_and_removed_by_difference_and_a_new_priority_replaces_the_grant() -> None:
    other = DesiredRole("mqop:other#deny", (Acl("publishClientSend", "x/#", 0, False),))
    fake = empty_broker()
    fake.apply(run([ALICE], [ROLE, other], fake).commands)
    moved = replace(ALICE, roles=(RoleGrant("mqop:fleet#allow", 4), RoleGrant("mqop:other#deny", 1)))
    p = run([moved], [ROLE, other], fake)
    assert [(c.name, c.fields.get("rolename"), c.fields.get("priority")) for c in p.commands] == [
        ("removeClientRole", "mqop:fleet#allow", None),
        ("addClientRole", "mqop:fleet#allow", 4),
        ("addClientRole", "mqop:other#deny", 1),
    ]


def test_roles_given_by_hand_stay_on_an_owned_client_unless_desired_with_another_priority() -> None:
    fake = empty_broker()
    fake.roles["ops"] = BrokerRole("ops")
    fake.apply(run([ALICE], [ROLE], fake).commands)
    fake.do_addClientRole("alice", "ops", 5)
    assert run([ALICE], [ROLE], fake).commands == ()
    wants_ops = replace(ALICE, roles=(*ALICE.roles, RoleGrant("ops", 1)))
    p = run([wants_ops], [ROLE], fake)
    assert [(c.name, c.fields.get("rolename")) for c in p.commands] == [
        ("removeClientRole", "ops"),
        ("addClientRole", "ops"),
    ]
    fake.apply(p.commands)
    assert run([wants_ops], [ROLE], fake).commands == ()


def test_only_owned_objects_are_deleted_and_admin_never() -> None:
    fake = empty_broker()
    fake.clients["handmade"] = BrokerClient("handmade", textname="made with mosquitto_ctrl")
    fake.roles["handmade-role"] = BrokerRole("handmade-role")
    fake.apply(run([ALICE], [ROLE], fake).commands)
    p = run([], [], fake)
    assert [(c.name, c.subject) for c in p.commands] == [
        ("deleteClient", "alice"),
        ("deleteRole", "mqop:fleet#allow"),
    ]
    fake.apply(p.commands)
    assert set(fake.clients) == {"admin", "handmade"}
    assert set(fake.roles) == {"admin", "handmade-role"}


def test_admin_is_not_owned_even_with_the_marker_and_cannot_be_desired() -> None:
    fake = FakeDynsec([replace(ADMIN_CLIENT, textname=MARK)], [ADMIN_ROLE])
    assert run([], [], fake).commands == ()
    with pytest.raises(ValueError, match="reserved"):
        run([DesiredClient("admin", "whatever-1")], [], fake)
    with pytest.raises(ValueError, match="prefix"):
        run([], [DesiredRole("admin")], fake)


def test_a_desired_name_taken_by_an_unowned_client_is_a_conflict_not_a_takeover() -> None:
    fake = empty_broker()
    fake.clients["alice"] = BrokerClient("alice", textname="someone else's")
    p = run([ALICE], [ROLE], fake)
    assert names(p) == ["createRole"]
    assert [c.name for c in p.conflicts] == ["alice"]
    assert "did not create" in p.conflicts[0].message


def test_without_prune_nothing_is_deleted() -> None:
    fake = empty_broker()
    fake.apply(run([ALICE], [ROLE], fake).commands)
    bob = DesiredClient("bob", "bob-password-1")
    assert names(run([bob], [], fake, prune=False)) == ["createClient"]


def test_deleting_a_role_does_not_first_remove_it_from_its_holders() -> None:
    fake = empty_broker()
    fake.apply(run([ALICE], [ROLE], fake).commands)
    p = run([replace(ALICE, roles=())], [], fake)
    assert names(p) == ["deleteRole"]
    fake.apply(p.commands)
    assert run([replace(ALICE, roles=())], [], fake).commands == ()


def test_password_is_set_only_for_named_clients_and_new_clients_get_theirs() -> None:
    fake = empty_broker()
    fake.apply(run([ALICE], [ROLE], fake).commands)
    bob = DesiredClient("bob", "bob-password-1")
    p = run([ALICE, bob], [ROLE], fake, password_changes={"alice", "bob"})
    assert [(c.name, c.subject) for c in p.commands] == [
        ("setClientPassword", "alice"),
        ("createClient", "bob"),
    ]
    assert p.commands[1].fields["password"] == "bob-password-1"


def test_texts_clientid_and_disabled_state_are_repaired() -> None:
    fake = empty_broker()
    fake.apply(run([ALICE], [ROLE], fake).commands)
    fake.clients["alice"] = replace(fake.clients["alice"], disabled=True)
    fake.roles[ROLE.rolename] = replace(fake.roles[ROLE.rolename], textdescription="edited by hand")
    pinned = replace(ALICE, description="a truck", clientid="alice-car")
    p = run([pinned], [ROLE], fake)
    assert [(c.name, dict(c.fields)) for c in p.commands] == [
        ("modifyRole", {"rolename": ROLE.rolename, "textdescription": ROLE.description}),
        ("enableClient", {"username": "alice"}),
        ("modifyClient", {"username": "alice", "textdescription": "a truck", "clientid": "alice-car"}),
    ]
    fake.apply(p.commands)
    assert run([pinned], [ROLE], fake).commands == ()


def test_default_acl_access_is_set_first_when_it_differs() -> None:
    mosquitto_default = DefaultAclAccess(publish_client_receive=True)
    p = run([], [], empty_broker(), desired_defaults=DENY_BY_DEFAULT, actual_defaults=mosquitto_default)
    assert names(p) == ["setDefaultACLAccess"]
    assert {"acltype": "unsubscribe", "allow": True} in p.commands[0].fields["acls"]
    assert (
        run(
            [], [], empty_broker(), desired_defaults=DENY_BY_DEFAULT, actual_defaults=DENY_BY_DEFAULT
        ).commands
        == ()
    )


def test_a_grant_of_an_owned_role_that_is_not_desired_is_refused_when_pruning() -> None:
    with pytest.raises(ValueError, match="not a desired role"):
        run([ALICE], [], empty_broker())
    assert names(run([ALICE], [], empty_broker(), prune=False)) == ["createClient", "addClientRole"]


def test_duplicate_desired_names_and_acl_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="'alice' more than once"):
        run([ALICE, ALICE], [], empty_broker())
    with pytest.raises(ValueError, match="more than one ACL"):
        DesiredRole("mqop:x", (Acl("subscribePattern", "a", 0, True), Acl("subscribePattern", "a", 0, False)))


@pytest.mark.parametrize("seed", range(25))
def test_plan_converges_in_one_step_from_any_state(seed: int) -> None:
    rng = random.Random(seed)
    topics = ["a/#", "a/+/b", "c", "d/#", "$share/g/a/#"]
    types = ["publishClientSend", "publishClientReceive", "subscribePattern"]

    def some_roles() -> list[DesiredRole]:
        return [
            DesiredRole(
                f"mqop:r{i}",
                tuple(
                    {
                        (t, topic): Acl(t, topic, rng.choice([0, 1]), rng.random() < 0.7)  # type: ignore[arg-type]
                        for t in rng.sample(types, 2)
                        for topic in rng.sample(topics, 2)
                    }.values()
                ),
            )
            for i in rng.sample(range(6), rng.randint(0, 5))
        ]

    def some_clients(roles: list[DesiredRole]) -> list[DesiredClient]:
        return [
            DesiredClient(
                f"u{i}",
                f"password-{i}",
                tuple(RoleGrant(r.rolename, rng.randint(-1, 3)) for r in roles if rng.random() < 0.5),
                rng.choice(["", "x"]),
                clientid=rng.choice([None, f"c{i}"]),
            )
            for i in rng.sample(range(6), rng.randint(0, 5))
        ]

    before_roles = some_roles()
    fake = empty_broker()
    fake.apply(run(some_clients(before_roles), before_roles, fake).commands)
    roles = some_roles()
    clients = some_clients(roles)
    fake.apply(run(clients, roles, fake, password_changes={c.username for c in clients}).commands)
    assert run(clients, roles, fake).commands == ()
    assert {c.username for c in fake.clients.values() if OWN.owns_client(c)} == {c.username for c in clients}
    assert {r for r in fake.roles if OWN.owns_role(r)} == {r.rolename for r in roles}


# -- commands and errors ----------------------------------------------------------------------------


def test_a_command_never_shows_its_password() -> None:
    command = cmd.create_client("alice", "top-secret-password")
    assert "top-secret-password" not in repr(command)
    assert "top-secret-password" not in str(command)
    assert "top-secret-password" not in repr(run([ALICE], [ROLE], empty_broker()))
    assert command.secrets == ["top-secret-password"]
    assert command.to_json("id-1")["correlationData"] == "id-1"


def test_broker_error_strings_become_typed_errors() -> None:
    assert isinstance(command_error("getClient", "x", "Client not found"), ClientNotFound)
    assert isinstance(command_error("addClientRole", "x", "Role not found"), RoleNotFound)
    assert isinstance(command_error("createClient", "x", "Client already exists"), ClientAlreadyExists)
    assert isinstance(command_error("addRoleACL", "r", "Invalid ACL topic"), InvalidCommand)
    other = command_error("addClientRole", "x", "Internal error")
    assert type(other) is CommandError and str(other) == "addClientRole for 'x' failed: Internal error"


# -- AclPolicy translation --------------------------------------------------------------------------


def roles_of(result: PolicyRoles) -> dict[str, set[tuple[str, str, bool]]]:
    return {r.rolename: {(a.acltype, a.topic, a.allow) for a in r.acls} for r in result.roles}


def translate(rules: list[Rule], priority: int = 0, *subjects: Subject) -> PolicyRoles:
    return policy_roles("ns/p", rules, priority, subjects, role_prefix="mqop:")


def test_actions_map_to_acl_types_and_subscribe_also_allows_the_share_form() -> None:
    result = translate(
        [Rule("allow", ("publish", "subscribe", "receive"), ("vehicles/#",))], 0, Subject("alice")
    )
    assert roles_of(result) == {
        "mqop:ns/p": {
            ("publishClientSend", "vehicles/#", True),
            ("publishClientReceive", "vehicles/#", True),
            ("subscribePattern", "vehicles/#", True),
            ("subscribePattern", "$share/+/vehicles/#", True),
        }
    }
    assert result.role_name == "mqop:ns/p" and result.acl_count == 4
    assert result.grants == {"alice": (RoleGrant("mqop:ns/p", 0),)}
    assert result.warnings == ()
    assert not any(a.acltype.startswith("unsubscribe") for r in result.roles for a in r.acls)


def test_a_denied_subscription_is_denied_in_the_share_form_too_and_hash_needs_no_second_entry() -> None:
    result = translate([Rule("deny", ("subscribe",), ("secret/#", "#"))])
    assert roles_of(result)["mqop:ns/p"] == {
        ("subscribePattern", "secret/#", False),
        ("subscribePattern", "$share/+/secret/#", False),
        ("subscribePattern", "#", False),
    }


def test_the_shared_role_exists_before_any_user_is_named() -> None:
    result = translate([Rule("allow", ("publish",), ("a",))])
    assert [r.rolename for r in result.roles] == ["mqop:ns/p"] and result.grants == {}


def test_earlier_rules_get_higher_acl_priority_and_keep_a_repeated_topic() -> None:
    result = translate(
        [
            Rule("deny", ("publish",), ("vehicles/secret/#",)),
            Rule("allow", ("publish",), ("vehicles/#", "vehicles/secret/#")),
        ]
    )
    (role,) = result.roles
    assert {(a.topic, a.priority, a.allow) for a in role.acls} == {
        ("vehicles/secret/#", 2, False),
        ("vehicles/#", 1, True),
    }


def test_percent_u_gives_each_user_a_role_with_all_rules_of_the_policy() -> None:
    result = translate(
        [
            Rule("deny", ("publish",), ("devices/%u/admin",)),
            Rule("allow", ("publish",), ("devices/%u/#", "telemetry")),
        ],
        3,
        Subject("bob"),
        Subject("alice"),
    )
    assert roles_of(result) == {
        "mqop:ns/p@alice": {
            ("publishClientSend", "devices/alice/admin", False),
            ("publishClientSend", "devices/alice/#", True),
            ("publishClientSend", "telemetry", True),
        },
        "mqop:ns/p@bob": {
            ("publishClientSend", "devices/bob/admin", False),
            ("publishClientSend", "devices/bob/#", True),
            ("publishClientSend", "telemetry", True),
        },
    }
    assert result.grants == {
        "alice": (RoleGrant("mqop:ns/p@alice", 7),),
        "bob": (RoleGrant("mqop:ns/p@bob", 7),),
    }
    assert all(is_policy_role(r.rolename, "ns/p", "mqop:") for r in result.roles)
    assert not is_policy_role("mqop:ns/p2", "ns/p", "mqop:")


def test_percent_c_is_the_pinned_client_id_and_without_one_allow_is_withheld_and_deny_widened() -> None:
    rules = [Rule("deny", ("publish",), ("cars/%c/admin",)), Rule("allow", ("publish",), ("cars/%c/#",))]
    result = translate(rules, 0, Subject("alice", clientid="car-17"), Subject("bob"))
    assert roles_of(result) == {
        "mqop:ns/p@alice": {
            ("publishClientSend", "cars/car-17/admin", False),
            ("publishClientSend", "cars/car-17/#", True),
        },
        "mqop:ns/p@bob": {("publishClientSend", "cars/+/admin", False)},
    }
    assert len(result.warnings) == 2
    assert all("'bob'" in w and "clientId" in w for w in result.warnings)
    only_allow = translate([Rule("allow", ("publish",), ("cars/%c/#",))], 0, Subject("bob"))
    assert only_allow.roles == () and only_allow.grants == {}


@pytest.mark.parametrize("username", ["a/b", "+", "x#"])
def test_a_username_that_would_change_the_topic_shape_is_refused(username: str) -> None:
    with pytest.raises(AclPolicyError, match="would change what"):
        translate([Rule("allow", ("publish",), ("d/%u",))], 0, Subject(username))
    translate([Rule("allow", ("publish",), ("d/x",))], 0, Subject(username))  # no pattern: nothing to break


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        ("", "is empty"),
        ("a/#/b", "'#'"),
        ("a/b#", "'#'"),
        ("a+/b", "'\\+'"),
        ("$share/g/x", "\\$share"),
        ("a/%x", "'%'"),
    ],
)
def test_invalid_topics_are_refused_with_a_reason(topic: str, why: str) -> None:
    with pytest.raises(AclPolicyError, match=f"rule 1: topic .* {why}"):
        translate([Rule("allow", ("subscribe",), (topic,))])


def test_unknown_actions_and_out_of_range_priority_are_refused_together() -> None:
    with pytest.raises(AclPolicyError) as refused:
        translate([Rule("allow", ("write",), ("a",))], PRIORITY_MAX + 1)  # type: ignore[arg-type]
    assert "priority" in str(refused.value) and "'write'" in str(refused.value)


def test_subscribe_without_receive_warns_both_ways() -> None:
    # Allowed: receiving is denied by default, so the subscription would deliver nothing.
    result = translate([Rule("allow", ("subscribe",), ("a/#",))])
    assert len(result.warnings) == 1 and "unless a policy allows receive" in result.warnings[0]
    # Denied: a wider allowed subscription still delivers these topics.
    result = translate(
        [Rule("deny", ("subscribe",), ("a/secret/#",)), Rule("allow", ("subscribe", "receive"), ("a/#",))]
    )
    assert len(result.warnings) == 1 and "add 'receive'" in result.warnings[0]
    assert translate([Rule("deny", ("subscribe", "receive"), ("a/secret/#",))]).warnings == ()


def test_priority_mapping() -> None:
    assert role_priority(0, has_deny=False) == 0
    assert role_priority(0, has_deny=True) == 1
    assert role_priority(5, has_deny=False) == 10
    assert role_priority(-2, has_deny=True) == -3


def _broker_with_policies(*policies: tuple[str, int, list[Rule]]) -> FakeDynsec:
    results = [
        policy_roles(name, rules, prio, [Subject("car")], role_prefix="mqop:")
        for name, prio, rules in policies
    ]
    fake = empty_broker()
    client = DesiredClient("car", "car-password-1", merge_grants(results)["car"])
    fake.apply(run([client], [role for r in results for role in r.roles], fake).commands)
    return fake


OPEN = [Rule("allow", ("publish",), ("vehicles/#",))]
LOCK = [Rule("deny", ("publish",), ("vehicles/secret/#",))]


def test_a_deny_with_higher_priority_wins_over_an_allow_from_another_policy() -> None:
    fake = _broker_with_policies(("open", 0, OPEN), ("lock", 10, LOCK))
    assert fake.may_publish("car", "vehicles/1/state")
    assert not fake.may_publish("car", "vehicles/secret/x")


def test_an_allow_with_higher_priority_wins_and_at_equal_priority_the_policy_with_deny_first() -> None:
    assert _broker_with_policies(("zz-open", 1, OPEN), ("lock", 0, LOCK)).may_publish(
        "car", "vehicles/secret/x"
    )
    # "a-open" sorts before "lock", so by name alone Mosquitto would check it first.
    equal = _broker_with_policies(("a-open", 0, OPEN), ("lock", 0, LOCK))
    assert not equal.may_publish("car", "vehicles/secret/x")


def test_within_one_policy_the_earlier_rule_wins() -> None:
    deny_first = _broker_with_policies(("p", 0, [*LOCK, *OPEN]))
    assert deny_first.may_publish("car", "vehicles/1")
    assert not deny_first.may_publish("car", "vehicles/secret/1")
    allow_first = _broker_with_policies(("p", 0, [*OPEN, *LOCK]))
    assert allow_first.may_publish("car", "vehicles/secret/1")
