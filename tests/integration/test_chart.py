"""The Helm chart: lint, strict schema validation offline, and a real install into the test API server."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hack import kubeconform_schemas

from mqtt_operator.api.instance import MqttInstanceSpec
from mqtt_operator.api.kinds import FUNCTION_TRIGGER, KAFKA_CONNECTOR, REPLICATION_TASK
from mqtt_operator.resources import meta
from mqtt_operator.resources.identity import InstanceIdentity
from mqtt_operator.resources.statefulset import statefulset
from mqtt_operator.resources.worker_names import WORKER_COMPONENT
from testenv.kube import ControlPlane
from testenv.paths import monitoring_crds, tool, versions

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mqtt-operator"
CRDS = REPO / "crds"
RELEASE_NAMESPACE = "mqtt-system"
KEEP = "helm.sh/resource-policy"
OUR_KINDS = ("MqttInstance", "AuthUser", "AclPolicy", "KafkaConnector", "ReplicationTask", "FunctionTrigger")
CLUSTER_WIDE = ["--set", "rbac.clusterWide=true"]
MONITORING_API = ["--api-versions", "monitoring.coreos.com/v1"]
MONITORING_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
MONITORING_ON = [
    "--set",
    "monitoring.serviceMonitor.enabled=true",
    "--set",
    "monitoring.podMonitor.enabled=true",
    "--set",
    "monitoring.prometheusRule.enabled=true",
]
ALERTS = CHART / "files" / "alerts.yaml"

Manifest = dict[str, Any]


def helm_environment(home: Path) -> dict[str, str]:
    """Helm's cache, config and data under `home`: the tests never read or touch ~/.config/helm."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("HELM_")}
    for kind in ("CACHE", "CONFIG", "DATA"):
        env[f"HELM_{kind}_HOME"] = str(home / kind.lower())
    return env


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return helm_environment(tmp_path_factory.mktemp("helm-home"))


def run(argv: Sequence[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), env=env, text=True, capture_output=True, timeout=180)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def kube_version() -> str:
    # Helm built from source assumes Kubernetes 1.20 without a cluster, below the chart's kubeVersion.
    return versions()["KUBERNETES_VERSION"]


def template(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(
        [
            tool("helm"),
            "template",
            "mqtt",
            str(CHART),
            "--namespace",
            RELEASE_NAMESPACE,
            "--kube-version",
            kube_version(),
            *args,
        ],
        env,
        check=check,
    )


def parse(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def rendered(env: dict[str, str], *args: str) -> list[Manifest]:
    return parse(template(env, *args).stdout)


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def only(manifests: list[Manifest], kind: str) -> Manifest:
    found = of_kind(manifests, kind)
    assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
    return found[0]


def source_crds() -> dict[str, Manifest]:
    crds = [doc for path in sorted(CRDS.glob("*.yaml")) for doc in parse(path.read_text())]
    assert crds, f"{CRDS} holds no CRD"
    return {crd["metadata"]["name"]: crd for crd in crds}


# --- lint and offline schema validation -------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        [],
        CLUSTER_WIDE,
        ["--set", "watchNamespaces={a,b}"],
        ["--set", "monitoring.grafanaDashboard.enabled=true"],
    ],
    ids=["namespaced", "cluster-wide", "two-namespaces", "grafana-dashboard"],
)
def test_helm_lint_strict_passes(helm_env: dict[str, str], values: list[str]) -> None:
    proc = run(
        [tool("helm"), "lint", "--strict", str(CHART), "--kube-version", kube_version(), *values], helm_env
    )
    assert "0 chart(s) failed" in proc.stdout


@pytest.fixture(scope="module")
def monitoring_crds_installed(crds_installed: ControlPlane) -> ControlPlane:
    """The Prometheus Operator's CRDs (ServiceMonitor, PodMonitor, PrometheusRule) applied and Established,
    so that /openapi/v2 has their schemas; no Prometheus Operator runs."""
    crds = str(monitoring_crds())
    crds_installed.kubectl("apply", "--server-side", "-f", crds)
    crds_installed.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", crds)
    return crds_installed


@pytest.fixture(scope="module")
def kubeconform_schema_dir(
    monitoring_crds_installed: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Strict kubeconform schemas converted from the real API server's /openapi/v2, our kinds and the
    monitoring kinds included."""
    out = tmp_path_factory.mktemp("kubeconform-schemas")
    wanted = {
        kubeconform_schemas.schema_file_name("mqtt-operator.io", "v1alpha1", kind) for kind in OUR_KINDS
    } | {
        kubeconform_schemas.schema_file_name("monitoring.coreos.com", "v1", kind) for kind in MONITORING_KINDS
    }
    deadline = time.monotonic() + 60
    while True:
        # The API server publishes a new CRD's schema a moment after the CRD is Established.
        openapi = json.loads(
            monitoring_crds_installed.kubectl("get", "--raw", "/openapi/v2", timeout=120).stdout
        )
        written = {path.name for path in kubeconform_schemas.write(openapi, out)}
        if wanted <= written or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert wanted <= written, f"our kinds are missing from /openapi/v2: {sorted(wanted - written)}"
    assert "deployment-apps-v1.json" in written
    return out


def kubeconform(schema_dir: Path, manifests: str, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    # Only the local schemas: without `-schema-location default` kubeconform never goes to the network.
    proc = subprocess.run(
        [
            tool("kubeconform"),
            "-strict",
            "-summary",
            "-verbose",
            "-output",
            "json",
            "-schema-location",
            f"{schema_dir}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
            "-",
        ],
        input=manifests,
        env=env,
        text=True,
        capture_output=True,
        timeout=120,
    )
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.parametrize("values", [[], CLUSTER_WIDE], ids=["namespaced", "cluster-wide"])
def test_rendered_chart_passes_kubeconform_strict(
    helm_env: dict[str, str], kubeconform_schema_dir: Path, values: list[str]
) -> None:
    manifests = template(helm_env, *values).stdout
    returncode, report = kubeconform(kubeconform_schema_dir, manifests, helm_env)
    summary = report["summary"]
    # Documents holding only comments (the header of a crds/ file) come back with no kind and no status.
    resources = [r for r in report["resources"] if r["kind"] or r["status"]]
    problems = [r for r in resources if r["status"] != "statusValid"]
    assert returncode == 0 and not problems, json.dumps(problems, indent=2)
    assert summary["valid"] == len(parse(manifests)) > 0
    assert summary["invalid"] == summary["errors"] == summary["skipped"] == 0, summary
    assert {r["kind"] for r in resources} >= {
        "Deployment",
        "ServiceAccount",
        "Service",
        "CustomResourceDefinition",
    }


@pytest.mark.parametrize(
    "values",
    [[], CLUSTER_WIDE, ["--set", "monitoring.podMonitor.brokerExporter.enabled=true"]],
    ids=["namespaced", "cluster-wide", "broker-exporter"],
)
def test_monitoring_objects_pass_kubeconform_strict(
    helm_env: dict[str, str], kubeconform_schema_dir: Path, values: list[str]
) -> None:
    """With the API and the values on, the three objects render and match the Prometheus Operator's CRDs."""
    manifests = template(
        helm_env,
        *MONITORING_API,
        *MONITORING_ON,
        "--set",
        "monitoring.serviceMonitor.interval=30s",
        "--set",
        "monitoring.podMonitor.interval=1m",
        "--set",
        "monitoring.prometheusRule.labels.release=prometheus",
        *values,
    ).stdout
    returncode, report = kubeconform(kubeconform_schema_dir, manifests, helm_env)
    resources = [r for r in report["resources"] if r["kind"] or r["status"]]
    problems = [r for r in resources if r["status"] != "statusValid"]
    assert returncode == 0 and not problems, json.dumps(problems, indent=2)
    assert report["summary"]["skipped"] == 0, report["summary"]
    kinds = [r["kind"] for r in resources]
    assert all(kinds.count(kind) == 1 for kind in MONITORING_KINDS), kinds


DASHBOARD = CHART / "files" / "dashboard.json"
DASHBOARD_ON = ["--set", "monitoring.grafanaDashboard.enabled=true"]


def dashboard_configmaps(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in of_kind(manifests, "ConfigMap") if m["metadata"]["name"].endswith("-dashboard")]


@pytest.mark.parametrize(
    "values",
    [[], ["--set", "monitoring.grafanaDashboard.namespace=monitoring"]],
    ids=["release-namespace", "grafana-namespace"],
)
def test_grafana_dashboard_configmap_passes_kubeconform_strict(
    helm_env: dict[str, str], kubeconform_schema_dir: Path, values: list[str]
) -> None:
    """The value renders one ConfigMap with the sidecar's label and files/dashboard.json as it is; it needs
    no monitoring API (a plain ConfigMap)."""
    args = [
        *DASHBOARD_ON,
        "--set-string",
        "monitoring.grafanaDashboard.labels.team=iot",
        "--set-string",
        "monitoring.grafanaDashboard.annotations.grafana_folder=MQTT",
        *values,
    ]
    manifests = template(helm_env, *args).stdout
    returncode, report = kubeconform(kubeconform_schema_dir, manifests, helm_env)
    resources = [r for r in report["resources"] if r["kind"] or r["status"]]
    problems = [r for r in resources if r["status"] != "statusValid"]
    assert returncode == 0 and not problems, json.dumps(problems, indent=2)
    assert report["summary"]["skipped"] == 0, report["summary"]
    (cm,) = dashboard_configmaps(parse(manifests))
    metadata = cm["metadata"]
    assert metadata["name"] == "mqtt-mqtt-operator-dashboard"
    assert metadata["namespace"] == ("monitoring" if values else RELEASE_NAMESPACE)
    assert metadata["labels"]["grafana_dashboard"] == "1"
    assert metadata["labels"]["team"] == "iot"
    assert metadata["labels"]["app.kubernetes.io/name"] == "mqtt-operator"
    assert metadata["annotations"] == {"grafana_folder": "MQTT"}
    (key,) = cm["data"]
    assert key.endswith(".json")
    assert json.loads(cm["data"][key]) == json.loads(DASHBOARD.read_text())


def test_grafana_dashboard_sidecar_label_is_configurable(helm_env: dict[str, str]) -> None:
    args = ["--set", "monitoring.grafanaDashboard.sidecarLabel=dashboards", "--set-string"]
    (cm,) = dashboard_configmaps(
        rendered(helm_env, *DASHBOARD_ON, *args, "monitoring.grafanaDashboard.sidecarLabelValue=mqtt")
    )
    assert cm["metadata"]["labels"]["dashboards"] == "mqtt"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]


@pytest.mark.parametrize("args", [[], MONITORING_API + MONITORING_ON], ids=["defaults", "monitors-on"])
def test_grafana_dashboard_is_off_by_default(helm_env: dict[str, str], args: list[str]) -> None:
    assert not dashboard_configmaps(rendered(helm_env, *args))


def test_kubeconform_checks_the_monitoring_objects(
    helm_env: dict[str, str], kubeconform_schema_dir: Path
) -> None:
    """A misspelt PodMonitor field must fail: the monitoring schemas are strict too."""
    manifests = template(helm_env, *MONITORING_API, *MONITORING_ON).stdout
    assert "podMetricsEndpoints:" in manifests
    returncode, report = kubeconform(
        kubeconform_schema_dir, manifests.replace("podMetricsEndpoints:", "podMetricEndpoints:"), helm_env
    )
    assert returncode != 0
    assert report["summary"]["invalid"] == 1
    assert any("podMetricEndpoints" in r["msg"] for r in report["resources"])


def test_kubeconform_schemas_are_strict(helm_env: dict[str, str], kubeconform_schema_dir: Path) -> None:
    """A misspelt field must fail, else the passing test above proves nothing."""
    manifests = template(helm_env).stdout.replace("readOnlyRootFilesystem:", "readOnlyRootFilesytem:")
    returncode, report = kubeconform(kubeconform_schema_dir, manifests, helm_env)
    assert returncode != 0
    assert report["summary"]["invalid"] == 1
    assert any("readOnlyRootFilesytem" in r["msg"] for r in report["resources"])


# --- what the templates render -------------------------------------------------------------------------


def test_crds_rendered_are_the_ones_in_crds_dir(helm_env: dict[str, str]) -> None:
    """One source of truth: after rendering, a CRD is its crds/ file plus the chart's labels and keep."""
    sources = source_crds()
    crds = {crd["metadata"]["name"]: crd for crd in of_kind(rendered(helm_env), "CustomResourceDefinition")}
    assert crds.keys() == sources.keys()
    for name, crd in crds.items():
        source_labels = sources[name]["metadata"].get("labels", {})
        metadata = crd["metadata"]
        assert metadata["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        metadata["labels"] = {k: v for k, v in metadata["labels"].items() if k in source_labels}
        assert metadata["annotations"].pop(KEEP) == "keep"
        for key in ("labels", "annotations"):
            if not metadata[key] and key not in sources[name]["metadata"]:
                del metadata[key]
        assert crd == sources[name], f"{name} differs from crds/ after rendering"


def test_crds_enabled_false_renders_no_crd(helm_env: dict[str, str]) -> None:
    manifests = rendered(helm_env, "--set", "crds.enabled=false")
    assert not of_kind(manifests, "CustomResourceDefinition")
    assert of_kind(manifests, "Deployment")


@pytest.mark.parametrize("keep", [True, False])
def test_crds_keep_sets_the_keep_annotation(helm_env: dict[str, str], keep: bool) -> None:
    crds = of_kind(rendered(helm_env, "--set", f"crds.keep={str(keep).lower()}"), "CustomResourceDefinition")
    assert len(crds) == len(source_crds())
    for crd in crds:
        annotations = crd["metadata"].get("annotations") or {}
        assert annotations.get(KEEP) == ("keep" if keep else None)


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("replicaCount=2", "replicaCount"),
        ("crds.enable=false", "enable"),
        ("image.tga=v1", "tga"),
        ("serviceAccount.annotation.a=b", "annotation"),
        ("logLevel=verbose", "logLevel"),
        ("monitoring.serviceMonitor.enable=true", "enable"),
        ("monitoring.podMonitor.interval=30", "interval"),
        ("monitoring.grafanaDashboard.enable=true", "enable"),
        ("objectWorkers=0", "objectWorkers"),
    ],
)
def test_values_schema_rejects_typos(helm_env: dict[str, str], setting: str, named: str) -> None:
    proc = template(helm_env, "--set", setting, check=False)
    assert proc.returncode != 0, f"--set {setting} was accepted"
    assert "schema" in proc.stderr and named in proc.stderr, proc.stderr


# --- monitoring ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [MONITORING_ON, MONITORING_API],
    ids=["values-without-api", "api-without-values"],
)
def test_monitoring_objects_need_the_api_and_the_values(helm_env: dict[str, str], args: list[str]) -> None:
    manifests = rendered(helm_env, *args)
    assert not [m for m in manifests if m["kind"] in MONITORING_KINDS]
    # The metrics Service is always there: it costs nothing and any scraper can use it.
    assert only(manifests, "Service")["metadata"]["name"] == "mqtt-mqtt-operator-metrics"


def test_each_monitoring_object_has_its_own_switch(helm_env: dict[str, str]) -> None:
    for on, kind in zip(MONITORING_ON[1::2], MONITORING_KINDS, strict=True):
        manifests = rendered(helm_env, *MONITORING_API, "--set", on)
        assert [m["kind"] for m in manifests if m["kind"] in MONITORING_KINDS] == [kind]


def matches(selector: Manifest, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions with In) against an object's labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def test_service_monitor_scrapes_the_operators_metrics_port(helm_env: dict[str, str]) -> None:
    manifests = rendered(
        helm_env, *MONITORING_API, *MONITORING_ON, "--set", "monitoring.serviceMonitor.labels.release=kps"
    )
    monitor = only(manifests, "ServiceMonitor")
    service = only(manifests, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    # honorLabels keeps the custom resources' `namespace` on mqtt_operator_objects (files/alerts.yaml).
    # job="mqtt-operator" whatever the release's name: MqttOperatorDown looks for it.
    assert endpoint == {
        "port": "metrics",
        "path": "/metrics",
        "honorLabels": True,
        "relabelings": [{"targetLabel": "job", "replacement": "mqtt-operator"}],
    }
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod = only(manifests, "Deployment")["spec"]["template"]
    assert matches({"matchLabels": service["spec"]["selector"]}, pod["metadata"]["labels"])
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in pod["spec"]["containers"][0][
        "ports"
    ]


@pytest.mark.parametrize(
    ("values", "namespaces"),
    [
        ([], {"matchNames": [RELEASE_NAMESPACE]}),
        (["--set", "watchNamespaces={team-a,team-b}"], {"matchNames": ["team-a", "team-b"]}),
        (CLUSTER_WIDE, {"any": True}),
    ],
    ids=["namespaced", "two-namespaces", "cluster-wide"],
)
def test_pod_monitor_selects_the_workers_where_the_operator_watches(
    helm_env: dict[str, str], values: list[str], namespaces: Manifest
) -> None:
    monitor = only(rendered(helm_env, *MONITORING_API, *MONITORING_ON, *values), "PodMonitor")
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == namespaces
    # The labels the operator's builders put on worker Pods (resources/meta.py), not a copy of them.
    for kind in (KAFKA_CONNECTOR.kind, FUNCTION_TRIGGER.kind, REPLICATION_TASK.kind):
        worker = meta.labels(kind, "vehicles", WORKER_COMPONENT, include_version=False)
        assert matches(spec["selector"], worker), kind
    assert not matches(spec["selector"], meta.labels("MqttInstance", "devices", "broker"))
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    # owner_kind/owner_name name the custom resource in every worker series (files/alerts.yaml).
    assert endpoint["relabelings"] == [
        {"sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"], "targetLabel": "owner_kind"},
        {
            "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
            "targetLabel": "owner_name",
        },
    ]


def test_pod_monitor_broker_exporter_hook(helm_env: dict[str, str]) -> None:
    """With brokerExporter on, the PodMonitor selects the broker Pods the operator builds with
    spec.monitoring.exporter and scrapes their exporter's port by name."""
    identity = InstanceIdentity(name="devices", namespace="iot", uid="u")
    exporter_on = MqttInstanceSpec.model_validate({"monitoring": {"exporter": {"enabled": True}}})
    pod = statefulset(identity, exporter_on, "h")["spec"]["template"]
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    off = only(rendered(helm_env, *MONITORING_API, *MONITORING_ON), "PodMonitor")["spec"]
    assert not matches(off["selector"], pod["metadata"]["labels"])

    spec = only(
        rendered(
            helm_env,
            *MONITORING_API,
            *MONITORING_ON,
            "--set",
            "monitoring.podMonitor.brokerExporter.enabled=true",
        ),
        "PodMonitor",
    )["spec"]
    assert matches(spec["selector"], pod["metadata"]["labels"])
    assert matches(spec["selector"], meta.labels("MqttInstance", "devices", "broker"))
    # The exporter's port is named like the workers' one: one endpoint scrapes both.
    assert [e["port"] for e in spec["podMetricsEndpoints"]] == ["metrics"]
    # The plugin's client events ($SYS/mqtt-operator/client-events, JSON) are no figure: dropped.
    assert spec["podMetricsEndpoints"][0]["metricRelabelings"] == [
        {"sourceLabels": ["__name__"], "regex": "mqtt_operator_client_events", "action": "drop"}
    ]
    assert "metricRelabelings" not in off["podMetricsEndpoints"][0]
    assert "metrics" in ports
    # A different port name (another exporter's) gets an endpoint of its own.
    other = only(
        rendered(
            helm_env,
            *MONITORING_API,
            *MONITORING_ON,
            "--set",
            "monitoring.podMonitor.brokerExporter.enabled=true",
            "--set",
            "monitoring.podMonitor.brokerExporter.port=exporter",
        ),
        "PodMonitor",
    )["spec"]
    assert [e["port"] for e in other["podMetricsEndpoints"]] == ["metrics", "exporter"]
    assert "metricRelabelings" not in other["podMetricsEndpoints"][0]
    assert other["podMetricsEndpoints"][1]["metricRelabelings"][0]["action"] == "drop"


def test_prometheus_rule_is_the_alerts_file(helm_env: dict[str, str]) -> None:
    """One source: the PrometheusRule's spec is files/alerts.yaml as promtool reads it."""
    rule = only(rendered(helm_env, *MONITORING_API, *MONITORING_ON), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())


def operator_args(manifests: list[Manifest]) -> list[str]:
    container = only(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["mqtt-operator"]
    args: list[str] = container["args"]
    return args


def role_namespaces(manifests: list[Manifest], name: str = "mqtt-mqtt-operator") -> list[str]:
    return sorted(
        r["metadata"]["namespace"] for r in of_kind(manifests, "Role") if r["metadata"]["name"] == name
    )


def test_namespaced_by_default(helm_env: dict[str, str]) -> None:
    manifests = rendered(helm_env)
    assert operator_args(manifests) == [
        "run",
        "--namespace",
        RELEASE_NAMESPACE,
        "--log-level",
        "info",
        "--health-port",
        "8080",
        "--drift-period",
        "30",
        "--object-workers",
        "256",
    ]
    assert role_namespaces(manifests) == [RELEASE_NAMESPACE]
    assert [b["metadata"]["namespace"] for b in of_kind(manifests, "RoleBinding")] == [RELEASE_NAMESPACE] * 2
    # Only the small discovery ClusterRole kopf needs in every mode.
    (cluster_role,) = of_kind(manifests, "ClusterRole")
    assert {g for rule in cluster_role["rules"] for g in rule["apiGroups"]} == {"apiextensions.k8s.io", ""}


def test_watch_namespaces_get_a_role_and_a_flag_each(helm_env: dict[str, str]) -> None:
    manifests = rendered(helm_env, "--set", "watchNamespaces={team-a,team-b}", "--set", "logLevel=debug")
    assert operator_args(manifests) == [
        "run",
        "--namespace",
        "team-a",
        "--namespace",
        "team-b",
        "--log-level",
        "debug",
        "--health-port",
        "8080",
        "--drift-period",
        "30",
        "--object-workers",
        "256",
    ]
    assert role_namespaces(manifests) == ["team-a", "team-b"]
    # The leader-election lease stays in the release namespace, which is not watched here.
    assert role_namespaces(manifests, "mqtt-mqtt-operator-leader-election") == [RELEASE_NAMESPACE]


def test_cluster_wide_uses_a_cluster_role(helm_env: dict[str, str]) -> None:
    manifests = rendered(helm_env, *CLUSTER_WIDE, "--set", "watchNamespaces={ignored}")
    assert operator_args(manifests) == [
        "run",
        "--all-namespaces",
        "--log-level",
        "info",
        "--health-port",
        "8080",
        "--drift-period",
        "30",
        "--object-workers",
        "256",
    ]
    assert role_namespaces(manifests) == []
    names = sorted(r["metadata"]["name"] for r in of_kind(manifests, "ClusterRole"))
    assert names == ["mqtt-mqtt-operator", "mqtt-mqtt-operator-discovery"]
    binding = next(b for b in of_kind(manifests, "ClusterRoleBinding") if b["metadata"]["name"] == names[0])
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "mqtt-mqtt-operator", "namespace": RELEASE_NAMESPACE}
    ]


@pytest.mark.parametrize("values", [[], CLUSTER_WIDE], ids=["namespaced", "cluster-wide"])
def test_knative_services_are_only_read(helm_env: dict[str, str], values: list[str]) -> None:
    """A FunctionTrigger's knativeServiceRef: the operator reads the Knative Service's address. The rule
    is checked as rendered: `kubectl auth can-i` cannot name a resource of an API group the test's API
    server does not serve."""
    manifests = rendered(helm_env, *values)
    kind = "ClusterRole" if values else "Role"
    role = next(m for m in of_kind(manifests, kind) if m["metadata"]["name"] == "mqtt-mqtt-operator")
    knative = [rule for rule in role["rules"] if "serving.knative.dev" in rule["apiGroups"]]
    assert knative == [{"apiGroups": ["serving.knative.dev"], "resources": ["services"], "verbs": ["get"]}]


def test_broker_image_drift_period_and_object_workers_reach_the_operator(helm_env: dict[str, str]) -> None:
    manifests = rendered(
        helm_env,
        "--set",
        "brokerImage=mirror.example/mosquitto:2.0.21",
        "--set",
        "exporterImage=mirror.example/mosquitto-exporter:0.8.0",
        "--set",
        "driftPeriodSeconds=5",
        "--set",
        "objectWorkers=64",
    )
    args = operator_args(manifests)
    assert args[args.index("--drift-period") + 1] == "5"
    assert args[args.index("--object-workers") + 1] == "64"
    container = only(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MQTT_OPERATOR_BROKER_IMAGE"] == "mirror.example/mosquitto:2.0.21"
    assert env["MQTT_OPERATOR_EXPORTER_IMAGE"] == "mirror.example/mosquitto-exporter:0.8.0"
    # Unset, the operator keeps its own default: no empty variable overrides it.
    default = only(rendered(helm_env), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "MQTT_OPERATOR_BROKER_IMAGE" not in {e["name"] for e in default["env"]}
    assert "MQTT_OPERATOR_EXPORTER_IMAGE" not in {e["name"] for e in default["env"]}


def test_operator_pod_is_locked_down(helm_env: dict[str, str]) -> None:
    deployment = only(rendered(helm_env), "Deployment")
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert container["image"] == "mqtt-operator:0.1.0"
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "512Mi"},
    }
    assert container["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
    ]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in (
        container["env"]
    )
    # The bridge workers run the same image.
    assert {"name": "MQTT_OPERATOR_WORKER_IMAGE", "value": "mqtt-operator:0.1.0"} in container["env"]


def test_pod_scheduling_values_reach_the_pod(helm_env: dict[str, str]) -> None:
    pod = only(
        rendered(
            helm_env,
            "--set",
            "image.repository=registry.example/mqtt-operator",
            "--set",
            "image.tag=1.2.3",
            "--set",
            "image.pullPolicy=Always",
            "--set",
            "imagePullSecrets[0].name=pull",
            "--set",
            "nodeSelector.disk=ssd",
            "--set",
            "tolerations[0].operator=Exists",
            "--set",
            "priorityClassName=system-cluster-critical",
            "--set",
            "podAnnotations.a=b",
            "--set",
            "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            ".nodeSelectorTerms[0].matchExpressions[0].key=zone",
            "--set",
            "serviceAccount.name=custom",
            "--set",
            "serviceAccount.annotations.x=y",
        ),
        "Deployment",
    )["spec"]["template"]
    spec = pod["spec"]
    assert spec["containers"][0]["image"] == "registry.example/mqtt-operator:1.2.3"
    assert spec["containers"][0]["imagePullPolicy"] == "Always"
    assert spec["imagePullSecrets"] == [{"name": "pull"}]
    assert spec["nodeSelector"] == {"disk": "ssd"}
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert "nodeAffinity" in spec["affinity"]
    assert spec["serviceAccountName"] == "custom"
    assert pod["metadata"]["annotations"] == {"a": "b"}


def test_user_labels_cannot_override_the_standard_labels(helm_env: dict[str, str]) -> None:
    manifests = rendered(
        helm_env,
        "--set",
        "commonLabels.team=mqtt",
        "--set",
        "commonLabels.app\\.kubernetes\\.io/name=evil",
        "--set",
        "podLabels.tier=control",
        "--set",
        "podLabels.app\\.kubernetes\\.io/instance=evil",
    )
    for manifest in manifests:
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "mqtt-operator", manifest["metadata"]["name"]
        assert labels["team"] == "mqtt"
    pod_labels = only(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["app.kubernetes.io/instance"] == "mqtt"
    assert pod_labels["tier"] == "control" and pod_labels["team"] == "mqtt"


def test_names_are_cut_to_63_characters(helm_env: dict[str, str]) -> None:
    release = "r" * 53  # Helm's longest release name
    proc = run(
        [
            tool("helm"),
            "template",
            release,
            str(CHART),
            "--kube-version",
            kube_version(),
            "--set",
            "nameOverride=" + "n" * 40,
        ],
        helm_env,
    )
    for manifest in parse(proc.stdout):
        if manifest["kind"] != "CustomResourceDefinition":
            assert len(manifest["metadata"]["name"]) <= 63, manifest["metadata"]["name"]
        assert all(len(str(value)) <= 63 for value in manifest["metadata"]["labels"].values())
    names = {m["metadata"]["name"] for m in parse(proc.stdout) if m["kind"] == "ClusterRole"}
    assert any(name.endswith("-discovery") for name in names)


# --- a real install ------------------------------------------------------------------------------------


def api_resource(manifest: Manifest) -> str:
    group = manifest["apiVersion"].rpartition("/")[0]
    return f"{manifest['kind'].lower()}.{group}" if group else manifest["kind"].lower()


def get(control_plane: ControlPlane, manifest: Manifest) -> Manifest | None:
    """The live object of a rendered one (every namespaced template names its namespace), or None."""
    namespace = manifest["metadata"].get("namespace")
    scope = ["--namespace", namespace] if namespace else []
    proc = control_plane.kubectl(
        "get",
        api_resource(manifest),
        manifest["metadata"]["name"],
        *scope,
        "--ignore-not-found",
        "-o",
        "json",
    )
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def adopt_existing_crds(control_plane: ControlPlane, release: str, namespace: str) -> None:
    """Let this release take over CRDs that other tests applied from crds/, as docs/helm.md tells users."""
    for name in source_crds():
        if control_plane.kubectl("get", "crd", name, "--ignore-not-found", "-o", "name").stdout.strip():
            control_plane.kubectl(
                "annotate",
                "--overwrite",
                "crd",
                name,
                f"meta.helm.sh/release-name={release}",
                f"meta.helm.sh/release-namespace={namespace}",
            )
            control_plane.kubectl("label", "--overwrite", "crd", name, "app.kubernetes.io/managed-by=Helm")


def can_i(control_plane: ControlPlane, service_account: str, *args: str) -> bool:
    proc = control_plane.kubectl("auth", "can-i", *args, "--as", service_account, check=False)
    assert proc.stdout.strip() in ("yes", "no"), proc.stderr
    return proc.stdout.strip() == "yes"


@pytest.mark.parametrize("cluster_wide", [False, True], ids=["namespaced", "cluster-wide"])
def test_install_creates_every_object_and_uninstall_keeps_the_crds(
    control_plane: ControlPlane, namespace: str, helm_env: dict[str, str], cluster_wide: bool
) -> None:
    release = f"mqtt-{uuid.uuid4().hex[:6]}"
    other = f"{namespace}-b"
    control_plane.kubectl("create", "namespace", other)
    values = CLUSTER_WIDE if cluster_wide else ["--set", f"watchNamespaces={{{namespace},{other}}}"]
    adopt_existing_crds(control_plane, release, namespace)
    helm = [tool("helm"), "--kubeconfig", str(control_plane.kubeconfig), "--namespace", namespace]

    # No controllers run here, so nothing would ever become ready: install without --wait.
    run([*helm, "install", release, str(CHART), *values], helm_env)
    manifests = parse(run([*helm, "get", "manifest", release], helm_env).stdout)
    kinds = sorted(m["kind"] for m in manifests)
    assert kinds.count("CustomResourceDefinition") == len(source_crds())
    assert kinds.count("Role") == (1 if cluster_wide else 3)  # + one per watched namespace
    for manifest in manifests:
        live = get(control_plane, manifest)
        assert live is not None, f"{manifest['kind']} {manifest['metadata']['name']} was not created"
        assert live["metadata"]["annotations"]["meta.helm.sh/release-name"] == release
        assert live["metadata"]["labels"]["app.kubernetes.io/instance"] == release

    # The real API server's RBAC answers what the operator's ServiceAccount may do.
    sa = f"system:serviceaccount:{namespace}:{release}-mqtt-operator"
    assert can_i(
        control_plane, sa, "patch", "mqttinstances.mqtt-operator.io", "--subresource=status", "-n", other
    )
    assert can_i(
        control_plane,
        sa,
        "update",
        "kafkaconnectors.mqtt-operator.io",
        "--subresource=finalizers",
        "-n",
        namespace,
    )
    assert can_i(control_plane, sa, "create", "statefulsets.apps", "-n", other)
    assert can_i(control_plane, sa, "watch", "customresourcedefinitions.apiextensions.k8s.io")
    assert can_i(control_plane, sa, "create", "leases.coordination.k8s.io", "-n", namespace)
    assert not can_i(control_plane, sa, "delete", "mqttinstances.mqtt-operator.io", "-n", namespace)
    assert not can_i(control_plane, sa, "create", "pods", "-n", namespace)
    assert can_i(control_plane, sa, "list", "pods", "-n", namespace)  # worker IPs for their /metrics
    # A KafkaConnector's own AuthUser and AclPolicy.
    assert can_i(control_plane, sa, "create", "authusers.mqtt-operator.io", "-n", other)
    assert can_i(control_plane, sa, "delete", "aclpolicies.mqtt-operator.io", "-n", other)
    assert can_i(control_plane, sa, "create", "secrets", "-n", "unwatched") is cluster_wide

    run([*helm, "uninstall", release], helm_env)
    for manifest in manifests:
        live = get(control_plane, manifest)
        if manifest["kind"] == "CustomResourceDefinition":
            assert live is not None, f"crds.keep is on, yet {manifest['metadata']['name']} was deleted"
        else:
            assert live is None, f"{manifest['kind']} {manifest['metadata']['name']} outlived the uninstall"


def test_operator_pod_is_admitted_under_the_restricted_pod_security_standard(
    control_plane: ControlPlane, namespace: str, helm_env: dict[str, str]
) -> None:
    control_plane.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    template_ = only(rendered(helm_env), "Deployment")["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template_["metadata"], "name": "operator"},
        "spec": template_["spec"],
    }
    proc = control_plane.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "would violate" not in proc.stderr, proc.stderr
