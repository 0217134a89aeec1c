"""AclPolicy rules -> dynamic-security roles and grants: the one place that decides what a rule means.

Pure. The reconcile gives `policy_roles` a policy's rules, its priority and the users it applies
to; it gets back the roles to create and, per user, the role grants to add to that user's client.

Actions (Mosquitto 2.0 ACL types):

- publish   -> ``publishClientSend <topic>``
- receive   -> ``publishClientReceive <topic>``
- subscribe -> ``subscribePattern <filter>`` and ``subscribePattern $share/+/<filter>``: Mosquitto
  checks a shared subscription against its full string, so ``vehicles/#`` alone does not cover
  ``$share/g/vehicles/#`` (measured, FACTS.md). ``#`` needs no second entry (it matches ``$share/...``).
- unsubscribe is never written: its default stays allow (`model.DENY_BY_DEFAULT`), because refusing
  an UNSUBSCRIBE protects nothing and only keeps messages flowing to a client that wants them gone.
  The other three default to deny: a user can do nothing until a policy allows it.

Priority. Mosquitto checks a client's roles in descending role priority (equal priorities in
role-name order) and, within a role, ACLs in descending ACL priority; the first ACL whose topic
matches decides. The mapping::

    role priority on the client = 2 * policy.priority + (1 if the policy has a deny rule else 0)
    ACL priority in the role    = len(rules) - rule index   (the first rule has the highest)

So: between policies the higher `priority` wins whatever the effect (a deny at 10 beats an allow at
0, an allow at 10 beats a deny at 0); at equal priority a policy with a deny rule is checked before
one that only allows (two policies that both deny fall back to name order); within one policy the
earlier rule wins, as the CRD documents. When two rules yield the same (ACL type, topic), the
earlier one is kept: a role holds one entry per pair and the later one could never decide anyway.

Patterns. Mosquitto 2.0.11 does not substitute ``%u``/``%c`` in dynamic-security ACLs (measured,
FACTS.md), so the operator does: a policy with a ``%u`` or ``%c`` topic becomes one role per user,
``<prefix><policy>@<username>``, holding all the policy's rules with the patterns replaced (one role
per user keeps rule order meaningful); any other policy is one shared role ``<prefix><policy>``.
``%u`` is the username. ``%c`` is known in advance only when the broker pins the user to one client
id (the AuthUser's ``clientId``, which Mosquitto enforces at CONNECT); then it is that id. For a user
without one, an allow rule with ``%c`` is not granted (least privilege), and a deny rule with ``%c``
is kept with every level containing ``%c`` widened to ``+``, so it denies at least what it would
for any client id; both are reported in `PolicyRoles.warnings`. A username or client id with
``/``, ``+`` or ``#`` would change the topic's shape when substituted and is refused.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from mqtt_operator.broker.model import DENY_BY_DEFAULT, Acl, AclType, DesiredRole, RoleGrant

Effect = Literal["allow", "deny"]
Action = Literal["publish", "subscribe", "receive"]
ACTIONS: tuple[str, ...] = get_args(Action)
EFFECTS: tuple[str, ...] = get_args(Effect)

# The CRD's range; 2 * priority + 1 must stay far inside Mosquitto's C int.
PRIORITY_MIN = -1000
PRIORITY_MAX = 1000

SHARE_PREFIX = "$share/"
_ACL_TYPE: dict[str, AclType] = {"publish": "publishClientSend", "receive": "publishClientReceive"}


class AclPolicyError(ValueError):
    """A policy that cannot be turned into broker roles; the message says what to change."""


@dataclass(frozen=True)
class Rule:
    effect: Effect
    actions: tuple[Action, ...]
    topics: tuple[str, ...]


@dataclass(frozen=True)
class Subject:
    """A user a policy applies to; `clientid` is the client id the broker pins it to, if any."""

    username: str
    clientid: str | None = None


@dataclass(frozen=True)
class PolicyRoles:
    """What one policy puts on the broker.

    `role_name` is the shared role, or for a per-user policy the stem of ``<role_name>@<username>``;
    `grants` maps each username to the grants to merge into its client; `warnings` are sentences
    for the policy's status (rules not granted, subscribe without receive and the reverse).
    """

    role_name: str
    roles: tuple[DesiredRole, ...]
    grants: Mapping[str, tuple[RoleGrant, ...]]
    warnings: tuple[str, ...] = ()

    @property
    def acl_count(self) -> int:
        return sum(len(role.acls) for role in self.roles)


def role_priority(policy_priority: int, has_deny: bool) -> int:
    return 2 * policy_priority + (1 if has_deny else 0)


def policy_role_name(policy: str, role_prefix: str) -> str:
    return f"{role_prefix}{policy}"


def is_policy_role(rolename: str, policy: str, role_prefix: str) -> bool:
    """Whether `rolename` is one of `policy`'s roles (shared or per user), e.g. to delete them all."""
    base = policy_role_name(policy, role_prefix)
    return rolename == base or rolename.startswith(base + "@")


def uses_patterns(rules: Iterable[Rule]) -> bool:
    return any("%u" in topic or "%c" in topic for rule in rules for topic in rule.topics)


def policy_roles(
    policy: str,
    rules: Sequence[Rule],
    priority: int,
    subjects: Iterable[Subject],
    *,
    role_prefix: str,
    description: str = "",
) -> PolicyRoles:
    """The roles and grants for one policy; raises AclPolicyError for a policy that cannot work.

    `policy` names it uniquely among policies of the broker and must not contain "@" (e.g.
    "namespace/name"). A shared role exists even while no user is named, so naming a user later
    only adds a grant and never edits (and so never disconnects the holders of) a role.
    """
    if not policy or "@" in policy:
        raise ValueError(f"policy key {policy!r} must be non-empty and must not contain '@'")
    people = sorted({s.username: s for s in subjects}.values(), key=lambda s: s.username)
    problems: list[str] = []
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        problems.append(
            f"priority {priority} is out of range: use a value from {PRIORITY_MIN} to {PRIORITY_MAX}"
        )
    for rule_no, rule in enumerate(rules, start=1):
        problems.extend(_rule_problems(rule_no, rule))
    if uses_patterns(rules):
        problems.extend(_subject_problems(rules, people))
    if problems:
        raise AclPolicyError("; ".join(problems))

    base = policy_role_name(policy, role_prefix)
    grant_priority = role_priority(priority, any(rule.effect == "deny" for rule in rules))
    warnings = _receive_warnings(rules)
    roles: list[DesiredRole] = []
    grants: dict[str, tuple[RoleGrant, ...]] = {}
    if not uses_patterns(rules):
        roles.append(DesiredRole(base, _ordered_acls(rules, None, warnings), description))
        grants = {person.username: (RoleGrant(base, grant_priority),) for person in people}
    else:
        for person in people:
            acls = _ordered_acls(rules, person, warnings)
            if acls:
                name = f"{base}@{person.username}"
                roles.append(DesiredRole(name, acls, description))
                grants[person.username] = (RoleGrant(name, grant_priority),)
    return PolicyRoles(base, tuple(roles), grants, tuple(warnings))


def merge_grants(policies: Iterable[PolicyRoles]) -> dict[str, tuple[RoleGrant, ...]]:
    """All grants per username across policies: what goes into each `DesiredClient.roles`."""
    merged: dict[str, set[RoleGrant]] = defaultdict(set)
    for result in policies:
        for username, grants in result.grants.items():
            merged[username].update(grants)
    return {username: tuple(sorted(grants)) for username, grants in merged.items()}


def _ordered_acls(rules: Sequence[Rule], person: Subject | None, warnings: list[str]) -> tuple[Acl, ...]:
    by_key: dict[tuple[str, str], Acl] = {}
    for index, rule in enumerate(rules):
        acl_priority = len(rules) - index
        for topic in rule.topics:
            expanded = topic if person is None else _expand(index + 1, rule, topic, person, warnings)
            if expanded is None:
                continue
            for acl in _acls(rule, expanded, acl_priority):
                by_key.setdefault(acl.key, acl)  # the earlier rule keeps the (type, topic)
    return tuple(sorted(by_key.values()))


def _acls(rule: Rule, topic: str, priority: int) -> list[Acl]:
    allow = rule.effect == "allow"
    out: list[Acl] = []
    for action in dict.fromkeys(rule.actions):
        if action != "subscribe":
            out.append(Acl(_ACL_TYPE[action], topic, priority, allow))
            continue
        out.append(Acl("subscribePattern", topic, priority, allow))
        if topic != "#":
            out.append(Acl("subscribePattern", f"{SHARE_PREFIX}+/{topic}", priority, allow))
    return out


def _expand(rule_no: int, rule: Rule, topic: str, person: Subject, warnings: list[str]) -> str | None:
    expanded = topic.replace("%u", person.username)
    if "%c" not in expanded:
        return expanded
    if person.clientid is not None:
        return expanded.replace("%c", person.clientid)
    if rule.effect == "allow":
        warnings.append(
            f"rule {rule_no} topic {topic!r} is not granted to user {person.username!r}: it uses %c and that "
            f"user has no clientId; set spec.clientId on its AuthUser to grant it"
        )
        return None
    warnings.append(
        f"rule {rule_no} topic {topic!r} denies user {person.username!r} for every client id: it uses %c "
        f"and that user has no clientId"
    )
    return "/".join("+" if "%c" in level else level for level in expanded.split("/"))


def _rule_problems(rule_no: int, rule: Rule) -> list[str]:
    where = f"rule {rule_no}"
    problems: list[str] = []
    if rule.effect not in EFFECTS:
        problems.append(f"{where}: effect {rule.effect!r} is not one of {', '.join(EFFECTS)}")
    if not rule.actions:
        problems.append(f"{where}: list at least one action ({', '.join(ACTIONS)})")
    unknown = [a for a in rule.actions if a not in ACTIONS]
    if unknown:
        problems.append(
            f"{where}: unknown action(s) {', '.join(map(repr, unknown))}; use {', '.join(ACTIONS)}"
        )
    if not rule.topics:
        problems.append(f"{where}: list at least one topic")
    for topic in rule.topics:
        problem = _topic_problem(topic)
        if problem:
            problems.append(f"{where}: topic {topic!r} {problem}")
    return problems


def _topic_problem(topic: str) -> str | None:
    """Why `topic` cannot be an ACL filter of ours, or None (the CRD checks the same, with CEL)."""
    if not topic:
        return "is empty"
    if "\0" in topic:
        return "contains the NUL character"
    if len(topic.encode()) > 65535:
        return "is longer than MQTT allows (65535 bytes)"
    if topic == "$share" or topic.startswith(SHARE_PREFIX):
        return "is a $share filter: write the plain filter, subscribe rules are granted in both forms"
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "uses '#' other than as the whole last level"
        if "+" in level and level != "+":
            return "uses '+' other than as a whole level"
    if "%" in topic.replace("%u", "").replace("%c", ""):
        return "uses '%' other than in %u or %c"
    return None


def _subject_problems(rules: Sequence[Rule], people: Sequence[Subject]) -> list[str]:
    uses_c = any("%c" in topic for rule in rules for topic in rule.topics)
    problems: list[str] = []
    for person in people:
        named = [("username", person.username)]
        if uses_c and person.clientid is not None:
            named.append(("client id", person.clientid))
        for what, value in named:
            if not value or any(ch in value for ch in "/+#\0"):
                problems.append(
                    f"the {what} {value!r} of user {person.username!r} is empty or contains '/', '+' or '#', "
                    f"which would change what the policy's %u/%c topics match"
                )
    return problems


def _receive_warnings(rules: Sequence[Rule]) -> list[str]:
    out: list[str] = []
    for rule_no, rule in enumerate(rules, start=1):
        # Mosquitto grants a SUBSCRIBE whose filter the deny does not cover (vehicles/# past a deny of
        # vehicles/secret/#), then delivers by publishClientReceive alone (measured).
        if rule.effect == "deny" and "subscribe" in rule.actions and "receive" not in rule.actions:
            out.append(
                f"rule {rule_no} denies subscribe but not receive: a client allowed a wider filter still "
                f"gets messages on {', '.join(map(repr, rule.topics))}; add 'receive' to stop them"
            )
    if DENY_BY_DEFAULT.publish_client_receive:
        return out
    receivable = {t for r in rules if r.effect == "allow" and "receive" in r.actions for t in r.topics}
    for rule_no, rule in enumerate(rules, start=1):
        if rule.effect != "allow" or "subscribe" not in rule.actions:
            continue
        missing = [t for t in rule.topics if t not in receivable]
        if missing:
            out.append(
                f"rule {rule_no} allows subscribe but not receive on {', '.join(map(repr, missing))}: "
                f"receiving is denied by default, so subscribers get no messages there unless a policy "
                f"allows receive"
            )
    return out
