"""The operator itself as a child process (`python -m mqtt_operator run`), as a cluster would run it."""

from __future__ import annotations

import json
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testenv.kube import ControlPlane
from testenv.paths import run_dir
from testenv.process import Server, free_port


@dataclass
class OperatorProcess:
    control_plane: ControlPlane
    namespaces: tuple[str, ...]
    log_level: str = "debug"
    extra_args: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="operator-", dir=run_dir())))
    health_port: int = 0
    metrics_port: int = 0
    server: Server | None = None

    def start(self) -> OperatorProcess:
        self.health_port = free_port()
        self.metrics_port = free_port()
        argv = [
            sys.executable,
            "-m",
            "mqtt_operator",
            "run",
            "--log-level",
            self.log_level,
            "--health-port",
            str(self.health_port),
            "--metrics-port",
            str(self.metrics_port),
        ]
        for ns in self.namespaces:
            argv += ["--namespace", ns]
        argv += self.extra_args
        self.server = Server(
            "mqtt-operator",
            argv,
            self.root / "operator.log",
            env={"KUBECONFIG": str(self.control_plane.kubeconfig), **self.extra_env},
        )
        self.server.start()
        self.server.wait_until(self._healthy, 60, "healthy")
        return self

    def _healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.health_port}/healthz"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)

    def metrics_text(self) -> str:
        """The operator's Prometheus /metrics, as a scraper sees it."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def log_text(self) -> str:
        return (self.root / "operator.log").read_text(errors="replace")

    def log_entries(self) -> list[dict[str, Any]]:
        """Every JSON log line; a line that is not JSON fails loudly (the operator logs only JSON)."""
        return [json.loads(line) for line in self.log_text().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
