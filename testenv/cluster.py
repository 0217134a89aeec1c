"""Reading and writing one test namespace of the real API server, and waiting on what it says."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from testenv.kube import ControlPlane

# A namespace with these labels enforces the latest `restricted` Pod Security level (and warns and audits
# at it): the API server refuses any Pod below it.
RESTRICTED_LABELS = {
    f"pod-security.kubernetes.io/{mode}{suffix}": value
    for mode in ("enforce", "warn", "audit")
    for suffix, value in (("", "restricted"), ("-version", "latest"))
}


def restricted_namespace(name: str) -> dict[str, Any]:
    """The manifest of a namespace `name` with RESTRICTED_LABELS."""
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": RESTRICTED_LABELS}}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 45) -> Any:
    """Poll `check` until it returns something truthy and return it; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


@dataclass
class Namespace:
    cp: ControlPlane
    namespace: str

    def apply(self, manifest: dict[str, Any]) -> None:
        self.cp.kubectl("apply", "-n", self.namespace, "-f", "-", input=yaml.safe_dump(manifest))

    def patch(self, resource: str, name: str, patch: dict[str, Any]) -> None:
        self.cp.kubectl(
            "patch", "-n", self.namespace, resource, name, "--type=merge", "-p", json.dumps(patch)
        )

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        proc = self.cp.kubectl("get", "-n", self.namespace, resource, name, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def condition(self, resource: str, name: str, type_: str = "Ready") -> dict[str, Any] | None:
        conds = ((self.get(resource, name) or {}).get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == type_), None)

    def wait_condition(
        self,
        resource: str,
        name: str,
        status: str = "True",
        reason: str | None = None,
        type_: str = "Ready",
        timeout: float = 45,
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            cond = self.condition(resource, name, type_)
            ok = cond is not None and cond["status"] == status and reason in (None, cond["reason"])
            return cond if ok else None

        result: dict[str, Any] = wait_for(
            f"{resource}/{name} {type_}={status} {reason or ''}", check, timeout
        )
        return result

    def secret(self, name: str, key: str = "password") -> str:
        obj = wait_for(f"Secret {name}", lambda: self.get("secret", name))
        return base64.b64decode(obj["data"][key]).decode()
