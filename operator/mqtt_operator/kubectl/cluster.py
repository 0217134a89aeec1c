"""What the plugin asks the cluster, through kubectl itself: the user's kubeconfig, context and
permissions are the ones kubectl uses, and so are its error messages."""

from __future__ import annotations

import base64
import json
import re
import select
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mqtt_operator.api.kinds import MQTT_INSTANCE
from mqtt_operator.resources.admin_secret import PASSWORD_KEY, USERNAME_KEY, admin_secret_name

_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+)")
PORT_FORWARD_TIMEOUT = 20.0


class PluginError(Exception):
    """A failure the user can act on; the message says what to do."""


@dataclass(frozen=True)
class Kubectl:
    """kubectl with the global flags the plugin was given (kubectl hands them on to a plugin)."""

    binary: str = "kubectl"
    flags: tuple[str, ...] = ()  # --context, --kubeconfig
    namespace: str | None = None

    def _ns(self, namespace: str | None = None) -> list[str]:
        ns = namespace or self.namespace
        return ["--namespace", ns] if ns else []

    def run(self, *args: str, namespace: str | None = None) -> str:
        try:
            proc = subprocess.run(
                [self.binary, *self.flags, *self._ns(namespace), *args],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except FileNotFoundError as err:
            raise PluginError(f"{self.binary} is not installed or not on PATH") from err
        if proc.returncode != 0:
            raise PluginError(proc.stderr.strip() or f"kubectl {' '.join(args)} failed ({proc.returncode})")
        return proc.stdout

    def get(self, resource: str, name: str | None = None, *, namespace: str | None = None) -> dict[str, Any]:
        args = ["get", resource, *([name] if name else []), "-o", "json"]
        result: dict[str, Any] = json.loads(self.run(*args, namespace=namespace))
        return result

    def current_namespace(self) -> str:
        if self.namespace:
            return self.namespace
        found = self.run("config", "view", "--minify", "-o", "jsonpath={..namespace}").strip()
        return found or "default"


@dataclass(frozen=True)
class Instance:
    """An MqttInstance as the plugin reaches it."""

    namespace: str
    name: str
    body: dict[str, Any] = field(repr=False)

    @property
    def mqtt_port(self) -> int:
        listeners = (self.body.get("spec") or {}).get("listeners") or {}
        mqtt = listeners.get("mqtt")
        if not mqtt:
            raise PluginError(
                f"MqttInstance {self.name!r} has no plain mqtt listener (spec.listeners.mqtt), which the "
                "plugin connects to; add one"
            )
        return int(mqtt.get("port", 1883))


@dataclass(frozen=True)
class Login:
    username: str
    password: str = field(repr=False)


def find_instance(kubectl: Kubectl, name: str) -> Instance:
    namespace = kubectl.current_namespace()
    try:
        body = kubectl.get(f"{MQTT_INSTANCE.plural}.mqtt-operator.io", name, namespace=namespace)
    except PluginError as err:
        if "NotFound" in str(err) or "not found" in str(err):
            raise PluginError(
                f"no MqttInstance {name!r} in namespace {namespace!r}: `kubectl get mqttinstances -A` "
                "lists them"
            ) from err
        raise
    return Instance(namespace, name, body)


def admin_login(kubectl: Kubectl, instance: Instance) -> Login:
    """The broker's admin account from `<instance>-admin`; the plugin needs `get` on that Secret."""
    secret_name = admin_secret_name(instance.name)
    try:
        secret = kubectl.get("secret", secret_name, namespace=instance.namespace)
    except PluginError as err:
        text = str(err)
        if "Forbidden" in text or "forbidden" in text:
            raise PluginError(
                f"you may not read Secret {secret_name!r} in namespace {instance.namespace!r}, which holds "
                "the broker's admin login the plugin uses: ask for `get` on it (an RBAC Role on "
                f"secrets/{secret_name})"
            ) from err
        if "NotFound" in text or "not found" in text:
            raise PluginError(
                f"Secret {secret_name!r} does not exist yet: is the operator running and MqttInstance "
                f"{instance.name!r} Ready? (`kubectl get mqi {instance.name}`)"
            ) from err
        raise
    data = secret.get("data") or {}
    try:
        return Login(
            base64.b64decode(data[USERNAME_KEY]).decode(), base64.b64decode(data[PASSWORD_KEY]).decode()
        )
    except (KeyError, ValueError) as err:
        raise PluginError(f"Secret {secret_name!r} has no usable {USERNAME_KEY}/{PASSWORD_KEY}") from err


@contextmanager
def port_forward(kubectl: Kubectl, instance: Instance) -> Iterator[tuple[str, int]]:
    """A local address forwarded through the API server to the instance's mqtt listener, for the block."""
    args: Sequence[str] = [
        kubectl.binary,
        *kubectl.flags,
        "--namespace",
        instance.namespace,
        "port-forward",
        f"service/{instance.name}",
        f":{instance.mqtt_port}",
        "--address",
        "127.0.0.1",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        ready, _, _ = select.select([proc.stdout], [], [], PORT_FORWARD_TIMEOUT)
        line = proc.stdout.readline() if ready else ""  # kubectl prints the chosen port first, or exits
        found = _FORWARDING.search(line)
        if found is None:
            proc.kill()
            why = proc.stderr.read().strip() or line.strip()
            raise PluginError(f"cannot port-forward to service/{instance.name}: {why}")
        yield "127.0.0.1", int(found.group(1))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
