"""The command line: subcommands, namespaces, refusal of contradictory flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqtt_operator.__main__ import main, parser
from mqtt_operator.api.instance import MqttInstanceSpec
from mqtt_operator.controllers.instance import with_operator_images
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


def test_broker_address_overrides_from_flags_and_a_file(tmp_path: Path) -> None:
    from mqtt_operator.settings import parse_broker_addresses

    file = tmp_path / "addresses"
    file.write_text("# comment\nns/b=127.0.0.1:2000\n")
    settings = OperatorSettings(
        namespaces=("ns",),
        broker_addresses=parse_broker_addresses(["ns/a=10.1.2.3:1884"]),
        broker_addresses_file=str(file),
    )
    assert settings.broker_address("ns", "a", "a.ns.svc", 1883) == ("10.1.2.3", 1884)
    assert settings.broker_address("ns", "b", "b.ns.svc", 1883) == ("127.0.0.1", 2000)
    assert settings.broker_address("ns", "c", "c.ns.svc", 1883) == ("c.ns.svc", 1883)
    with pytest.raises(ValueError, match="NAMESPACE/INSTANCE=HOST:PORT"):
        parse_broker_addresses(["no-port"])


def test_broker_image_comes_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MQTT_OPERATOR_BROKER_IMAGE", raising=False)
    assert parser().parse_args(["run"]).broker_image is None  # the built-in default stays
    assert parser().parse_args(["run", "--broker-image", "m/mosquitto:2"]).broker_image == "m/mosquitto:2"
    monkeypatch.setenv("MQTT_OPERATOR_BROKER_IMAGE", "localhost/mosquitto:2.0.21")
    assert parser().parse_args(["run"]).broker_image == "localhost/mosquitto:2.0.21"


def test_exporter_image_comes_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MQTT_OPERATOR_EXPORTER_IMAGE", raising=False)
    assert parser().parse_args(["run"]).exporter_image is None  # the built-in default stays
    assert parser().parse_args(["run", "--exporter-image", "m/exp:1"]).exporter_image == "m/exp:1"
    monkeypatch.setenv("MQTT_OPERATOR_EXPORTER_IMAGE", "mirror.example/mqtt-operator:0.1.0")
    assert parser().parse_args(["run"]).exporter_image == "mirror.example/mqtt-operator:0.1.0"


def test_operator_images_fill_only_what_the_spec_leaves_empty() -> None:
    plain = MqttInstanceSpec.model_validate({"monitoring": {"exporter": {"enabled": True}}})
    filled = with_operator_images(plain, "m/mosquitto:2", "m/exp:1")
    assert (filled.image, filled.monitoring.exporter.image) == ("m/mosquitto:2", "m/exp:1")
    own = MqttInstanceSpec.model_validate({"image": "b:1", "monitoring": {"exporter": {"image": "e:1"}}})
    kept = with_operator_images(own, "m/mosquitto:2", "m/exp:1")
    assert (kept.image, kept.monitoring.exporter.image) == ("b:1", "e:1")
    assert with_operator_images(plain, None, None) == plain


def test_object_workers_bound_what_kopf_handles_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    import kopf

    from mqtt_operator.handlers.handled import HandledMemory
    from mqtt_operator.runner import configure_kopf
    from mqtt_operator.settings import OBJECT_WORKERS

    settings = kopf.OperatorSettings()
    assert parser().parse_args(["run"]).object_workers == OBJECT_WORKERS
    flagged = parser().parse_args(["run", "--object-workers", "64"]).object_workers
    configure_kopf(settings, OperatorSettings(namespaces=("a",), object_workers=flagged), HandledMemory())
    assert settings.queueing.worker_limit == 64
    assert main(["run", "-n", "a", "--object-workers", "0"]) == 2
    assert "--object-workers must be at least 1" in capsys.readouterr().err
