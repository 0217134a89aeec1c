"""AclPolicy rules -> dynamic-security roles and grants: the one place that decides what a rule means.

Pure. The reconcile gives `policy_roles` a policy's rules, its priority and the users it applies
to; it gets back the roles to create and, per user, the role grants to add to that user's client.

Actions (Mosquitto 2.0 ACL types):

- publish   -> ``publishClientSend <topic>``
- receive   -> ``publishClientReceive <topic>``
- subscribe -> ``subscribePattern <filter>`` and ``subscribePattern $share/+/<filter>``: Mosquitto
  checks a shared subscription against its full string, so ``vehicles/#`` alone does not cover
  ``$share/g/vehicles/#`` (measured, FACTS.md). A filter that already is ``$share/<group>/...``
  grants (or denies) exactly that form, and ``#`` needs no second entry (it matches ``$share/...``).
- unsubscribe is never written: the default stays allow (`model.DENY_BY_DEFAULT`), because refusing
  an UNSUBSCRIBE protects nothing and only keeps messages flowing to a client that wants them gone.
  The other three default to deny: a user can do nothing until a policy allows it.

Priority: Mosquitto checks a client's roles in descending role priority and, within a role, ACLs
in descending ACL priority; the first ACL whose topic matches decides. So a policy becomes up to
two kinds of role, one per effect, and its grants carry the priority::

    role priority on the client = 2 * policy.priority + (1 if effect == "deny" else 0)
    ACL priority inside a role  = 0 (all entries of a role share one effect: order cannot matter)

which gives, for overlapping rules: the policy with the higher priority wins, whatever its
effect; at equal priority, deny wins; and within one policy, deny wins over allow. Policy
priorities must lie in [PRIORITY_MIN, PRIORITY_MAX] so the doubled value fits Mosquitto's C int.

Patterns: Mosquitto 2.0.11 does not substitute ``%u``/``%c`` in dynamic-security ACLs (measured,
FACTS.md), so the operator does. Rules whose topic contains ``%u`` or ``%c`` go into a role per
user, ``<prefix><policy>#<effect>@<username>``, with the pattern replaced; the other rules share
``<prefix><policy>#<effect>``. ``%u`` is the username. ``%c`` is known in advance only when the
broker pins the user to one client id (the AuthUser sets a client id, which Mosquitto then
enforces at CONNECT); then ``%c`` is that id. For a user without a pinned id a ``%c`` rule cannot be
enforced and the policy is refused with an `AclPolicyError` saying so, rather than silently
granting too much or too little. A username or client id containing ``/``, ``+`` or ``#`` would
change the shape of the topic when substituted and is refused too.
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

PRIORITY_MIN = -(2**29)
PRIORITY_MAX = 2**29 - 1

SHARE_PREFIX = "$share/"
_PATTERNS = ("%u", "%c")
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
    """What one policy puts on the broker: its roles, and per username the grants of those roles."""

    roles: tuple[DesiredRole, ...]
    grants: Mapping[str, tuple[RoleGrant, ...]]
    warnings: tuple[str, ...] = ()


def role_priority(policy_priority: int, effect: Effect) -> int:
    return 2 * policy_priority + (1 if effect == "deny" else 0)


def policy_role_prefix(policy: str, role_prefix: str) -> str:
    """Every role of `policy` starts with this (for finding them all, e.g. when the policy is deleted)."""
    return f"{role_prefix}{policy}#"


def policy_roles(
    policy: str,
    rules: Sequence[Rule],
    priority: int,
    subjects: Iterable[Subject],
    *,
    role_prefix: str,
    description: str = "",
) -> PolicyRoles:
    """The roles and grants for one policy.

    `policy` names it uniquely and must not contain "#" or "@" (e.g. "namespace/name"). Shared
    roles exist even while no user is named, so naming a user later only adds a grant and never
    changes (and so never disconnects holders of) a role.
    """
    if "#" in policy or "@" in policy or not policy:
        raise ValueError(f"policy key {policy!r} must be non-empty and contain neither '#' nor '@'")
    problems: list[str] = []
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        problems.append(
            f"priority {priority} is out of range: use a value from {PRIORITY_MIN} to {PRIORITY_MAX}"
        )
    people = sorted({s.username: s for s in subjects}.values(), key=lambda s: s.username)
    for rule_no, rule in enumerate(rules, start=1):
        problems.extend(_rule_problems(rule_no, rule))
    if problems:
        raise AclPolicyError("; ".join(problems))

    shared: dict[Effect, set[Acl]] = {effect: set() for effect in ("allow", "deny")}
    personal: dict[tuple[Effect, str], set[Acl]] = defaultdict(set)
    for rule_no, rule in enumerate(rules, start=1):
        for topic in rule.topics:
            if not any(p in topic for p in _PATTERNS):
                shared[rule.effect].update(_acls(rule, topic))
                continue
            for person in people:
                expanded, problem = _substitute(rule_no, topic, person)
                if problem:
                    problems.append(problem)
                else:
                    personal[(rule.effect, person.username)].update(_acls(rule, expanded))
    if problems:
        raise AclPolicyError("; ".join(problems))

    base = policy_role_prefix(policy, role_prefix)
    roles: list[DesiredRole] = []
    grants: dict[str, list[RoleGrant]] = {person.username: [] for person in people}
    for effect, acls in shared.items():
        if acls:
            name = f"{base}{effect}"
            roles.append(DesiredRole(name, tuple(sorted(acls)), description))
            for person in people:
                grants[person.username].append(RoleGrant(name, role_priority(priority, effect)))
    for (effect, username), acls in personal.items():
        name = f"{base}{effect}@{username}"
        roles.append(DesiredRole(name, tuple(sorted(acls)), description))
        grants[username].append(RoleGrant(name, role_priority(priority, effect)))

    return PolicyRoles(
        roles=tuple(sorted(roles, key=lambda r: r.rolename)),
        grants={username: tuple(sorted(g)) for username, g in grants.items()},
        warnings=tuple(_warnings(rules)),
    )


def merge_grants(policies: Iterable[PolicyRoles]) -> dict[str, tuple[RoleGrant, ...]]:
    """All grants per username across policies: what goes into each `DesiredClient.roles`."""
    merged: dict[str, set[RoleGrant]] = defaultdict(set)
    for result in policies:
        for username, grants in result.grants.items():
            merged[username].update(grants)
    return {username: tuple(sorted(grants)) for username, grants in merged.items()}


def _acls(rule: Rule, topic: str) -> list[Acl]:
    allow = rule.effect == "allow"
    out: list[Acl] = []
    for action in dict.fromkeys(rule.actions):
        if action != "subscribe":
            out.append(Acl(_ACL_TYPE[action], topic, 0, allow))
            continue
        out.append(Acl("subscribePattern", topic, 0, allow))
        if topic != "#" and not topic.startswith(SHARE_PREFIX):
            out.append(Acl("subscribePattern", f"{SHARE_PREFIX}+/{topic}", 0, allow))
    return out


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
        elif topic.startswith(SHARE_PREFIX) and set(rule.actions) - {"subscribe"}:
            problems.append(
                f"{where}: topic {topic!r} is a shared subscription, which only 'subscribe' can use"
            )
    return problems


def _topic_problem(topic: str) -> str | None:
    """Why Mosquitto would refuse `topic` as an ACL filter, or None."""
    if not topic:
        return "is empty"
    if "\0" in topic:
        return "contains a NUL character"
    if len(topic.encode()) > 65535:
        return "is longer than MQTT allows (65535 bytes)"
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "uses '#' other than as the whole last level"
        if "+" in level and level != "+":
            return "uses '+' other than as a whole level"
    if topic.startswith(SHARE_PREFIX) and (len(levels) < 3 or not levels[1] or levels[1] in ("+", "#")):
        return "must be $share/<group>/<filter> with a literal group"
    return None


def _substitute(rule_no: int, topic: str, person: Subject) -> tuple[str, str | None]:
    where = f"rule {rule_no}: topic {topic!r}"
    values = {"%u": ("username", person.username)}
    if "%c" in topic:
        if person.clientid is None:
            return topic, (
                f"{where} uses %c, but user {person.username!r} may connect with any client id and "
                f"Mosquitto 2.0 cannot substitute %c itself: set a client id on that user (then %c "
                f"is that id) or use %u"
            )
        values["%c"] = ("client id", person.clientid)
    expanded = topic
    for pattern, (what, value) in values.items():
        if pattern not in topic:
            continue
        if not value or any(ch in value for ch in "/+#\0"):
            return topic, (
                f"{where} uses {pattern}, but the {what} {value!r} of user {person.username!r} is empty or "
                f"contains '/', '+' or '#', which would change what the topic matches"
            )
        expanded = expanded.replace(pattern, value)
    return expanded, None


def _warnings(rules: Sequence[Rule]) -> list[str]:
    if DENY_BY_DEFAULT.publish_client_receive:
        return []
    receivable = {t for r in rules if r.effect == "allow" and "receive" in r.actions for t in r.topics}
    out: list[str] = []
    for rule_no, rule in enumerate(rules, start=1):
        if rule.effect != "allow" or "subscribe" not in rule.actions:
            continue
        missing = [t for t in rule.topics if t not in receivable and not t.startswith(SHARE_PREFIX)]
        if missing:
            out.append(
                f"rule {rule_no} allows subscribe but not receive on {', '.join(map(repr, missing))}: "
                f"receiving is denied by default, so subscribers get no messages there unless a policy "
                f"allows receive"
            )
    return out
