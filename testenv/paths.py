"""Where the installed components and the per-run state live."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTENV_DIR = Path(os.environ.get("TESTENV_DIR", REPO / ".testenv")).resolve()
BIN = TESTENV_DIR / "bin"
RUN = TESTENV_DIR / "run"


def versions() -> dict[str, str]:
    """The pinned component versions from hack/testenv/versions.env."""
    result: dict[str, str] = {}
    for line in (REPO / "hack/testenv/versions.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            result[key.strip()] = value.strip()
    return result


def tool(name: str) -> str:
    """The path of a test-environment binary; fails with the install command when it is missing."""
    candidate = BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(f"{name} is not installed: run `make testenv` (looked in {BIN} and on PATH)")


def run_dir() -> Path:
    """The folder under which every started component keeps its data and log."""
    RUN.mkdir(parents=True, exist_ok=True)
    return RUN


def monitoring_crds() -> Path:
    """The Prometheus Operator's ServiceMonitor, PodMonitor and PrometheusRule CRDs (YAML files)."""
    found = TESTENV_DIR / "crds" / "monitoring.coreos.com"
    if not any(found.glob("*.yaml")):
        raise FileNotFoundError(
            f"no monitoring CRDs in {found}: run `bash hack/testenv/build-go-tools.sh monitoring-crds`"
        )
    return found
