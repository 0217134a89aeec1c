"""The Grafana dashboard (charts/mqtt-operator/files/dashboard.json) checked by a dashboard linter
(hack/testenv/dashboard-lint), and its queries and the alerts (files/alerts.yaml) asked of a real
Prometheus holding real data: it scrapes a real operator (its API server, a broker
`devices` it reconciled, a FunctionTrigger that works and one that cannot) and the real worker of that
trigger moving messages to a real HTTP function, with the labels the chart's ServiceMonitor and PodMonitor
give them. Every panel query, with its template variables set to this run's values, and every alert
expression must return at least one series, except those listed below with the reason."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.integration.operator_stack import ADMIN, Stack, operator_stack
from tests.integration.test_alerts import Prometheus
from tests.integration.test_bridge_helpers import paho_publish, wait_for
from tests.integration.test_trigger import MQFT, NAME, WORKLOAD, Function, car_account, trigger

from testenv.kube import ControlPlane
from testenv.paths import run_dir, tool, versions
from testenv.process import Server, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "charts" / "mqtt-operator" / "files" / "dashboard.json"
RULES = REPO / "charts" / "mqtt-operator" / "files" / "alerts.yaml"
LOST = "lost-trigger"  # a FunctionTrigger bound to no instance: not Ready, so "not Ready" queries see it

KUBE_STATE_METRICS = "reads kube-state-metrics (kube_statefulset_*), which this test does not run"
# Queries that cannot return a series here, by panel title or alert name, and why. The test checks this
# list is exactly the queries that read those sources, and that each still evaluates without an error.
EXEMPT_PANELS = {
    "Workers ready (kube-state-metrics)": KUBE_STATE_METRICS,
    "Broker Pods ready (kube-state-metrics)": KUBE_STATE_METRICS,
}
EXEMPT_ALERTS = {"MqttWorkersNotReady": KUBE_STATE_METRICS, "MqttBrokerDown": KUBE_STATE_METRICS}
# A healthy run makes no reconcile error and no failed broker command, so these series do not exist:
# the query is evaluated as written (it must not fail) and with `result="error"` widened to any result,
# which must return series.
ERROR_FILTER_WIDENED = {
    "Reconcile errors",
    "Broker command failures",
    "MqttOperatorReconcileErrors",
    "MqttOperatorBrokerCommandsFailing",
}
# Alerts whose threshold this run does not cross (nothing dropped, latency low, everything connected,
# the broker and the operator up): evaluated without their comparison. The others (MqttIntegrationNotReady
# on the lost trigger, MqttMessagesDeadLettered on the refused messages) return series as written.
COMPARISON_DROPPED = {
    "MqttMessagesDropped",
    "MqttDeliveryLatencyHigh",
    "MqttWorkerDisconnected",
    "MqttInstanceNotReady",
    "MqttBrokerDroppingMessages",
    "MqttOperatorDown",
    "MqttOperatorReconcileErrors",
    "MqttOperatorBrokerCommandsFailing",
    "MqttOperatorWorkerScrapeFailing",
}
COMPARISON = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*[0-9.]+(?![\w.])")
OUTSIDE_SOURCES = re.compile(r"\bkube_")


def panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [p for p in dashboard["panels"] if p["type"] != "row"]
    found += [p for row in dashboard["panels"] if row["type"] == "row" for p in row.get("panels", [])]
    return found


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}


def alerts() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r["expr"] for group in groups for r in group["rules"] if "alert" in r}


def keda_example() -> dict[str, Any]:
    """The ScaledObject docs/observability.md shows."""
    text = (REPO / "docs" / "observability.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    (found,) = [b for b in blocks if "kind: ScaledObject" in b]
    obj: dict[str, Any] = yaml.safe_load(found)
    return obj


def substitute(expr: str, values: dict[str, str]) -> str:
    """What Grafana sends: `$var` and `${var}` replaced (a single value is its own regex)."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)


def dashboard_lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("dashboard-lint"), str(path)], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_dashboard_passes_the_linter() -> None:
    """hack/testenv/dashboard-lint: Grafana's dashboard schema, strictly, and dashboard-linter's rules;
    every finding fails."""
    proc = dashboard_lint(DASHBOARD)
    assert proc.returncode == 0 and not proc.stdout.strip(), f"dashboard-lint:\n{proc.stdout}{proc.stderr}"


def test_the_linter_is_built_on_the_pinned_schema() -> None:
    """versions.env is the one place the dashboard schema's version is bumped; the build script checks
    the linter's go.mod agrees, and so does this."""
    go_mod = (REPO / "hack" / "testenv" / "dashboard-lint" / "go.mod").read_text()
    pinned = versions()["GRAFANA_FOUNDATION_SDK_VERSION"]
    assert f"github.com/grafana/grafana-foundation-sdk/go {pinned}\n" in go_mod


def test_the_linter_finds_what_it_checks(tmp_path: Path) -> None:
    """The pass above proves something only if the linter speaks up: a misspelt field, a fixed datasource,
    a fixed rate range, an unknown unit, a counter read raw, overlapping panels."""
    dashboard = json.loads(DASHBOARD.read_text())
    panel = next(p for p in panels() if p["title"] == "Messages received")
    panel = next(p for p in dashboard["panels"] if p.get("id") == panel["id"])
    panel["descripton"] = panel.pop("description")
    panel["datasource"] = {"type": "prometheus", "uid": "prometheus-1"}
    panel["fieldConfig"]["defaults"]["unit"] = "msgs"
    panel["targets"][0]["expr"] = "sum(rate(bridge_received_total[5m])) + sum(bridge_delivered_total)"
    delivered = next(p for p in dashboard["panels"] if p.get("title") == "Messages delivered")
    delivered["gridPos"]["x"] -= 6
    broken = tmp_path / "dashboard.json"
    broken.write_text(json.dumps(dashboard))
    proc = dashboard_lint(broken)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for finding in (
        "unexpected field 'descripton'",
        "panel-title-description-rule",
        "panel-datasource-rule",
        "panel-units-rule",
        "target-rate-interval-rule",
        'panel-grid-rule: panel "Messages delivered": overlaps panel "Messages received"',
        'target-counter-agg-rule: panel "Messages received" target A: counter bridge_delivered_total',
    ):
        assert finding in proc.stdout, (finding, proc.stdout)


def test_exemptions_are_exactly_the_queries_on_outside_sources() -> None:
    """No silent skipping: the exempt lists name every query on kube-state-metrics or the broker
    exporter, and nothing else."""
    by_panel = {p["title"]: [t["expr"] for t in p["targets"]] for p in panels()}
    assert len(by_panel) == len(panels()), "panel titles must be unique"
    outside = {title for title, exprs in by_panel.items() if any(OUTSIDE_SOURCES.search(e) for e in exprs)}
    assert outside == EXEMPT_PANELS.keys()
    assert {name for name, expr in alerts().items() if OUTSIDE_SOURCES.search(expr)} == EXEMPT_ALERTS.keys()
    assert by_panel.keys() | alerts().keys() >= ERROR_FILTER_WIDENED
    assert alerts().keys() >= COMPARISON_DROPPED


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def stack(crds_installed: ControlPlane, namespace: str, metrics_port: int) -> Iterator[Stack]:
    with operator_stack(crds_installed, namespace, {NAME: f"127.0.0.1:{metrics_port}"}) as s:
        yield s


@pytest.fixture
def function() -> Iterator[Function]:
    f = Function()
    yield f
    f.stop()


def test_every_panel_and_alert_query_returns_series_from_a_real_prometheus(
    stack: Stack, function: Function, metrics_port: int
) -> None:
    ns = stack.namespace
    assert stack.operator is not None
    operator = stack.operator
    stack.apply(
        trigger(
            {"url": function.url},
            deadLetter={"mqttTopic": "functions/battery-alerts/dead-letter"},
            retry={"attempts": 1, "initialDelay": "100ms"},
        )
    )
    lost = trigger({"url": function.url}, name=LOST)
    lost["spec"]["instanceRef"]["name"] = "nowhere"
    stack.apply(lost)
    stack.wait_condition(MQFT, LOST, "False")
    # The operator reads the worker's counters every 15 s; before the worker runs, that read fails.
    wait_for(
        "a failed read of the worker's /metrics",
        lambda: "mqtt_operator_worker_scrape_failures_total{" in operator.metrics_text(),
        45,
        interval=1,
    )
    stack.start_worker(WORKLOAD, metrics_port)
    # The broker's exporter, as the MqttInstance's sidecar runs it (spec.monitoring.exporter), on the
    # stack's broker with the admin account.
    exporter_port = free_port()
    exporter = Server(
        "broker-exporter",
        [sys.executable, "-m", "mqtt_operator", "broker-exporter", "--log-format", "text"],
        run_dir() / f"exporter-{exporter_port}.log",
        env={
            "BROKER_ENDPOINT": f"tcp://127.0.0.1:{stack.port}",
            "BIND_ADDRESS": f"127.0.0.1:{exporter_port}",
            "MQTT_USER": ADMIN,
            "MQTT_PASS": stack.secret("devices-admin"),
            "MQTT_CLIENT_ID": "devices-exporter",
        },
    )
    exporter.start()
    prometheus = Prometheus(
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    # As the chart's ServiceMonitor: job mqtt-operator, the objects' namespace kept.
                    "job_name": "mqtt-operator",
                    "honor_labels": True,
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{operator.metrics_port}"],
                            "labels": {"pod": "mqtt-operator-0"},
                        }
                    ],
                },
                {
                    # As the chart's PodMonitor: the Pod's namespace and name, owner_kind and owner_name.
                    "job_name": "workers",
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{metrics_port}"],
                            "labels": {
                                "namespace": ns,
                                "pod": f"{WORKLOAD}-0",
                                "owner_kind": "functiontrigger",
                                "owner_name": NAME,
                            },
                        }
                    ],
                },
                {
                    # As the chart's PodMonitor for the brokers' exporter sidecars.
                    "job_name": "broker-exporter",
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{exporter_port}"],
                            "labels": {
                                "namespace": ns,
                                "pod": "devices-0",
                                "owner_kind": "mqttinstance",
                                "owner_name": "devices",
                            },
                        }
                    ],
                },
            ],
        }
    )
    try:
        prometheus.start()

        def query(expr: str) -> list[dict[str, Any]]:
            answer = prometheus.get("/api/v1/query", query=expr)
            assert answer["status"] == "success", (expr, answer)
            result: list[dict[str, Any]] = answer["data"]["result"]
            return result

        # Counters first seen at 0, then traffic: 5 messages, the function refuses the first 2 (dead letters).
        wait_for("the three targets scraped", lambda: len(query("up == 1")) == 3, 60)
        wait_for("the worker's counters in Prometheus", lambda: query("bridge_received_total"), 30)
        function.statuses = [400, 400]
        auth = car_account(stack)
        paho_publish(stack.port, [(f"vehicles/car-{i}/battery", b"{}", {}) for i in range(5)], auth=auth)
        wait_for("3 calls delivered", lambda: query("sum(bridge_delivered_total) == 3"), 30)
        wait_for("2 dead-lettered", lambda: query("sum(bridge_dead_lettered_total) == 2"), 30)

        run_values = {"namespace": ns, "kind": "functiontrigger", "name": NAME, "broker": "devices"}
        values = {**run_values, "__rate_interval": "1m"}

        # The template variables' own queries offer this run's values.
        for name, value in run_values.items():
            definition = variables()[name]["query"]["query"]
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", substitute(definition, values))
            assert match, definition
            answer = prometheus.get(f"/api/v1/label/{match.group(2)}/values", **{"match[]": match.group(1)})
            assert value in answer["data"], (name, definition, answer)

        checks: dict[str, str] = {}  # what -> the query that must return a series
        for panel in panels():
            for target in panel["targets"]:
                what = f"panel {panel['title']!r} {target['refId']}"
                expr = substitute(target["expr"], values)
                if panel["title"] in EXEMPT_PANELS:
                    query(expr)  # must still evaluate
                    continue
                if panel["title"] in ERROR_FILTER_WIDENED:
                    query(expr)
                    expr = expr.replace('result="error"', 'result=~".+"')
                checks[what] = expr
        for name, expr in alerts().items():
            what = f"alert {name}"
            query(expr)
            if name in EXEMPT_ALERTS:
                continue
            if name in ERROR_FILTER_WIDENED:
                expr = expr.replace('result="error"', 'result=~".+"')
            if name in COMPARISON_DROPPED:
                expr = COMPARISON.sub("", expr)
            checks[what] = expr

        # The KEDA ScaledObject of docs/observability.md, pointed at this run's trigger.
        keda = keda_example()["spec"]["triggers"][0]["metadata"]["query"]
        for a, b in (
            ('namespace="iot"', f'namespace="{ns}"'),
            ('"kafkaconnector"', '"functiontrigger"'),
            ('"vehicle-state-to-kafka"', f'"{NAME}"'),
        ):
            assert a in keda, (a, keda)
            keda = keda.replace(a, b)
        checks["the KEDA example's query"] = keda

        def empty() -> dict[str, str]:
            return {what: expr for what, expr in checks.items() if not query(expr)}

        # Rates need two samples of the traffic in their window: give the scrapes a few seconds.
        try:
            wait_for("every query to return a series", lambda: not empty(), 20, interval=1)
        except AssertionError:
            raise AssertionError(
                "queries without a series:\n" + "\n".join(f"{w}: {e}" for w, e in empty().items())
            ) from None
        assert len(checks) >= 30, checks
        # The two alerts checked as written really fire on this run's data, with its labels.
        (not_ready,) = query(alerts()["MqttIntegrationNotReady"])
        assert not_ready["metric"]["name"] == LOST and not_ready["metric"]["namespace"] == ns
        (dead,) = query(alerts()["MqttMessagesDeadLettered"])
        assert dead["metric"]["owner_name"] == NAME and dead["metric"]["owner_kind"] == "functiontrigger"
    finally:
        prometheus.stop()
        exporter.stop()
