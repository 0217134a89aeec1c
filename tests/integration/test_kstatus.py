"""kstatus (sigs.k8s.io/cli-utils: how Flux, kpt and `kubectl wait`-like tools read an object's status)
on real objects the operator wrote: the testdata test_argocd_health.py captured for every kind and state,
and (from that test) the live objects themselves.

What kstatus should say, by state (docs/argocd.md, "Flux and kstatus"):
- Ready at the observed generation: Current; a spec that can never work (Stalled=True): Failed;
- a cause the operator waits out (Reconciling=True) or a generation not observed yet: InProgress;
- deleting: Terminating;
- paused by the annotation: Current (the last status stands);
- kstatus's own rules, stated so a change of them shows up here: an object with no status at all yet is
  Current, and one at rest with Ready=False (state paused, replicas 0, disabled) is InProgress.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hack import argocd_health

from mqtt_operator.api.kinds import ALL_KINDS
from testenv.paths import tool

pytestmark = pytest.mark.integration


def kstatus(obj: dict[str, Any]) -> dict[str, str]:
    """kstatus's answer for `obj`: {"status": "Current", "InProgress", "Failed" ..., "message": ...}."""
    proc = subprocess.run(
        [tool("kstatus"), "-"], input=json.dumps(obj), capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    answer: dict[str, str] = json.loads(proc.stdout)
    return answer


def expected_kstatus(case: str) -> str:
    """What kstatus should say of the object of testdata case `case` (its file name without .yaml)."""
    exact = {
        "healthy": "Current",
        "progressing_deleting": "Terminating",
        "progressing_generationNotObserved": "InProgress",
        "progressing_noStatus": "Current",
        "suspended_annotation": "Current",
    }
    if case in exact:
        return exact[case]
    prefix = case.split("_", 1)[0]
    return {"degraded": "Failed", "progressing": "InProgress", "suspended": "InProgress"}[prefix]


def testdata() -> list[Path]:
    return sorted(p for k in ALL_KINDS for p in (argocd_health.kind_dir(k.kind) / "testdata").glob("*.yaml"))


@pytest.mark.parametrize("path", testdata(), ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_kstatus_of_each_captured_state(path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    got = kstatus(obj)
    assert got["status"] == expected_kstatus(path.stem), got
    if got["status"] == "Failed":
        # Flux shows this message: it must be the operator's own, which says what to change.
        stalled = next(c for c in obj["status"]["conditions"] if c["type"] == "Stalled")
        assert got["message"] == stalled["message"]


def test_every_kind_has_a_current_an_in_progress_and_a_terminating_case() -> None:
    for kind in ALL_KINDS:
        cases = {p.stem for p in (argocd_health.kind_dir(kind.kind) / "testdata").glob("*.yaml")}
        assert {"healthy", "progressing_generationNotObserved", "progressing_deleting"} <= cases, kind.kind
