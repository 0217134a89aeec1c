"""The command line: subcommands, namespaces, refusal of contradictory flags."""

from __future__ import annotations

import pytest

from mqtt_operator.__main__ import main, parser
from mqtt_operator.settings import OperatorSettings


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == "0.1.0"


def test_run_flags_parse() -> None:
    args = parser().parse_args(["run", "-n", "a", "-n", "b", "--log-level", "debug", "--health-port", "0"])
    assert (args.namespace, args.log_level, args.health_port) == (["a", "b"], "debug", 0)


def test_namespaces_and_all_namespaces_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-n", "a", "--all-namespaces"]) == 2
    assert "not both" in capsys.readouterr().err


def test_no_namespace_anywhere_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCH_NAMESPACES", raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    with pytest.raises(ValueError, match="--all-namespaces"):
        OperatorSettings(namespaces=OperatorSettings.default_namespaces())


def test_pod_namespace_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCH_NAMESPACES", raising=False)
    monkeypatch.setenv("POD_NAMESPACE", "mqtt-system")
    assert OperatorSettings.default_namespaces() == ("mqtt-system",)
