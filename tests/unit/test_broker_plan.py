"""The broker planner and the AclPolicy translation, without a broker.

`FakeDynsec` applies commands the way Mosquitto 2.0.11's dynamic-security plugin does (read from
its source: one ACL per (type, topic), grants ordered by priority then name, first matching ACL
decides), so idempotence and priority semantics can be checked here; tests/integration/test_dynsec.py
checks the same against the real broker.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from paho.mqtt.client import topic_matches_sub

from mqtt_operator.broker import commands as cmd
from mqtt_operator.broker.acl import (
    PRIORITY_MAX,
    AclPolicyError,
    Rule,
    Subject,
    merge_grants,
    policy_role_prefix,
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

    def do_createRole(self, rolename: str, acls: list[dict[str, Any]] = (), **texts: str) -> None:  # type: ignore[assignment]
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

    def do_createClient(
        self, username: str, password: str, roles: list[dict[str, Any]] = (), **texts: str
    ) -> None:  # type: ignore[assignment]
        assert username not in self.clients and password
        for grant in roles:
            assert grant["rolename"] in self.roles, "Role not found"
        self.clients[username] = BrokerClient(
            username,
            texts.get("clientid"),
            texts.get("textname"),
            texts.get("textdescription"),
            cmd.parse_grants(roles),
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


def test_new_objects_are_created_roles_first_with_grants_inline() -> None:
    p = run([ALICE], [ROLE], empty_broker())
    assert names(p) == ["createRole", "createClient"]
    create_client = p.commands[1]
    assert create_client.fields["roles"] == [{"rolename": "mqop:fleet#allow", "priority": 0}]
    assert create_client.fields["textname"] == f"{MARK} ns/alice"
    assert create_client.fields["textdescription"] == "a car"


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


def test_roles_given_by_hand_stay_on_an_owned_client() -> None:
    fake = empty_broker()
    fake.roles["ops"] = BrokerRole("ops")
    fake.apply(run([ALICE], [ROLE], fake).commands)
    fake.do_addClientRole("alice", "ops", 5)
    assert run([ALICE], [ROLE], fake).commands == ()


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


def roles_of(result: Any) -> dict[str, set[tuple[str, str, bool]]]:
    return {r.rolename: {(a.acltype, a.topic, a.allow) for a in r.acls} for r in result.roles}


def test_actions_map_to_acl_types_and_subscribe_also_allows_the_share_form() -> None:
    result = policy_roles(
        "ns/fleet",
        [Rule("allow", ("publish", "subscribe", "receive"), ("vehicles/#",))],
        0,
        [Subject("alice")],
        role_prefix="mqop:",
    )
    assert roles_of(result) == {
        "mqop:ns/fleet#allow": {
            ("publishClientSend", "vehicles/#", True),
            ("publishClientReceive", "vehicles/#", True),
            ("subscribePattern", "vehicles/#", True),
            ("subscribePattern", "$share/+/vehicles/#", True),
        }
    }
    assert result.grants == {"alice": (RoleGrant("mqop:ns/fleet#allow", 0),)}
    assert result.warnings == ()
    assert not any(a.acltype.startswith("unsubscribe") for r in result.roles for a in r.acls)


def test_a_denied_subscription_is_denied_in_the_share_form_too_and_hash_needs_no_second_entry() -> None:
    result = policy_roles("p", [Rule("deny", ("subscribe",), ("secret/#", "#"))], 0, [], role_prefix="mqop:")
    assert roles_of(result)["mqop:p#deny"] == {
        ("subscribePattern", "secret/#", False),
        ("subscribePattern", "$share/+/secret/#", False),
        ("subscribePattern", "#", False),
    }


def test_an_explicit_share_filter_grants_exactly_that_form_and_only_for_subscribe() -> None:
    result = policy_roles(
        "p",
        [
            Rule("allow", ("subscribe",), ("$share/ns.conn/vehicles/#",)),
            Rule("allow", ("receive",), ("vehicles/#",)),
        ],
        0,
        [],
        role_prefix="mqop:",
    )
    assert ("subscribePattern", "$share/ns.conn/vehicles/#", True) in roles_of(result)["mqop:p#allow"]
    assert ("subscribePattern", "$share/+/$share/ns.conn/vehicles/#", True) not in roles_of(result)[
        "mqop:p#allow"
    ]
    with pytest.raises(AclPolicyError, match="only 'subscribe'"):
        policy_roles("p", [Rule("allow", ("publish",), ("$share/g/x",))], 0, [], role_prefix="mqop:")


def test_percent_u_becomes_one_role_per_user_and_other_rules_stay_shared() -> None:
    result = policy_roles(
        "ns/devices",
        [
            Rule("allow", ("publish",), ("devices/%u/#", "telemetry")),
            Rule("deny", ("publish",), ("devices/%u/admin",)),
        ],
        3,
        [Subject("bob"), Subject("alice")],
        role_prefix="mqop:",
    )
    assert roles_of(result) == {
        "mqop:ns/devices#allow": {("publishClientSend", "telemetry", True)},
        "mqop:ns/devices#allow@alice": {("publishClientSend", "devices/alice/#", True)},
        "mqop:ns/devices#allow@bob": {("publishClientSend", "devices/bob/#", True)},
        "mqop:ns/devices#deny@alice": {("publishClientSend", "devices/alice/admin", False)},
        "mqop:ns/devices#deny@bob": {("publishClientSend", "devices/bob/admin", False)},
    }
    assert result.grants["alice"] == (
        RoleGrant("mqop:ns/devices#allow", 6),
        RoleGrant("mqop:ns/devices#allow@alice", 6),
        RoleGrant("mqop:ns/devices#deny@alice", 7),
    )
    assert all(r.rolename.startswith(policy_role_prefix("ns/devices", "mqop:")) for r in result.roles)


def test_percent_c_needs_a_pinned_client_id() -> None:
    rule = Rule("allow", ("publish",), ("cars/%c/state",))
    pinned = policy_roles("p", [rule], 0, [Subject("alice", clientid="car-17")], role_prefix="mqop:")
    assert roles_of(pinned) == {"mqop:p#allow@alice": {("publishClientSend", "cars/car-17/state", True)}}
    with pytest.raises(AclPolicyError) as refused:
        policy_roles(
            "p", [rule], 0, [Subject("alice", clientid="car-17"), Subject("bob")], role_prefix="mqop:"
        )
    message = str(refused.value)
    assert "'bob'" in message and "%c" in message and "client id" in message and "'alice'" not in message


@pytest.mark.parametrize("username", ["a/b", "+", "x#"])
def test_a_username_that_would_change_the_topic_shape_is_refused(username: str) -> None:
    with pytest.raises(AclPolicyError, match="would change what the topic matches"):
        policy_roles(
            "p", [Rule("allow", ("publish",), ("d/%u",))], 0, [Subject(username)], role_prefix="mqop:"
        )


@pytest.mark.parametrize(
    ("topic", "why"),
    [("", "is empty"), ("a/#/b", "'#'"), ("a/b#", "'#'"), ("a+/b", "'\\+'"), ("$share/+/x", "literal group")],
)
def test_invalid_topics_are_refused_with_a_reason(topic: str, why: str) -> None:
    with pytest.raises(AclPolicyError, match=f"rule 1: topic .* {why}"):
        policy_roles("p", [Rule("allow", ("subscribe",), (topic,))], 0, [], role_prefix="mqop:")


def test_unknown_actions_and_out_of_range_priority_are_refused_together() -> None:
    with pytest.raises(AclPolicyError) as refused:
        policy_roles("p", [Rule("allow", ("write",), ("a",))], PRIORITY_MAX + 1, [], role_prefix="mqop:")  # type: ignore[arg-type]
    assert "priority" in str(refused.value) and "'write'" in str(refused.value)


def test_subscribe_without_receive_warns_because_receive_is_denied_by_default() -> None:
    result = policy_roles("p", [Rule("allow", ("subscribe",), ("a/#",))], 0, [], role_prefix="mqop:")
    assert len(result.warnings) == 1 and "receive" in result.warnings[0]


def test_priority_mapping() -> None:
    assert role_priority(0, "allow") == 0
    assert role_priority(0, "deny") == 1
    assert role_priority(5, "allow") == 10
    assert role_priority(-2, "deny") == -3


def _broker_with_policies(*policies: tuple[str, int, Rule]) -> FakeDynsec:
    results = [
        policy_roles(name, [rule], prio, [Subject("car")], role_prefix="mqop:")
        for name, prio, rule in policies
    ]
    grants = merge_grants(results)
    fake = empty_broker()
    desired_roles = [role for r in results for role in r.roles]
    fake.apply(run([DesiredClient("car", "car-password-1", grants["car"])], desired_roles, fake).commands)
    return fake


def test_a_deny_with_higher_priority_wins_over_an_allow_from_another_policy() -> None:
    fake = _broker_with_policies(
        ("open", 0, Rule("allow", ("publish",), ("vehicles/#",))),
        ("lock", 10, Rule("deny", ("publish",), ("vehicles/secret/#",))),
    )
    assert fake.may_publish("car", "vehicles/1/state")
    assert not fake.may_publish("car", "vehicles/secret/x")


def test_an_allow_with_higher_priority_wins_over_a_deny_and_at_equal_priority_deny_wins() -> None:
    higher_allow = _broker_with_policies(
        ("lock", 0, Rule("deny", ("publish",), ("vehicles/#",))),
        ("zz-open", 1, Rule("allow", ("publish",), ("vehicles/#",))),
    )
    assert higher_allow.may_publish("car", "vehicles/1")
    # "a-open" sorts before "lock": by name Mosquitto would check it first; the odd priority of deny decides.
    equal = _broker_with_policies(
        ("a-open", 0, Rule("allow", ("publish",), ("vehicles/#",))),
        ("lock", 0, Rule("deny", ("publish",), ("vehicles/#",))),
    )
    assert not equal.may_publish("car", "vehicles/1")


def test_within_one_policy_deny_wins_over_allow() -> None:
    result = policy_roles(
        "p",
        [Rule("allow", ("publish",), ("vehicles/#",)), Rule("deny", ("publish",), ("vehicles/secret/#",))],
        0,
        [Subject("car")],
        role_prefix="mqop:",
    )
    fake = empty_broker()
    fake.apply(
        run([DesiredClient("car", "car-password-1", result.grants["car"])], list(result.roles), fake).commands
    )
    assert fake.may_publish("car", "vehicles/1")
    assert not fake.may_publish("car", "vehicles/secret/1")
