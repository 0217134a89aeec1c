"""The alerting rules (charts/mqtt-operator/files/alerts.yaml) checked and unit-tested by the real promtool
(tests/promtool/), and a real worker's /metrics checked by promtool's linter."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_bridge_function import Answer, Call, Function, trigger_config
from test_bridge_helpers import WorkerProcess, no_drop_broker, paho_publish, wait_for

from testenv.mosquitto import Mosquitto
from testenv.paths import tool

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
