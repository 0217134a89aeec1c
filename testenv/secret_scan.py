"""Search what a cluster shows for the passwords it keeps in Secrets: a password may be in a Secret and
in the process that uses it, nowhere else.

A `LeakScan` gathers the passwords (from the Secrets the operator generated, `<AuthUser>-credentials`
and `<MqttInstance>-admin`, labelled app.kubernetes.io/managed-by=mqtt-operator, and from the Secrets
AuthUsers name in passwordSecretRef) and the texts to search: container logs, Events, and every object
of the operator's six kinds, StatefulSets, Deployments, Pods, ConfigMaps and Services, whole (status,
annotations, spec: a password belongs in none of them). `hits()` then finds each password as text, as
base64 (at each of the three byte alignments, so it is found inside a longer base64 blob too) and
JSON-escaped.

`collect()` fills a scan from one namespace or from all of them through `kubectl`; the integration test
runs it after a realistic scenario, and the e2e session runs it on each test namespace before its
objects are deleted and over the whole node at the end (e2e/test_zz_no_secret_leaked.py).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mqtt_operator.api.kinds import ALL_KINDS, AUTH_USER, GROUP

MANAGED_BY = "app.kubernetes.io/managed-by=mqtt-operator"
GENERATED_KEYS = ("password",)
# Shorter values would be found in ordinary text (a user's test password "secret"); every password the
# operator generates has 43 characters.
MIN_LENGTH = 12
OUR_KINDS = tuple(f"{kind.plural}.{GROUP}" for kind in ALL_KINDS)
OBJECTS = (*OUR_KINDS, "statefulsets.apps", "deployments.apps", "pods", "configmaps", "services")


class Kubectl(Protocol):
    """ControlPlane.kubectl, or an e2e target's."""

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]: ...


@dataclass(frozen=True)
class Password:
    value: str
    origin: str  # e.g. "Secret ns/car-credentials key password"


@dataclass(frozen=True)
class Hit:
    password: str  # the origin of the password, never the password itself
    where: str
    form: str

    def __str__(self) -> str:
        return f"the password of {self.password} is in {self.where} ({self.form})"


def forms(value: str) -> dict[str, str]:
    """What to look for: the text, its base64 at each alignment (only the characters that depend on the
    password alone), and its JSON-escaped form when that differs."""
    raw = value.encode()
    found = {"text": value}
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        # Characters made (partly) of the padding bytes before, or of whatever follows, vary.
        start = (offset * 8 + 5) // 6
        end = ((offset + len(raw)) * 8) // 6
        found[f"base64+{offset}"] = encoded[start:end]
    escaped = json.dumps(value, ensure_ascii=False)[1:-1]
    if escaped != value:
        found["json"] = escaped
    return found


def strings(obj: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a JSON document (keys too, as `path{}`), with its path."""
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            yield f"{path}{{}}", str(key)
            yield from strings(value, f"{path}.{key}")
    elif isinstance(obj, list | tuple):
        for index, value in enumerate(obj):
            yield from strings(value, f"{path}[{index}]")
    elif isinstance(obj, str):
        yield path or ".", obj


def _decoded(value: str) -> str | None:
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def describe(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    where = f"{meta.get('namespace')}/{meta.get('name')}" if meta.get("namespace") else str(meta.get("name"))
    return f"{obj.get('kind', '?')} {where}"


@dataclass
class LeakScan:
    passwords: dict[str, Password] = field(default_factory=dict)
    too_short: list[str] = field(default_factory=list)  # origins of passwords not searched
    texts: list[tuple[str, str]] = field(default_factory=list)  # (where, text)
    objects: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (where, object)
    # What could not be read (a container that never started has no log): shown, not failed on, as
    # a Pod's containers may be gone by the time the scan asks.
    unread: list[str] = field(default_factory=list)
    # What failed to be collected at all: the scan is incomplete.
    errors: list[str] = field(default_factory=list)
    scopes: list[str] = field(default_factory=list)  # the namespaces collected ("*": all of them)

    def add_password(self, value: str, origin: str) -> None:
        if len(value) < MIN_LENGTH:
            self.too_short.append(origin)
        elif value not in self.passwords:
            self.passwords[value] = Password(value, origin)

    def add_secrets(self, secrets: Iterable[Mapping[str, Any]], keys: Mapping[tuple[str, str], str]) -> None:
        """The passwords of `secrets`: GENERATED_KEYS of the operator's own, and the key an AuthUser names
        of the others (`keys`: (namespace, Secret name) -> key)."""
        for secret in secrets:
            meta = secret.get("metadata") or {}
            ns, name = meta.get("namespace", ""), meta.get("name", "")
            ours = (meta.get("labels") or {}).get("app.kubernetes.io/managed-by") == "mqtt-operator"
            wanted = set(GENERATED_KEYS if ours else ())
            if (ns, name) in keys:
                wanted.add(keys[ns, name])
            for key in sorted(wanted):
                encoded = (secret.get("data") or {}).get(key)
                value = _decoded(encoded) if isinstance(encoded, str) else None
                if value:
                    self.add_password(value, f"Secret {ns}/{name} key {key}")

    def add_text(self, where: str, text: str) -> None:
        self.texts.append((where, text))

    def add_log_files(self, folder: Path) -> None:
        """Every file under `folder` (a node's /var/log/pods: the current and rotated container logs)."""
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            try:
                data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            except (OSError, EOFError, gzip.BadGzipFile) as err:
                self.unread.append(f"{path}: {err}")
                continue
            self.add_text(f"log file {path}", data.decode(errors="replace"))

    def add_object(self, obj: dict[str, Any]) -> None:
        self.objects.append((describe(obj), obj))

    def hits(self) -> list[Hit]:
        """Every place a password is found; one hit per password, place and form."""
        needles = [
            (pw, form, needle) for pw in self.passwords.values() for form, needle in forms(pw.value).items()
        ]
        found: list[Hit] = []
        for where, text in self.texts:
            found += [Hit(pw.origin, where, form) for pw, form, needle in needles if needle in text]
        for where, obj in self.objects:
            leaves = list(strings(obj))
            joined = "\n".join(value for _, value in leaves)
            for pw, form, needle in needles:
                if needle in joined:
                    paths = [path for path, value in leaves if needle in value]
                    found += [Hit(pw.origin, f"{where} {path}", form) for path in paths]
        return found

    def report(self) -> str:
        return "\n".join(str(hit) for hit in self.hits())


def _items(kubectl: Kubectl, resources: str, scope: list[str], *extra: str) -> list[dict[str, Any]]:
    proc = kubectl("get", resources, *scope, *extra, "-o", "json")
    items: list[dict[str, Any]] = json.loads(proc.stdout)["items"]
    return items


def _password_refs(users: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    refs: dict[tuple[str, str], str] = {}
    for user in users:
        ref = (user.get("spec") or {}).get("passwordSecretRef")
        if ref and ref.get("name"):
            refs[user["metadata"]["namespace"], ref["name"]] = ref.get("key") or "password"
    return refs


def _containers(pod: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(container, restarts) of every init, app and ephemeral container."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    restarts = {
        s["name"]: int(s.get("restartCount") or 0)
        for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses")
        for s in status.get(key) or []
    }
    names = [
        c["name"]
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in spec.get(key) or []
    ]
    return [(name, restarts.get(name, 0)) for name in names]


def collect_logs(scan: LeakScan, kubectl: Kubectl, pods: Iterable[Mapping[str, Any]]) -> None:
    """`kubectl logs` of every container of `pods`, and of its previous run when it restarted."""
    for pod in pods:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        for container, restarts in _containers(pod):
            runs: list[tuple[str, list[str]]] = [("", [])]
            if restarts:
                runs.append((" (previous)", ["--previous"]))
            for label, flags in runs:
                proc = kubectl("logs", "-n", ns, name, "-c", container, *flags, check=False)
                if proc.returncode == 0:
                    scan.add_text(f"log {ns}/{name}/{container}{label}", proc.stdout)
                else:
                    scan.unread.append(
                        f"kubectl logs {ns}/{name} -c {container}{label}: {proc.stderr.strip()}"
                    )


def collect(scan: LeakScan, kubectl: Kubectl, namespace: str | None = None, logs: bool = True) -> None:
    """The passwords, Events, objects and (with `logs`) container logs of `namespace`, or of every
    namespace when it is None."""
    scope = ["-n", namespace] if namespace else ["--all-namespaces"]
    scan.scopes.append(namespace or "*")
    users = _items(kubectl, f"{AUTH_USER.plural}.{GROUP}", scope)
    ours = _items(kubectl, "secrets", scope, "-l", MANAGED_BY)
    refs = _password_refs(users)
    # A Secret both labelled and named by an AuthUser comes twice: its passwords are kept once.
    referenced = [secret for ns, name in sorted(refs) if (secret := _secret(kubectl, ns, name)) is not None]
    scan.add_secrets([*ours, *referenced], refs)
    for event in _items(kubectl, "events", scope):
        scan.add_object(event)
    objects = _items(kubectl, ",".join(OBJECTS), scope)
    for obj in objects:
        scan.add_object(obj)
    if logs:
        collect_logs(scan, kubectl, [obj for obj in objects if obj.get("kind") == "Pod"])


def _secret(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any] | None:
    proc = kubectl("get", "secret", "-n", namespace, name, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None
