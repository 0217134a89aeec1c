"""mosquitto.conf: the broker's configuration rendered from the spec, each value checked first.

Mosquitto reads one option per line, so a value carrying a line break could smuggle in any option (a second
listener, `allow_anonymous true`). Every value is therefore checked here, and refused with a ValueError
naming the spec field, before it reaches the template.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass

from mqtt_operator.api.base import duration_seconds, quantity_bytes
from mqtt_operator.api.instance import ClientEvents, Listener, MessageStamps, MqttInstanceSpec
from mqtt_operator.resources.admin_secret import ADMIN_USERNAME
from mqtt_operator.resources.config_lines import one_line
from mqtt_operator.resources.templating import render

CONFIG_FILE = "mosquitto.conf"
DYNSEC_FILE = "dynamic-security.json"
# The broker plugin's record of the shared subscriptions of persistent sessions (broker-plugin/shares.c).
SHARE_STATE_FILE = "mqtt-operator-shares.json"
# The exporter sidecar's MQTT client id, so the broker's log and `kubectl mqtt clients` name it; let in
# while the broker holds clients after a start, as its readiness is the broker Pod's.
EXPORTER_CLIENT_ID = "mqtt-operator-exporter"

# Keys of a kubernetes.io/tls Secret, as cert-manager writes them.
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
TLS_CA = "ca.crt"

# Options the operator sets from the spec; `spec.config.extra` may not set them. The same list as the CRD's
# validation rule on config.extra (a unit test keeps them equal): the operator checks again because a CR
# written before the rule existed, or applied with validation off, must not reach the broker.
MANAGED_KEYS: tuple[str, ...] = (
    "listener",
    "port",
    "bind_address",
    "bind_interface",
    "socket_domain",
    "protocol",
    "mount_point",
    "per_listener_settings",
    "plugin",
    "plugin_opt_*",
    "auth_plugin",
    "auth_opt_*",
    "password_file",
    "psk_file",
    "acl_file",
    "allow_anonymous",
    "persistence",
    "persistence_file",
    "persistence_location",
    "persistent_client_expiration",
    "autosave_interval",
    "autosave_on_changes",
    "max_queued_messages",
    "max_queued_bytes",
    "max_inflight_messages",
    "max_inflight_bytes",
    "max_packet_size",
    "max_connections",
    "include_dir",
    "log_dest",
    "log_timestamp_format",
    "connection_messages",
    "pid_file",
    "user",
    "cafile",
    "capath",
    "certfile",
    "keyfile",
    "require_certificate",
    "use_identity_as_username",
)

# Mosquitto's protocol option per listener kind.
_PROTOCOLS = {"mqtt": "mqtt", "mqtts": "mqtt", "websocket": "websockets"}

_INT32_MAX = 2**31 - 1
_MQTT_MAX_PACKET = 268_435_455  # the largest remaining length MQTT can encode
_OPTION_NAME = re.compile(r"[ \t]*([^ \t]*)")


def checked_int(field: str, value: object, minimum: int, maximum: int) -> int:
    # bool is an int in Python; `true` where a number belongs is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{field} must be a whole number, not {value!r}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{field} must be between {minimum} and {maximum}, not {value}")
    return value


def _path(field: str, value: str) -> str:
    # Mosquitto splits option values at spaces, so a path with whitespace would be cut short; the file
    # names are appended with "/", so a trailing one would double.
    one_line(field, value)
    if not value.startswith("/") or value.endswith("/") or any(ch.isspace() for ch in value):
        raise ValueError(f"{field} must be an absolute path without whitespace or trailing /, not {value!r}")
    return value


@dataclass(frozen=True)
class BrokerPaths:
    """Every filesystem path the configuration names: in-pod defaults, or a local folder in tests."""

    config_dir: str = "/mosquitto/config"
    data_dir: str = "/mosquitto/data"
    tls_dir: str = "/mosquitto/tls"
    # Where the eclipse-mosquitto image installs the plugin (Debian puts it under /usr/lib/<arch>/).
    dynsec_plugin: str = "/usr/lib/mosquitto_dynamic_security.so"
    # Our own plugin (broker-plugin/), where images/mosquitto/Dockerfile installs it.
    stamp_plugin: str = "/usr/lib/mqtt_operator_stamp.so"

    def __post_init__(self) -> None:
        for field in ("config_dir", "data_dir", "tls_dir", "dynsec_plugin", "stamp_plugin"):
            _path(f"BrokerPaths.{field}", getattr(self, field))

    @property
    def config_file(self) -> str:
        return f"{self.config_dir}/{CONFIG_FILE}"

    @property
    def dynsec_file(self) -> str:
        return f"{self.data_dir}/{DYNSEC_FILE}"

    def tls_mount(self, listener: str) -> str:
        """The folder the listener's TLS Secret is mounted at."""
        return f"{self.tls_dir}/{listener}"


IN_POD_PATHS = BrokerPaths()


@dataclass(frozen=True)
class _TlsConf:
    certfile: str
    keyfile: str
    cafile: str | None
    require_certificate: bool


@dataclass(frozen=True)
class _ListenerConf:
    name: str
    port: int
    protocol: str
    tls: _TlsConf | None


def _duration(field: str, value: str) -> float:
    one_line(field, value)
    try:
        return duration_seconds(value)
    except ValueError as err:
        raise ValueError(f"{field}: {err}") from None


def managed_key(option: str) -> bool:
    return any(fnmatch.fnmatchcase(option, pattern) for pattern in MANAGED_KEYS)


def check_extra(extra: str) -> str:
    """spec.config.extra without trailing blank lines, or a ValueError naming the first managed option."""
    if "\0" in extra:
        raise ValueError("spec.config.extra must not contain NUL characters")
    # splitlines() breaks at more characters than Mosquitto does; it can only refuse more, never less.
    for number, line in enumerate(extra.splitlines(), start=1):
        match = _OPTION_NAME.match(line)
        option = match.group(1) if match else ""
        if managed_key(option):
            raise ValueError(
                f"spec.config.extra sets {option} (line {number}), which the operator manages: "
                f"remove it and use the matching spec field (listeners, sessions, limits, persistence, "
                f"authorization) instead"
            )
    return extra.rstrip()


def _listener_conf(name: str, listener: Listener, paths: BrokerPaths) -> _ListenerConf:
    field = f"spec.listeners.{name}"
    port = checked_int(f"{field}.port", listener.port, 1, 65535)
    tls: _TlsConf | None = None
    if name == "mqtts" and listener.tls is None:
        raise ValueError(f"{field}.tls is required: name the TLS Secret in {field}.tls.secretName")
    if listener.tls is not None:
        folder = paths.tls_mount(name)
        require = listener.tls.require_client_certificate
        tls = _TlsConf(
            certfile=f"{folder}/{TLS_CERT}",
            keyfile=f"{folder}/{TLS_KEY}",
            # ca.crt is only asked of the Secret when client certificates are checked against it.
            cafile=f"{folder}/{TLS_CA}" if require else None,
            require_certificate=require,
        )
    return _ListenerConf(name=name, port=port, protocol=_PROTOCOLS[name], tls=tls)


def _session_expiry_hours(spec: MqttInstanceSpec) -> int:
    seconds = _duration("spec.sessions.expiry", spec.sessions.expiry)
    # Rounded up, and at least 1: Mosquitto refuses 0h, and no unit finer than an hour exists.
    return checked_int("spec.sessions.expiry", max(1, math.ceil(seconds / 3600)), 1, _INT32_MAX // 3600)


def _max_packet_size(spec: MqttInstanceSpec) -> int:
    field = "spec.limits.maxPacketSize"
    raw = spec.limits.max_packet_size
    if isinstance(raw, str):
        one_line(field, raw)
        try:
            raw = quantity_bytes(raw)
        except ValueError as err:
            raise ValueError(f"{field}: {err}") from None
    return checked_int(field, raw, 20, _MQTT_MAX_PACKET)


# plugin_opt_fields names of the stamps, in the plugin's order (broker-plugin/plugin.c).
_STAMP_FIELDS = (
    ("client_id", "clientid"),
    ("client_address", "address"),
    ("message_id", "messageid"),
    ("received_at", "time"),
)
_TOPIC_CHARS = re.compile(r"[\s+#\0]")


def stamp_fields(stamps: MessageStamps) -> str:
    """The plugin's `fields` option: the stamps switched on, comma-separated, or `none`."""
    return ",".join(option for attr, option in _STAMP_FIELDS if getattr(stamps, attr)) or "none"


def _events_topic(events: ClientEvents) -> str:
    field = "spec.clientEvents.topic"
    topic = one_line(field, events.topic)
    # Mosquitto splits option values at whitespace; a wildcard is no topic to publish on.
    if not topic or _TOPIC_CHARS.search(topic) or len(topic.encode()) > 65535:
        raise ValueError(
            f"{field} must be a topic name without whitespace or wildcards (+, #), not {topic!r}"
        )
    return topic


def render_mosquitto_conf(spec: MqttInstanceSpec, paths: BrokerPaths = IN_POD_PATHS) -> str:
    """The complete mosquitto.conf for `spec`; pure (the template is read from the package)."""
    listeners = spec.listeners.enabled()
    if not listeners:
        raise ValueError("spec.listeners needs at least one listener (mqtt, mqtts or websocket)")
    _duration("spec.persistence.autosaveInterval", spec.persistence.autosave_interval)
    _duration("spec.persistence.resubscribeWait", spec.persistence.resubscribe_wait)
    return render(
        "mosquitto.conf.j2",
        authorization=spec.authorization.enabled,
        # BrokerPaths checked its own values when it was made.
        dynsec_plugin=paths.dynsec_plugin,
        dynsec_file=paths.dynsec_file,
        stamp_plugin=paths.stamp_plugin,
        stamp_fields=stamp_fields(spec.message_stamps),
        admin_username=ADMIN_USERNAME,
        client_events=spec.client_events.enabled,
        events_topic=_events_topic(spec.client_events),
        data_dir=paths.data_dir,
        autosave_interval=checked_int(
            "spec.persistence.autosaveInterval", spec.persistence.autosave_seconds, 1, _INT32_MAX
        ),
        share_state_file=SHARE_STATE_FILE,
        share_exempt=EXPORTER_CLIENT_ID,
        resubscribe_wait=checked_int(
            "spec.persistence.resubscribeWait", spec.persistence.resubscribe_wait_seconds, 0, 86400
        ),
        session_expiry_hours=_session_expiry_hours(spec),
        max_queued_messages=checked_int(
            "spec.sessions.maxQueuedMessages", spec.sessions.max_queued_messages, 0, _INT32_MAX
        ),
        max_inflight_messages=checked_int(
            "spec.sessions.maxInflightMessages", spec.sessions.max_inflight_messages, 0, 65535
        ),
        max_packet_size=_max_packet_size(spec),
        # Only with the exporter, so that turning it on is the only change existing brokers see.
        sys_interval=(
            checked_int(
                "spec.monitoring.exporter.sysIntervalSeconds",
                spec.monitoring.exporter.sys_interval_seconds,
                1,
                3600,
            )
            if spec.monitoring.exporter.enabled
            else None
        ),
        max_connections=checked_int(
            "spec.limits.maxConnections", spec.limits.max_connections, -1, _INT32_MAX
        ),
        listeners=[_listener_conf(name, listener, paths) for name, listener in listeners.items()],
        extra=check_extra(spec.config.extra),
    )
