"""What the chart's RBAC lets the operator's ServiceAccount do, answered by the real kube-apiserver.

For each watch mode the chart offers (the release namespace alone, a list of namespaces, every
namespace), the chart's ServiceAccount, Roles, ClusterRoles and bindings from `helm template` are applied,
and the API server is asked as `system:serviceaccount:<release namespace>:<release>-mqtt-operator`:
SelfSubjectRulesReviews list everything it may do in a namespace (less what any ServiceAccount may do),
which must be exactly what the operator needs where it watches and nothing but the cluster-wide discovery
rules elsewhere; `kubectl auth can-i` checks the dangerous verbs one by one.

Cluster-wide, the operator reads and writes Secrets in every namespace: it makes and reads them wherever
an AuthUser or MqttInstance may be. That is the documented trade-off (docs/helm.md, docs/security.md); the
namespaced modes are held to no Secret outside the watched namespaces.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.integration.test_chart import (
    CHART,
    CLUSTER_WIDE,
    can_i,
    helm_environment,
    kube_version,
    parse,
    run,
)

from mqtt_operator.api.kinds import ALL_KINDS, GROUP
from testenv.kube import ControlPlane
from testenv.paths import tool

pytestmark = pytest.mark.integration

RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
Rule = tuple[str, str, str]  # (API group, resource, verb)
ALL = ("get", "list", "watch", "create", "patch", "update", "delete")
READ = ("get", "list", "watch")
KINDS = tuple(kind.plural for kind in ALL_KINDS)


def rules(group: str, resources: tuple[str, ...], verbs: tuple[str, ...]) -> set[Rule]:
    return {(group, resource, verb) for resource in resources for verb in verbs}


# What the operator needs where it watches, written out here on purpose: a grant added to the chart
# fails this test until it is added here too, and reviewed.
WATCHED = (
    rules(GROUP, KINDS, ("get", "list", "watch", "patch", "update"))
    | rules(GROUP, ("authusers", "aclpolicies"), ("create", "delete"))
    | rules(GROUP, tuple(f"{kind}/status" for kind in KINDS), ("get", "patch", "update"))
    | rules(GROUP, tuple(f"{kind}/finalizers" for kind in KINDS), ("update",))
    | rules("", ("events",), ("create", "patch"))
    | rules("events.k8s.io", ("events",), ("create", "patch"))
    | rules("", ("secrets", "configmaps", "services", "persistentvolumeclaims"), ALL)
    | rules("apps", ("statefulsets", "deployments"), ALL)
    | rules("", ("pods",), READ)
    | rules("networking.k8s.io", ("networkpolicies",), ALL)
    | rules("serving.knative.dev", ("services",), ("get",))
)
# Everywhere: kopf reads the CRDs and lists namespaces.
DISCOVERY = rules("apiextensions.k8s.io", ("customresourcedefinitions",), READ) | rules(
    "", ("namespaces",), ("list", "watch")
)
# In the release namespace only: the leader-election lease.
LEASES = rules("coordination.k8s.io", ("leases",), ("get", "list", "watch", "create", "patch", "update"))

# Never, in any mode: each (verb, resource, namespaced) as `kubectl auth can-i` takes them.
FORBIDDEN = [
    ("create", "pods", True),
    ("create", "pods/exec", True),
    ("create", "pods/attach", True),
    ("create", "pods/portforward", True),
    ("create", "serviceaccounts/token", True),
    ("create", "serviceaccounts", True),
    ("create", "roles.rbac.authorization.k8s.io", True),
    ("create", "rolebindings.rbac.authorization.k8s.io", True),
    ("escalate", "roles.rbac.authorization.k8s.io", True),
    ("bind", "roles.rbac.authorization.k8s.io", True),
    ("delete", "mqttinstances.mqtt-operator.io", True),
    ("create", "mqttinstances.mqtt-operator.io", True),
    ("create", "namespaces", False),
    ("delete", "namespaces", False),
    ("get", "nodes", False),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", False),
    ("update", "customresourcedefinitions.apiextensions.k8s.io", False),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", False),
    ("create", "clusterroles.rbac.authorization.k8s.io", False),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", False),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", False),
    ("bind", "clusterroles.rbac.authorization.k8s.io", False),
    ("impersonate", "users", False),
    ("impersonate", "groups", False),
    ("impersonate", "serviceaccounts", False),
    ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io", False),
    ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io", False),
    ("create", "persistentvolumes", False),
    ("update", "certificatesigningrequests/approval.certificates.k8s.io", False),
    ("*", "*", False),
    ("*", "*", True),
]


@dataclass
class Install:
    """The chart's RBAC applied for one release; `watched` are the namespaces the operator watches."""

    control_plane: ControlPlane
    mode: str
    release_namespace: str
    service_account: str
    watched: list[str]
    unwatched: str
    manifests: list[dict[str, Any]]

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.release_namespace}:{self.service_account}"

    def can(self, verb: str, resource: str, namespace: str | None) -> bool:
        where = ["-n", namespace] if namespace else ["--all-namespaces"]
        return can_i(self.control_plane, self.user, verb, resource, *where)

    def allowed(self, namespace: str, user: str | None = None) -> set[Rule]:
        """Every (group, resource, verb) a SelfSubjectRulesReview grants `user` (the operator) there."""
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectRulesReview",
            "spec": {"namespace": namespace},
        }
        proc = self.control_plane.kubectl(
            # kubectl's own validation would list CRDs as that user: the API server validates anyway.
            "create",
            "--validate=false",
            "-f",
            "-",
            "-o",
            "json",
            "--as",
            user or self.user,
            input=json.dumps(review),
        )
        status = json.loads(proc.stdout)["status"]
        assert not status.get("incomplete"), status.get("evaluationError")
        return {
            (group, resource, verb)
            for rule in status["resourceRules"]
            for group in rule.get("apiGroups", [""])
            for resource in rule.get("resources", [])
            for verb in rule["verbs"]
        }

    def granted(self, namespace: str) -> set[Rule]:
        """What the chart grants there: the operator's rules less those of an unbound ServiceAccount."""
        nobody = f"system:serviceaccount:{self.release_namespace}:nobody-{uuid.uuid4().hex[:6]}"
        return self.allowed(namespace) - self.allowed(namespace, nobody)


def install(control_plane: ControlPlane, helm_home: Path, mode: str) -> Install:
    suffix = uuid.uuid4().hex[:6]
    release, release_ns, unwatched = f"rbac-{suffix}", f"rbac-{suffix}-system", f"rbac-{suffix}-other"
    watched = {
        "release-namespace": [release_ns],
        "watch-namespaces": [f"rbac-{suffix}-a", f"rbac-{suffix}-b"],
        "cluster-wide": [f"rbac-{suffix}-a"],  # any namespace: this one stands for them
    }[mode]
    values = {
        "release-namespace": [],
        "watch-namespaces": ["--set", f"watchNamespaces={{{','.join(watched)}}}"],
        "cluster-wide": CLUSTER_WIDE,
    }[mode]
    for namespace in sorted({release_ns, unwatched, *watched}):
        control_plane.kubectl("create", "namespace", namespace)
    argv = [tool("helm"), "template", release, str(CHART), "--namespace", release_ns]
    rendered = parse(
        run([*argv, "--kube-version", kube_version(), *values], helm_environment(helm_home)).stdout
    )
    manifests = [m for m in rendered if m["kind"] in RBAC_KINDS]
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))
    (account,) = [m for m in manifests if m["kind"] == "ServiceAccount"]
    return Install(
        control_plane, mode, release_ns, account["metadata"]["name"], watched, unwatched, manifests
    )


MODES = ["release-namespace", "watch-namespaces", "cluster-wide"]


@pytest.fixture(params=MODES)
def rbac(request: pytest.FixtureRequest, crds_installed: ControlPlane, tmp_path: Path) -> Install:
    # With the CRDs served: `kubectl auth can-i` resolves a resource through discovery, and would answer
    # "no" for any resource of a group the API server does not serve.
    return install(crds_installed, tmp_path, request.param)


def test_no_wildcard_and_nothing_cluster_wide_but_discovery_in_namespaced_modes(rbac: Install) -> None:
    for manifest in rbac.manifests:
        for rule in manifest.get("rules", []):
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), (
                    f"{manifest['kind']} {manifest['metadata']['name']}: {rule}"
                )
    cluster_roles = [m for m in rbac.manifests if m["kind"] == "ClusterRole"]
    if rbac.mode != "cluster-wide":
        assert [m["metadata"]["name"] for m in cluster_roles] == [f"{rbac.service_account}-discovery"]


def test_where_it_watches_it_may_do_exactly_what_it_needs(rbac: Install) -> None:
    for namespace in rbac.watched:
        leases = LEASES if namespace == rbac.release_namespace else set()
        assert rbac.granted(namespace) == WATCHED | DISCOVERY | leases, namespace
    # The headline grants, as `kubectl auth can-i` answers them.
    watched = rbac.watched[-1]
    for verb in ("get", "list", "watch", "create", "delete"):
        assert rbac.can(verb, "secrets", watched)
    assert rbac.can("watch", f"kafkaconnectors.{GROUP}", watched)
    assert rbac.can("patch", f"mqttinstances.{GROUP}/status", watched)
    assert rbac.can("create", "statefulsets.apps", watched)
    assert rbac.can("list", "pods", watched)
    assert rbac.can("create", "leases.coordination.k8s.io", rbac.release_namespace)


def test_no_secret_outside_the_watched_namespaces(rbac: Install) -> None:
    if rbac.mode == "cluster-wide":
        # Cluster-wide: every namespace is watched, Secrets included (the documented trade-off).
        assert rbac.granted(rbac.unwatched) == WATCHED | DISCOVERY
        assert rbac.can("list", "secrets", None)
        assert rbac.can("get", "secrets", rbac.unwatched)
        assert rbac.can("get", "secrets", "kube-system")
        return
    for namespace in (rbac.unwatched, "kube-system", "default"):
        assert rbac.granted(namespace) == DISCOVERY, namespace
        for verb in ("get", "list", "watch", "create", "update", "delete"):
            assert not rbac.can(verb, "secrets", namespace), f"{verb} secrets in {namespace}"
    assert not rbac.can("list", "secrets", None)  # across all namespaces at once
    assert not rbac.can("watch", "secrets", None)
    if rbac.release_namespace not in rbac.watched:
        # Its own namespace, unwatched: the lease and nothing more.
        assert rbac.granted(rbac.release_namespace) == DISCOVERY | LEASES
        assert not rbac.can("get", "secrets", rbac.release_namespace)


def test_never_what_could_take_over_the_cluster(rbac: Install) -> None:
    allowed = [
        f"{verb} {resource} in {rbac.watched[0] if namespaced else 'the cluster'}"
        for verb, resource, namespaced in FORBIDDEN
        if rbac.can(verb, resource, rbac.watched[0] if namespaced else None)
    ]
    assert allowed == []
