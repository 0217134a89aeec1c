"""The MqttInstance builders, one group per owned object: pure, no server."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from mqtt_operator.api.instance import MqttInstanceSpec
from mqtt_operator.resources.admin_secret import (
    ADMIN_USERNAME,
    admin_secret,
    admin_secret_name,
    existing_password,
)
from mqtt_operator.resources.broker_config import CONFIG_HASH_ANNOTATION, broker_config_map, config_hash
from mqtt_operator.resources.identity import InstanceIdentity
from mqtt_operator.resources.instance import build_instance_objects
from mqtt_operator.resources.mosquitto_conf import (
    MANAGED_KEYS,
    BrokerPaths,
    check_extra,
    render_mosquitto_conf,
)
from mqtt_operator.resources.network_policy import CLIENT_LABEL, network_policy
from mqtt_operator.resources.services import client_service, endpoints, headless_service
from mqtt_operator.resources.statefulset import DEFAULT_EXPORTER_IMAGE, DEFAULT_IMAGE, statefulset
from mqtt_operator.resources.templating import render

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((REPO / "examples/mqttinstance.yaml").read_text())
CRD = yaml.safe_load((REPO / "crds/mqttinstances.mqtt-operator.io.yaml").read_text())

ID = InstanceIdentity(name="devices", namespace="iot", uid="0b6c1d2e-uid")
PASSWORD = "s3cret-admin-password-that-must-not-leak"


def spec(**overrides: Any) -> MqttInstanceSpec:
    """The example's spec with top-level fields replaced (camelCase, as in the CR)."""
    return MqttInstanceSpec.model_validate({**EXAMPLE["spec"], **overrides})


def conf(**overrides: Any) -> str:
    return render_mosquitto_conf(spec(**overrides))


def options(text: str) -> list[str]:
    """The option lines of a mosquitto.conf, comments and blank lines left out."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def broker_sts(s: MqttInstanceSpec | None = None, hash_: str = "h1") -> dict[str, Any]:
    return statefulset(ID, s or spec(), hash_)


def pod_spec(sts: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = sts["spec"]["template"]["spec"]
    return result


def broker_container(sts: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod_spec(sts)["containers"] if c["name"] == "mosquitto")


# --- mosquitto.conf -------------------------------------------------------------------------------------


class TestMosquittoConf:
    def test_sessions_and_limits_from_the_spec(self) -> None:
        lines = options(conf())
        for expected in (
            "persistent_client_expiration 2h",
            "max_queued_messages 100000",
            "max_inflight_messages 1000",
            "max_queued_bytes 0",
            "max_packet_size 2097152",
            "max_connections -1",
            "autosave_interval 5",
            "persistence true",
            "persistence_location /mosquitto/data/",
            "per_listener_settings false",
            "set_tcp_nodelay true",
            "log_dest stdout",
            "connection_messages true",
        ):
            assert expected in lines
        assert {"log_type error", "log_type warning", "log_type notice", "log_type information"} <= set(lines)

    @pytest.mark.parametrize(
        ("expiry", "written"), [("2h", "2h"), ("90m", "2h"), ("30s", "1h"), ("1d", "24h")]
    )
    def test_session_expiry_is_whole_hours_rounded_up(self, expiry: str, written: str) -> None:
        # Mosquitto reads "m" as months and refuses seconds and 0h.
        assert f"persistent_client_expiration {written}" in options(conf(sessions={"expiry": expiry}))

    def test_max_packet_size_accepts_bytes_and_quantities(self) -> None:
        assert "max_packet_size 1024" in options(conf(limits={"maxPacketSize": 1024}))
        assert "max_packet_size 1048576" in options(conf(limits={"maxPacketSize": "1Mi"}))

    def test_authorization_on_loads_dynamic_security_and_refuses_anonymous(self) -> None:
        lines = options(conf(authorization={"enabled": True}))
        assert "plugin /usr/lib/mosquitto_dynamic_security.so" in lines
        assert "plugin_opt_config_file /mosquitto/data/dynamic-security.json" in lines
        assert "allow_anonymous false" in lines
        assert "allow_anonymous true" not in lines

    def test_authorization_off_lets_anyone_in_without_plugin(self) -> None:
        lines = options(conf(authorization={"enabled": False}))
        assert "allow_anonymous true" in lines
        assert not [line for line in lines if line.startswith(("password_file", "acl_file"))]
        # Only our plugin, which then lets every login and check through (alone, "defer" would deny all).
        plugins = [line for line in lines if line.startswith("plugin ")]
        assert plugins == ["plugin /usr/lib/mqtt_operator_stamp.so"]
        assert "plugin_opt_access allow" in lines
        # Nothing to batch without dynamic security.
        assert not [line for line in lines if line.startswith("plugin_opt_dynsec")]

    def test_our_plugin_loads_before_dynamic_security_with_default_options(self) -> None:
        # First, so that its login and ACL callbacks see every client before dynamic security answers.
        lines = options(conf())
        plugins = [line for line in lines if line.startswith("plugin")]
        assert plugins == [
            "plugin /usr/lib/mqtt_operator_stamp.so",
            # receivedAt is off by default: the UUIDv7 message id holds the receive millisecond.
            "plugin_opt_fields clientid,address,messageid",
            "plugin_opt_events on",
            "plugin_opt_events_topic $SYS/mqtt-operator/client-events",
            "plugin_opt_clients on",
            "plugin_opt_control_users mqtt-operator-admin",
            "plugin_opt_access defer",
            "plugin_opt_share_state /mosquitto/data/mqtt-operator-shares.json",
            "plugin_opt_share_wait 60",
            "plugin_opt_share_exempt mqtt-operator-exporter",
            "plugin_opt_dynsec_batch_saves on",
            "plugin /usr/lib/mosquitto_dynamic_security.so",
            "plugin_opt_config_file /mosquitto/data/dynamic-security.json",
        ]

    @pytest.mark.parametrize(
        ("stamps", "fields"),
        [
            ({"receivedAt": True}, "clientid,address,messageid,time"),
            ({"clientId": False, "clientAddress": False}, "messageid"),
            ({"clientId": False, "clientAddress": False, "messageId": False}, "none"),
        ],
    )
    def test_message_stamps_choose_the_plugins_fields(self, stamps: dict[str, bool], fields: str) -> None:
        assert f"plugin_opt_fields {fields}" in options(conf(messageStamps=stamps))

    @pytest.mark.parametrize(("wait", "seconds"), [("0s", 0), ("90s", 90), ("1500ms", 2), ("2m", 120)])
    def test_resubscribe_wait_is_written_in_whole_seconds(self, wait: str, seconds: int) -> None:
        assert f"plugin_opt_share_wait {seconds}" in options(conf(persistence={"resubscribeWait": wait}))

    def test_client_events_can_be_moved_or_turned_off(self) -> None:
        lines = options(conf(clientEvents={"topic": "fleet/lifecycle"}))
        assert "plugin_opt_events_topic fleet/lifecycle" in lines
        assert "plugin_opt_events off" in options(conf(clientEvents={"enabled": False}))

    @pytest.mark.parametrize("topic", ["", "a/+/b", "a/#", "a b", "a\nallow_anonymous true"])
    def test_client_events_topic_must_be_one_publishable_topic(self, topic: str) -> None:
        with pytest.raises(ValueError, match=r"spec\.clientEvents\.topic"):
            conf(clientEvents={"topic": topic})

    def test_in_pod_stamp_plugin_path_is_the_images(self) -> None:
        assert BrokerPaths().stamp_plugin == "/usr/lib/mqtt_operator_stamp.so"

    def test_each_listener_with_its_protocol_and_connection_limit(self) -> None:
        text = conf(
            listeners={
                "mqtt": {"port": 1883},
                "mqtts": {
                    "port": 8883,
                    "tls": {"secretName": "broker-tls", "requireClientCertificate": True},
                },
                "websocket": {"port": 8080, "tls": {"secretName": "ws-tls"}},
            },
            limits={"maxConnections": 500},
        )
        blocks = re.split(r"(?m)^listener ", text)[1:]
        first_lines = [options("listener " + block)[:3] for block in blocks]
        assert first_lines == [
            ["listener 1883", "protocol mqtt", "max_connections 500"],
            ["listener 8883", "protocol mqtt", "max_connections 500"],
            ["listener 8080", "protocol websockets", "max_connections 500"],
        ]
        mqtts, websocket = options(blocks[1]), options(blocks[2])
        assert "certfile /mosquitto/tls/mqtts/tls.crt" in mqtts
        assert "keyfile /mosquitto/tls/mqtts/tls.key" in mqtts
        assert "cafile /mosquitto/tls/mqtts/ca.crt" in mqtts
        assert "require_certificate true" in mqtts
        # Without client certificates no ca.crt is asked of the Secret.
        assert "certfile /mosquitto/tls/websocket/tls.crt" in websocket
        assert "require_certificate false" in websocket
        assert not [line for line in websocket if line.startswith("cafile")]
        # Plain listeners carry no TLS options.
        assert not [line for line in options(blocks[0]) if line.startswith(("certfile", "keyfile"))]

    def test_connection_limit_is_never_global(self) -> None:
        # Mosquitto 2.0 silently ignores max_connections before the first listener.
        lines = options(conf(limits={"maxConnections": 5}))
        assert lines.index("max_connections 5") > next(
            i for i, ln in enumerate(lines) if ln.startswith("listener")
        )

    def test_mqtts_without_tls_is_refused(self) -> None:
        with pytest.raises(ValueError, match=r"spec\.listeners\.mqtts\.tls"):
            conf(listeners={"mqtts": {"port": 8883}})

    def test_paths_come_from_broker_paths(self) -> None:
        paths = BrokerPaths(
            config_dir="/t/c", data_dir="/t/d", tls_dir="/t/tls", dynsec_plugin="/t/dynsec.so"
        )
        s = spec(listeners={"mqtts": {"port": 8883, "tls": {"secretName": "x"}}})
        lines = options(render_mosquitto_conf(s, paths))
        assert "plugin /t/dynsec.so" in lines
        assert "plugin_opt_config_file /t/d/dynamic-security.json" in lines
        assert "persistence_location /t/d/" in lines
        assert "certfile /t/tls/mqtts/tls.crt" in lines
        assert not [line for line in lines if "/mosquitto/" in line]

    @pytest.mark.parametrize("bad", ["relative/dir", "/with space", "/two\nlines", "/trailing/"])
    def test_broker_paths_refuse_what_would_break_a_line(self, bad: str) -> None:
        with pytest.raises(ValueError, match=r"BrokerPaths\.data_dir"):
            BrokerPaths(data_dir=bad)

    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            ({"sessions": {"expiry": "2h\nallow_anonymous true"}}, "spec.sessions.expiry"),
            ({"persistence": {"autosaveInterval": "30s\nlistener 1"}}, "spec.persistence.autosaveInterval"),
            ({"persistence": {"resubscribeWait": "1m\nlistener 1"}}, "spec.persistence.resubscribeWait"),
            ({"limits": {"maxPacketSize": "1Mi\rplugin x"}}, "spec.limits.maxPacketSize"),
        ],
    )
    def test_a_line_break_in_a_user_string_is_refused_naming_the_field(
        self, overrides: dict[str, Any], field: str
    ) -> None:
        with pytest.raises(ValueError, match=re.escape(field)) as err:
            conf(**overrides)
        assert "single line" in str(err.value)

    def test_numbers_out_of_range_are_refused_naming_the_field(self) -> None:
        with pytest.raises(ValueError, match=r"spec\.limits\.maxPacketSize"):
            conf(limits={"maxPacketSize": "512Mi"})
        with pytest.raises(ValueError, match=r"spec\.sessions\.maxInflightMessages"):
            conf(sessions={"maxInflightMessages": 70000})

    def test_extra_is_appended_at_the_end_under_a_comment(self) -> None:
        text = conf(config={"extra": "retain_available true\nmax_topic_alias 5\n\n"})
        tail = text.rstrip("\n").splitlines()[-3:]
        assert tail[0].startswith("# spec.config.extra")
        assert tail[1:] == ["retain_available true", "max_topic_alias 5"]
        assert text.endswith("max_topic_alias 5\n")

    @pytest.mark.parametrize(
        ("extra", "key"),
        [
            ("listener 1884", "listener"),
            ("retain_available true\n  allow_anonymous true", "allow_anonymous"),
            ("\tplugin_opt_config_file /tmp/x.json", "plugin_opt_config_file"),
            ("max_connections 5", "max_connections"),
            ("user root", "user"),
            ("log_type all\r\npassword_file /etc/passwd", "password_file"),
            ("connection_messages false", "connection_messages"),
            ("log_timestamp_format %s", "log_timestamp_format"),
        ],
    )
    def test_extra_setting_a_managed_option_is_refused_naming_it(self, extra: str, key: str) -> None:
        with pytest.raises(ValueError, match=rf"spec\.config\.extra sets {key} \(line"):
            conf(config={"extra": extra})

    def test_extra_with_a_comment_or_similar_name_is_allowed(self) -> None:
        assert check_extra("# listener 1884 is the plain port\nlisteners_note x\nuser_property_limit 1") != ""

    def test_extra_with_nul_is_refused(self) -> None:
        with pytest.raises(ValueError, match=r"spec\.config\.extra"):
            conf(config={"extra": "retain_available true\0"})

    def test_managed_keys_match_the_crd_rule(self) -> None:
        extra = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
            "config"
        ]["properties"]["extra"]
        rule = extra["x-kubernetes-validations"][0]["rule"]
        alternatives = re.search(r"\(listener\|.*?\)\(", rule)
        assert alternatives is not None
        crd_keys = alternatives.group(0)[1:-2].split("|")
        assert [k.replace("[A-Za-z0-9_]*", "*") for k in crd_keys] == list(MANAGED_KEYS)

    def test_the_template_refuses_missing_values(self) -> None:
        with pytest.raises(jinja2.UndefinedError):
            render("mosquitto.conf.j2")


# --- ConfigMap and config hash ----------------------------------------------------------------------------


class TestBrokerConfig:
    def test_config_map_holds_the_rendered_file(self) -> None:
        cm = broker_config_map(ID, spec())
        assert cm["kind"] == "ConfigMap"
        assert cm["metadata"]["name"] == "devices-config"
        assert cm["metadata"]["namespace"] == "iot"
        assert cm["metadata"]["ownerReferences"][0]["uid"] == ID.uid
        assert cm["data"] == {"mosquitto.conf": render_mosquitto_conf(spec())}

    def test_hash_is_stable_and_ignores_key_order(self) -> None:
        assert config_hash(broker_config_map(ID, spec())["data"]) == config_hash(
            broker_config_map(ID, spec())["data"]
        )
        assert config_hash({"a": "1", "b": "2"}) == config_hash({"b": "2", "a": "1"})

    def test_hash_changes_when_the_config_changes(self) -> None:
        before = config_hash(broker_config_map(ID, spec())["data"])
        after = config_hash(broker_config_map(ID, spec(sessions={"maxQueuedMessages": 5}))["data"])
        assert before != after

    def test_hash_unchanged_by_spec_fields_outside_the_config(self) -> None:
        before = config_hash(broker_config_map(ID, spec())["data"])
        same = spec(replicas=0, podLabels={"team": "fleet"}, resources={"limits": {"memory": "1Gi"}})
        assert config_hash(broker_config_map(ID, same)["data"]) == before

    def test_statefulset_carries_the_hash_on_the_pod_template(self) -> None:
        objects = build_instance_objects(ID, spec(), admin_password=PASSWORD)
        cm = next(o for o in objects if o["kind"] == "ConfigMap")
        sts = next(o for o in objects if o["kind"] == "StatefulSet")
        annotations = sts["spec"]["template"]["metadata"]["annotations"]
        assert annotations[CONFIG_HASH_ANNOTATION] == config_hash(cm["data"])


# --- admin Secret -----------------------------------------------------------------------------------------


class TestAdminSecret:
    def test_generated_once_when_absent(self) -> None:
        calls: list[int] = []

        def generate() -> str:
            calls.append(1)
            return "generated-password"

        secret = admin_secret(ID, spec(), None, generate)
        assert calls == [1]
        assert existing_password(secret) == "generated-password"

    def test_existing_password_is_never_regenerated(self) -> None:
        def generate() -> str:
            raise AssertionError("the generator must not be called when a password exists")

        first = admin_secret(ID, spec(), None)
        again = admin_secret(ID, spec(), existing_password(first), generate)
        assert again == first

    def test_default_generator_gives_long_distinct_passwords(self) -> None:
        a, b = (existing_password(admin_secret(ID, spec(), None)) for _ in range(2))
        assert a and b and a != b and len(a) >= 40

    def test_keys_type_name_and_labels(self) -> None:
        secret = admin_secret(ID, spec(), PASSWORD)
        assert secret["type"] == "Opaque"
        assert secret["metadata"]["name"] == admin_secret_name("devices") == "devices-admin"
        assert (
            base64.b64decode(secret["data"]["username"]).decode() == ADMIN_USERNAME == "mqtt-operator-admin"
        )
        assert base64.b64decode(secret["data"]["password"]).decode() == PASSWORD
        assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mqtt-operator"
        assert secret["metadata"]["labels"]["app.kubernetes.io/instance"] == "devices"

    def test_owned_only_with_deletion_policy_delete(self) -> None:
        deleted = admin_secret(ID, spec(deletionPolicy="delete"), PASSWORD)
        kept = admin_secret(ID, spec(deletionPolicy="retain"), PASSWORD)
        assert deleted["metadata"]["ownerReferences"] == [ID.owner_reference()]
        assert "ownerReferences" not in kept["metadata"]

    def test_existing_password_reads_a_live_secret(self) -> None:
        assert existing_password(None) is None
        assert existing_password({"metadata": {"name": "x"}}) is None
        assert existing_password(admin_secret(ID, spec(), PASSWORD)) == PASSWORD

    def test_an_unusable_password_is_refused_without_showing_it(self) -> None:
        with pytest.raises(ValueError, match="empty password"):
            admin_secret(ID, spec(), "")
        with pytest.raises(ValueError, match="single line") as err:
            admin_secret(ID, spec(), "line1\nline2-secret")
        assert "line2-secret" not in str(err.value)


# --- StatefulSet ------------------------------------------------------------------------------------------


class TestStatefulSet:
    def test_identity_service_name_replicas_and_default_image(self) -> None:
        sts = broker_sts()
        assert (sts["metadata"]["name"], sts["metadata"]["namespace"]) == ("devices", "iot")
        assert sts["metadata"]["ownerReferences"] == [ID.owner_reference()]
        assert sts["spec"]["serviceName"] == "devices-headless"
        assert sts["spec"]["replicas"] == 1
        assert broker_container(sts)["image"] == DEFAULT_IMAGE == "eclipse-mosquitto:2.0.22"
        assert broker_container(broker_sts(spec(image="registry.local/mosquitto:2.0.22")))["image"] == (
            "registry.local/mosquitto:2.0.22"
        )
        assert broker_container(sts)["command"] == ["mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
        assert pod_spec(sts)["terminationGracePeriodSeconds"] == 30

    def test_pod_security_context(self) -> None:
        assert pod_spec(broker_sts())["securityContext"] == {
            "runAsUser": 1883,
            "runAsGroup": 1883,
            "fsGroup": 1883,
            "fsGroupChangePolicy": "OnRootMismatch",
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        }

    def test_every_container_is_locked_down(self) -> None:
        pod = pod_spec(broker_sts())
        containers = pod["containers"] + pod["initContainers"]
        assert len(containers) == 2
        for container in containers:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"] == {"drop": ["ALL"]}
            assert ctx["readOnlyRootFilesystem"] is True

    def test_probes_on_the_first_listener(self) -> None:
        container = broker_container(broker_sts())
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert container[probe]["tcpSocket"] == {"port": "mqtt"}
            timeout = container[probe]["timeoutSeconds"]
            assert timeout >= 1
            assert timeout <= container[probe]["periodSeconds"]
        # Liveness gives up later than readiness: an overloaded broker leaves the Service before it restarts.
        live, ready = container["livenessProbe"], container["readinessProbe"]
        assert (
            live["periodSeconds"] * live["failureThreshold"]
            > ready["periodSeconds"] * ready["failureThreshold"]
        )
        only_ws = broker_container(broker_sts(spec(listeners={"websocket": {"port": 9001}})))
        assert only_ws["readinessProbe"]["tcpSocket"] == {"port": "websocket"}

    def test_one_container_port_per_listener(self) -> None:
        s = spec(
            listeners={
                "mqtt": {"port": 1883},
                "mqtts": {"port": 8883, "tls": {"secretName": "tls"}},
                "websocket": {"port": 8080},
            }
        )
        assert broker_container(broker_sts(s))["ports"] == [
            {"name": "mqtt", "containerPort": 1883, "protocol": "TCP"},
            {"name": "mqtts", "containerPort": 8883, "protocol": "TCP"},
            {"name": "websocket", "containerPort": 8080, "protocol": "TCP"},
        ]

    def test_tls_secrets_mounted_per_tls_listener(self) -> None:
        s = spec(
            listeners={
                "mqtt": {"port": 1883},
                "mqtts": {"port": 8883, "tls": {"secretName": "broker-tls"}},
                "websocket": {"port": 8080, "tls": {"secretName": "ws-tls"}},
            }
        )
        sts = broker_sts(s)
        volumes = {v["name"]: v for v in pod_spec(sts)["volumes"]}
        assert volumes["tls-mqtts"]["secret"]["secretName"] == "broker-tls"
        assert volumes["tls-websocket"]["secret"]["secretName"] == "ws-tls"
        mounts = {m["name"]: m for m in broker_container(sts)["volumeMounts"]}
        assert mounts["tls-mqtts"] == {
            "name": "tls-mqtts",
            "mountPath": "/mosquitto/tls/mqtts",
            "readOnly": True,
        }
        assert mounts["config"]["mountPath"] == "/mosquitto/config"
        assert mounts["data"]["mountPath"] == "/mosquitto/data"
        assert volumes["config"]["configMap"]["name"] == "devices-config"

    def test_persistence_on_claims_a_volume(self) -> None:
        sts = broker_sts(spec(persistence={"enabled": True, "size": "5Gi", "storageClassName": "fast"}))
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "data"
        assert claim["spec"] == {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "5Gi"}},
            "storageClassName": "fast",
        }
        # No version label: volumeClaimTemplates cannot change after creation.
        assert "app.kubernetes.io/version" not in claim["metadata"]["labels"]
        assert not [v for v in pod_spec(sts)["volumes"] if v["name"] == "data"]

    def test_persistence_off_uses_an_empty_dir(self) -> None:
        sts = broker_sts(spec(persistence={"enabled": False}))
        assert "volumeClaimTemplates" not in sts["spec"]
        assert {"name": "data", "emptyDir": {}} in pod_spec(sts)["volumes"]

    @pytest.mark.parametrize(("policy", "when_deleted"), [("retain", "Retain"), ("delete", "Delete")])
    def test_claim_retention_follows_the_deletion_policy(self, policy: str, when_deleted: str) -> None:
        sts = broker_sts(spec(deletionPolicy=policy))
        assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
            "whenDeleted": when_deleted,
            "whenScaled": "Retain",
        }

    def test_init_container_creates_dynsec_file_only_when_absent(self) -> None:
        (init,) = pod_spec(broker_sts(spec(authorization={"enabled": True})))["initContainers"]
        script = init["command"][-1]
        assert 'if [ -e "$DYNSEC_FILE" ]' in script
        assert 'mosquitto_ctrl dynsec init "$DYNSEC_FILE" "$ADMIN_USERNAME" "$ADMIN_PASSWORD"' in script
        env = {e["name"]: e for e in init["env"]}
        assert env["DYNSEC_FILE"]["value"] == "/mosquitto/data/dynamic-security.json"
        assert env["ADMIN_USERNAME"]["value"] == "mqtt-operator-admin"
        assert env["ADMIN_PASSWORD"] == {
            "name": "ADMIN_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "devices-admin", "key": "password"}},
        }
        assert init["volumeMounts"] == [{"name": "data", "mountPath": "/mosquitto/data"}]

    def test_no_init_container_without_authorization(self) -> None:
        assert "initContainers" not in pod_spec(broker_sts(spec(authorization={"enabled": False})))

    def test_user_pod_labels_cannot_override_ours(self) -> None:
        s = spec(
            podLabels={"team": "fleet", "app.kubernetes.io/instance": "hijack", "app.kubernetes.io/x": "y"}
        )
        labels = broker_sts(s)["spec"]["template"]["metadata"]["labels"]
        assert labels["team"] == "fleet"
        assert labels["app.kubernetes.io/instance"] == "devices"
        assert "app.kubernetes.io/x" not in labels
        selector = broker_sts(s)["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items()

    def test_pod_template_has_no_version_label_so_an_upgrade_restarts_nothing(self) -> None:
        sts = broker_sts()
        assert "app.kubernetes.io/version" not in sts["spec"]["template"]["metadata"]["labels"]
        assert (
            sts["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mqtt-operator"
        )
        # The StatefulSet itself keeps it: changing its metadata restarts nothing.
        assert "app.kubernetes.io/version" in sts["metadata"]["labels"]

    def test_pod_annotations_with_the_hash_winning(self) -> None:
        s = spec(podAnnotations={"prometheus.io/scrape": "true", CONFIG_HASH_ANNOTATION: "pinned"})
        annotations = broker_sts(s, "real-hash")["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {"prometheus.io/scrape": "true", CONFIG_HASH_ANNOTATION: "real-hash"}

    def test_scheduling_and_resources_pass_through(self) -> None:
        s = spec(
            resources={"requests": {"cpu": "100m"}},
            nodeSelector={"disk": "ssd"},
            tolerations=[{"key": "dedicated", "operator": "Equal", "value": "mqtt", "effect": "NoSchedule"}],
            affinity={"nodeAffinity": {}},
            imagePullSecrets=[{"name": "regcred"}],
        )
        pod = pod_spec(broker_sts(s))
        assert broker_container({"spec": {"template": {"spec": pod}}})["resources"] == {
            "requests": {"cpu": "100m"}
        }
        assert pod["nodeSelector"] == {"disk": "ssd"}
        assert pod["tolerations"] == [
            {"key": "dedicated", "operator": "Equal", "value": "mqtt", "effect": "NoSchedule"}
        ]
        assert pod["affinity"] == {"nodeAffinity": {}}
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]

    def test_empty_scheduling_fields_are_left_out(self) -> None:
        s = MqttInstanceSpec()
        pod = pod_spec(broker_sts(s))
        for key in ("nodeSelector", "tolerations", "affinity", "imagePullSecrets"):
            assert key not in pod

    def test_admin_password_never_in_statefulset_or_config_map(self) -> None:
        objects = build_instance_objects(ID, spec(), admin_password=PASSWORD)
        encoded = base64.b64encode(PASSWORD.encode()).decode()
        for obj in objects:
            if obj["kind"] == "Secret":
                continue
            text = json.dumps(obj)
            assert PASSWORD not in text and encoded not in text, obj["kind"]


# --- Services ---------------------------------------------------------------------------------------------


class TestServices:
    LISTENERS: dict[str, Any] = {  # noqa: RUF012 - read-only test data
        "mqtt": {"port": 1883},
        "mqtts": {"port": 8883, "tls": {"secretName": "tls"}},
        "websocket": {"port": 8080},
    }

    def test_client_service_has_one_named_port_per_listener(self) -> None:
        svc = client_service(ID, spec(listeners=self.LISTENERS))
        assert svc["metadata"]["name"] == "devices"
        assert svc["spec"]["ports"] == [
            {"name": "mqtt", "port": 1883, "targetPort": "mqtt", "protocol": "TCP"},
            {"name": "mqtts", "port": 8883, "targetPort": "mqtts", "protocol": "TCP"},
            {"name": "websocket", "port": 8080, "targetPort": "websocket", "protocol": "TCP"},
        ]
        assert svc["spec"]["type"] == "ClusterIP"
        assert svc["spec"]["selector"] == broker_sts()["spec"]["selector"]["matchLabels"]

    def test_client_service_takes_type_annotations_labels_and_source_ranges(self) -> None:
        svc = client_service(
            ID,
            spec(
                service={
                    "type": "LoadBalancer",
                    "annotations": {"lb.example/internal": "true"},
                    "labels": {"exposed": "yes", "app.kubernetes.io/name": "hijack"},
                    "loadBalancerSourceRanges": ["10.0.0.0/8"],
                }
            ),
        )
        assert svc["spec"]["type"] == "LoadBalancer"
        assert svc["spec"]["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
        assert svc["metadata"]["annotations"] == {"lb.example/internal": "true"}
        assert svc["metadata"]["labels"]["exposed"] == "yes"
        assert svc["metadata"]["labels"]["app.kubernetes.io/name"] == "mqttinstance"

    def test_source_ranges_only_on_load_balancers(self) -> None:
        svc = client_service(
            ID, spec(service={"type": "NodePort", "loadBalancerSourceRanges": ["10.0.0.0/8"]})
        )
        assert "loadBalancerSourceRanges" not in svc["spec"]

    def test_headless_service(self) -> None:
        svc = headless_service(ID, spec(listeners=self.LISTENERS))
        assert svc["metadata"]["name"] == "devices-headless"
        assert svc["spec"]["clusterIP"] == "None"
        assert svc["spec"]["publishNotReadyAddresses"] is True
        assert [p["name"] for p in svc["spec"]["ports"]] == ["mqtt", "mqtts", "websocket"]

    def test_endpoints_per_listener(self) -> None:
        assert endpoints("devices", "iot", spec(listeners=self.LISTENERS).listeners) == {
            "mqtt": "devices.iot.svc:1883",
            "mqtts": "devices.iot.svc:8883",
            "websocket": "ws://devices.iot.svc:8080",
        }
        wss = spec(listeners={"websocket": {"port": 443, "tls": {"secretName": "t"}}}).listeners
        assert endpoints("devices", "iot", wss) == {"websocket": "wss://devices.iot.svc:443"}


# --- NetworkPolicy ----------------------------------------------------------------------------------------


class TestNetworkPolicy:
    def test_disabled_builds_nothing(self) -> None:
        assert network_policy(ID, spec(networkPolicy={"enabled": False}), "mqtt-system") is None
        assert network_policy(ID, spec(), "mqtt-system") is None  # off by default

    def test_only_operator_workers_and_labelled_clients_reach_the_broker_ports(self) -> None:
        policy = network_policy(ID, spec(networkPolicy={"enabled": True}), "mqtt-system")
        assert policy is not None
        assert policy["metadata"]["name"] == "devices-broker"
        assert policy["spec"]["podSelector"] == broker_sts()["spec"]["selector"]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        (rule,) = policy["spec"]["ingress"]
        assert rule["from"] == [
            {"podSelector": {"matchLabels": {"app.kubernetes.io/managed-by": "mqtt-operator"}}},
            {"podSelector": {"matchLabels": {"mqtt-operator.io/client": "devices"}}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mqtt-system"}}},
        ]
        assert CLIENT_LABEL == "mqtt-operator.io/client"  # the label the CRD documents
        assert rule["ports"] == [{"protocol": "TCP", "port": 1883}, {"protocol": "TCP", "port": 8080}]

    def test_allow_from_peers_are_added_as_given(self) -> None:
        s = spec(
            networkPolicy={
                "enabled": True,
                "allowFrom": [
                    {"podSelector": {"matchLabels": {"app": "gateway"}}},
                    {"namespaceSelector": {"matchLabels": {"team": "ops"}}},
                    {
                        "podSelector": {"matchLabels": {"app": "ingest"}},
                        "namespaceSelector": {"matchLabels": {"team": "data"}},
                    },
                ],
            }
        )
        policy = network_policy(ID, s, "mqtt-system")
        assert policy is not None
        assert policy["spec"]["ingress"][0]["from"][2:] == [
            {"podSelector": {"matchLabels": {"app": "gateway"}}},
            {"namespaceSelector": {"matchLabels": {"team": "ops"}}},
            # Both selectors stay one peer: these Pods in these namespaces, not either.
            {
                "podSelector": {"matchLabels": {"app": "ingest"}},
                "namespaceSelector": {"matchLabels": {"team": "data"}},
            },
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mqtt-system"}}},
        ]

    def test_no_operator_namespace_peer_when_outside_the_cluster(self) -> None:
        policy = network_policy(ID, spec(networkPolicy={"enabled": True}), None)
        assert policy is not None
        assert not [p for p in policy["spec"]["ingress"][0]["from"] if "namespaceSelector" in p]

    def test_an_empty_allow_from_peer_is_refused(self) -> None:
        s = spec(
            networkPolicy={"enabled": True, "allowFrom": [{"podSelector": {"matchLabels": {"a": "b"}}}, {}]}
        )
        with pytest.raises(ValueError, match=r"spec\.networkPolicy\.allowFrom\[1\] needs a podSelector"):
            network_policy(ID, s, "mqtt-system")


# --- all objects together ---------------------------------------------------------------------------------


class TestInstanceObjects:
    def test_apply_order(self) -> None:
        objects = build_instance_objects(ID, spec(), admin_password=PASSWORD)
        assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
            ("Secret", "devices-admin"),
            ("ConfigMap", "devices-config"),
            ("Service", "devices"),
            ("Service", "devices-headless"),
            ("StatefulSet", "devices"),
        ]

    def test_network_policy_last_when_enabled_letting_in_the_operator_namespace(self) -> None:
        objects = build_instance_objects(
            ID,
            spec(networkPolicy={"enabled": True}),
            admin_password=PASSWORD,
            operator_namespace="mqtt-system",
        )
        assert objects[-1]["kind"] == "NetworkPolicy"
        assert {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mqtt-system"}}
        } in objects[-1]["spec"]["ingress"][0]["from"]

    def test_all_in_the_instance_namespace_with_our_labels(self) -> None:
        for obj in build_instance_objects(
            ID,
            spec(networkPolicy={"enabled": True}),
            admin_password=PASSWORD,
            operator_namespace="mqtt-system",
        ):
            assert obj["metadata"]["namespace"] == "iot"
            assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "devices"

    def test_identity_from_a_body(self) -> None:
        body = {
            "apiVersion": "mqtt-operator.io/v1alpha1",
            "kind": "MqttInstance",
            "metadata": {"name": "devices", "namespace": "iot", "uid": "0b6c1d2e-uid"},
        }
        assert InstanceIdentity.from_body(body) == ID


def exporter_spec(*, top: dict[str, Any] | None = None, **exporter: Any) -> MqttInstanceSpec:
    """The example with the exporter on; `top` replaces more top-level fields."""
    return spec(monitoring={"exporter": {"enabled": True, **exporter}}, **(top or {}))


def pod_containers(s: MqttInstanceSpec) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in broker_sts(s)["spec"]["template"]["spec"]["containers"]}


class TestExporterSidecar:
    """spec.monitoring.exporter: `mqtt-operator broker-exporter` beside the broker, on localhost."""

    def test_off_by_default_and_nothing_changes(self) -> None:
        assert MqttInstanceSpec().monitoring.exporter.enabled is False
        assert list(pod_containers(spec())) == ["mosquitto"]
        # Brokers that do not ask for it keep their config (and so their config hash: no restart).
        assert not any(line.startswith("sys_interval") for line in options(conf()))

    def test_enabled_adds_the_exporter_container(self) -> None:
        containers = pod_containers(exporter_spec())
        assert list(containers) == ["mosquitto", "exporter"]
        exporter = containers["exporter"]
        assert exporter["image"] == DEFAULT_EXPORTER_IMAGE
        assert exporter["ports"] == [{"name": "metrics", "containerPort": 9234, "protocol": "TCP"}]
        probe = exporter["readinessProbe"]
        assert probe["httpGet"] == {"path": "/metrics", "port": "metrics"}
        assert exporter["securityContext"]["readOnlyRootFilesystem"] is True
        assert exporter["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        # No liveness probe: while the broker restarts the exporter reconnects by itself.
        assert "livenessProbe" not in exporter

    def test_port_image_and_resources_from_the_spec(self) -> None:
        resources = {"limits": {"memory": "32Mi"}, "requests": {"cpu": "10m"}}
        exporter = pod_containers(exporter_spec(port=9500, image="mirror/exporter:1", resources=resources))[
            "exporter"
        ]
        assert exporter["image"] == "mirror/exporter:1"
        assert exporter["ports"][0]["containerPort"] == 9500
        env = {e["name"]: e.get("value") for e in exporter["env"]}
        assert env["BIND_ADDRESS"] == ":9500"
        assert exporter["resources"] == resources

    def test_connects_to_the_plain_listener_on_localhost(self) -> None:
        s = exporter_spec(top={"listeners": {"mqtt": {"port": 1884}}})
        env = {e["name"]: e.get("value") for e in pod_containers(s)["exporter"]["env"]}
        assert env["BROKER_ENDPOINT"] == "tcp://127.0.0.1:1884"
        assert env["MQTT_CLIENT_ID"] == "mqtt-operator-exporter"

    def test_admin_password_only_from_the_secret(self) -> None:
        exporter = pod_containers(exporter_spec())["exporter"]
        env = {e["name"]: e for e in exporter["env"]}
        assert env["MQTT_USER"]["value"] == ADMIN_USERNAME
        assert env["MQTT_PASS"] == {
            "name": "MQTT_PASS",
            "valueFrom": {"secretKeyRef": {"name": admin_secret_name("devices"), "key": "password"}},
        }
        # The image's entrypoint is `mqtt-operator`; the password is in no argument.
        assert exporter["args"] == ["broker-exporter"] and "command" not in exporter
        objects = build_instance_objects(ID, exporter_spec(), admin_password=PASSWORD)
        sts = next(o for o in objects if o["kind"] == "StatefulSet")
        assert PASSWORD not in json.dumps(sts)

    def test_no_login_without_authorization(self) -> None:
        s = exporter_spec(top={"authorization": {"enabled": False}})
        assert {e["name"] for e in pod_containers(s)["exporter"]["env"]} == {
            "BROKER_ENDPOINT",
            "BIND_ADDRESS",
            "MQTT_CLIENT_ID",
        }

    def test_sys_interval_rendered_only_with_the_exporter(self) -> None:
        assert "sys_interval 10" in options(render_mosquitto_conf(exporter_spec()))
        assert "sys_interval 2" in options(render_mosquitto_conf(exporter_spec(sysIntervalSeconds=2)))

    def test_needs_a_plain_mqtt_listener(self) -> None:
        tls_only = {"mqtts": {"port": 8883, "tls": {"secretName": "t"}}}
        with pytest.raises(
            ValueError, match=r"spec\.monitoring\.exporter needs spec\.listeners\.mqtt without tls"
        ):
            broker_sts(exporter_spec(top={"listeners": tls_only}))

    def test_port_must_not_be_a_listeners(self) -> None:
        with pytest.raises(ValueError, match=r"port 1883 is a listener's port: choose another port"):
            broker_sts(exporter_spec(port=1883))

    def test_network_policy_lets_scrapers_reach_only_the_metrics_port(self) -> None:
        monitoring_ns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        s = spec(
            networkPolicy={"enabled": True},
            monitoring={"exporter": {"enabled": True, "scrapeFrom": [monitoring_ns]}},
        )
        policy = network_policy(ID, s, "mqtt-system")
        assert policy is not None
        broker_rule, metrics_rule = policy["spec"]["ingress"]
        assert monitoring_ns not in broker_rule["from"]
        assert metrics_rule["ports"] == [{"protocol": "TCP", "port": 9234}]
        assert monitoring_ns in metrics_rule["from"]
        # The operator's namespace and the broker's own peers may scrape too.
        assert all(peer in metrics_rule["from"] for peer in broker_rule["from"])

    def test_network_policy_without_exporter_has_one_rule(self) -> None:
        policy = network_policy(ID, spec(networkPolicy={"enabled": True}), None)
        assert policy is not None and len(policy["spec"]["ingress"]) == 1

    def test_empty_scrape_peer_is_refused_with_its_field(self) -> None:
        s = spec(
            networkPolicy={"enabled": True}, monitoring={"exporter": {"enabled": True, "scrapeFrom": [{}]}}
        )
        with pytest.raises(ValueError, match=r"spec.monitoring.exporter.scrapeFrom\[0\] needs a podSelector"):
            network_policy(ID, s, None)

    def test_crd_defaults_match_the_model(self) -> None:
        schema = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        props = schema["monitoring"]["properties"]["exporter"]["properties"]
        model = MqttInstanceSpec().monitoring.exporter
        assert props["enabled"]["default"] is model.enabled
        assert props["port"]["default"] == model.port
        assert props["sysIntervalSeconds"]["default"] == model.sys_interval_seconds
