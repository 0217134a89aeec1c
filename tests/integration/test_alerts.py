"""The alerting rules (charts/mqtt-operator/files/alerts.yaml) checked and unit-tested by the real promtool
(tests/promtool/), and a real worker's /metrics checked by promtool's linter."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_bridge_function import Answer, Call, Function, trigger_config
from test_bridge_helpers import WorkerProcess, no_drop_broker, paho_publish, wait_for

from testenv.mosquitto import Mosquitto
from testenv.paths import run_dir, tool
from testenv.process import Server, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "charts" / "mqtt-operator" / "files" / "alerts.yaml"
UNIT_TESTS = REPO / "tests" / "promtool"
RUNBOOK = REPO / "docs" / "observability.md"
SEVERITIES = {"critical", "warning", "info"}


def promtool(*args: str, stdin: str | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], input=stdin, cwd=cwd, text=True, capture_output=True, timeout=120
    )


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"promtool exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def unit_test_files() -> list[Path]:
    files = sorted(UNIT_TESTS.glob("*.yaml"))
    assert files, f"no promtool unit tests in {UNIT_TESTS}"
    return files


def test_rules_pass_promtool_check() -> None:
    proc = promtool("check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert proc.returncode == 0, output(proc)
    assert f"SUCCESS: {len(alerts())} rules found" in proc.stdout, output(proc)


def test_promtool_unit_tests_pass() -> None:
    proc = promtool("test", "rules", *(str(path) for path in unit_test_files()))
    assert proc.returncode == 0, output(proc)


def test_promtool_unit_tests_fail_on_a_wrong_expectation(tmp_path: Path) -> None:
    """The test above proves something only if a wrong expected alert makes promtool fail."""
    source = UNIT_TESTS / "brokers.yaml"
    text = source.read_text().replace(f"../../{RULES.relative_to(REPO)}", str(RULES))
    assert "severity: critical" in text
    broken = tmp_path / source.name
    broken.write_text(text.replace("severity: critical", "severity: warning", 1))
    proc = promtool("test", "rules", str(broken))
    assert proc.returncode != 0, output(proc)
    assert "MqttBrokerDown" in proc.stdout + proc.stderr, output(proc)


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    fired: set[str] = set()
    for path in unit_test_files():
        for case in yaml.safe_load(path.read_text())["tests"]:
            fired |= {t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert {rule["alert"] for rule in alerts()} <= fired


def test_every_alert_says_how_bad_it_is_and_what_to_check() -> None:
    headings = {line[4:].strip() for line in RUNBOOK.read_text().splitlines() if line.startswith("### ")}
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"] and "kubectl" in annotations["description"], name
        assert annotations["runbook"] == f"docs/observability.md#{name.lower()}", name
        assert name in headings, f"{name} has no runbook section (### {name}) in {RUNBOOK.name}"


# --- the workers' metrics ------------------------------------------------------------------------------


def test_promtool_check_metrics_reports_a_bad_name() -> None:
    """The worker's check below proves something only if promtool's linter speaks up."""
    proc = promtool(
        "check", "metrics", stdin="# HELP sent_bytes Sent.\n# TYPE sent_bytes counter\nsent_bytes 1\n"
    )
    assert proc.returncode != 0, output(proc)
    assert '"_total" suffix' in proc.stdout + proc.stderr, output(proc)


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    b = no_drop_broker()
    yield b
    b.stop()


@pytest.fixture
def flaky_function() -> Iterator[Function]:
    """Answers 503 to its first call (a transient failure, retried) and 200 after."""
    calls = 0

    def answer(_: Call) -> Answer:
        nonlocal calls
        calls += 1
        return Answer(status=503 if calls == 1 else 200)

    fn = Function(answer).start()
    yield fn
    fn.close()


def metric_names(exposition: str) -> set[str]:
    return {line.split("{", 1)[0].split(" ", 1)[0] for line in exposition.splitlines() if line[:1] not in "#"}


def test_worker_metrics_pass_promtool_check_metrics(broker: Mosquitto, flaky_function: Function) -> None:
    """A real FunctionTrigger worker after real traffic (a retry included): promtool's linter finds
    nothing in its /metrics, and every bridge_* series the alerts use is there."""
    worker = WorkerProcess(trigger_config(broker, flaky_function)).start()
    try:
        paho_publish(broker.port, [(f"vehicles/car-{i}/state", b'{"ok": true}', {}) for i in range(5)])
        wait_for(
            "5 delivered", lambda: worker.metric("bridge_delivered_total", direction="mqtt_to_function") == 5
        )
        assert worker.metric("bridge_function_retries_total") >= 1
        exposition = worker.scrape()
    finally:
        worker.stop()
    proc = promtool("check", "metrics", stdin=exposition)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), output(proc)
    used = set(re.findall(r"\bbridge_[a-z_]+", RULES.read_text()))
    assert used, "the alerts use no worker metric"
    assert used <= metric_names(exposition), (
        f"not exported by the worker: {sorted(used - metric_names(exposition))}"
    )


# --- a real Prometheus ---------------------------------------------------------------------------------


class Prometheus:
    """The test environment's prometheus server on a loopback port, with `config` and its own TSDB."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="prometheus-", dir=run_dir()))
        self.port = free_port()
        (self.root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.server = Server(
            "prometheus",
            [
                tool("prometheus"),
                f"--config.file={self.root / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            self.root / "prometheus.log",
        )

    def start(self) -> Prometheus:
        self.server.start()
        self.server.wait_until(lambda: self.get("/-/ready") is not None, 60, "ready (/-/ready)")
        return self

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}{query}", timeout=5) as resp:
            body = resp.read().decode()
        return json.loads(body) if path.startswith("/api/") else body

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def rejecting_function() -> Iterator[Function]:
    """Answers 400 to every call: each message fails for good at once."""
    fn = Function(lambda _call: Answer(status=400)).start()
    yield fn
    fn.close()


def test_prometheus_scrapes_a_worker_and_fires_an_alert(
    broker: Mosquitto, rejecting_function: Function
) -> None:
    """The built prometheus server loads files/alerts.yaml, scrapes a real FunctionTrigger worker that
    drops what its function refuses (no dead-letter topic), and MqttMessagesDropped fires with the labels
    the PodMonitor would add; every rule evaluates without error against real series."""
    worker = WorkerProcess(trigger_config(broker, rejecting_function)).start()
    target = {
        "namespace": "iot",
        "pod": "calls-trigger-0",
        "owner_kind": "functiontrigger",
        "owner_name": "calls",
    }
    prometheus = Prometheus(
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": "workers",
                    "static_configs": [{"targets": [f"127.0.0.1:{worker.port}"], "labels": target}],
                }
            ],
        }
    )
    try:
        prometheus.start()
        # A counter Prometheus first sees at 3 has no increase: let it see the 0 first.
        wait_for(
            "the worker scraped",
            lambda: prometheus.get("/api/v1/query", query='bridge_dropped_total{owner_name="calls"} == 0')[
                "data"
            ]["result"],
            30,
        )
        paho_publish(broker.port, [(f"vehicles/car-{i}/state", b"{}", {}) for i in range(3)])
        wait_for(
            "3 dropped", lambda: worker.metric("bridge_dropped_total", direction="mqtt_to_function") == 3
        )

        def firing() -> list[dict[str, Any]]:
            alerts = prometheus.get("/api/v1/alerts")["data"]["alerts"]
            return [
                a
                for a in alerts
                if a["state"] == "firing" and a["labels"]["alertname"] == "MqttMessagesDropped"
            ]

        (alert,) = wait_for("MqttMessagesDropped firing", firing, 60, interval=0.5)
        assert alert["labels"] == {
            "alertname": "MqttMessagesDropped",
            "severity": "critical",
            "namespace": "iot",
            "owner_kind": "functiontrigger",
            "owner_name": "calls",
            "direction": "mqtt_to_function",
        }
        assert (
            alert["annotations"]["summary"]
            == "functiontrigger iot/calls is losing messages (mqtt_to_function)"
        )

        def rules() -> list[dict[str, Any]]:
            groups = prometheus.get("/api/v1/rules")["data"]["groups"]
            return [rule for group in groups for rule in group["rules"]]

        wait_for("every rule evaluated", lambda: all(r["health"] != "unknown" for r in rules()), 30)
        assert len(rules()) == len(alerts())
        broken = {r["name"]: r.get("lastError") for r in rules() if r["health"] != "ok"}
        assert not broken, broken
    finally:
        prometheus.stop()
        worker.stop()
