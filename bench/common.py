"""Shared by the benchmarks: the results file (bench/results.json) and process measurements."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results.json"


def machine() -> str:
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown cpu",
    )
    return f"{os.cpu_count()} cores ({model}), {mem_kib / 1024 / 1024:.1f} GiB"


def record(figures: dict[str, dict[str, Any]]) -> None:
    """Merge `figures` into bench/results.json (other benchmarks' figures are kept)."""
    current: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    merged = {**current.get("figures", {}), **figures}
    RESULTS.write_text(
        json.dumps(
            {
                "machine": machine(),
                "when": datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "figures": dict(sorted(merged.items())),
            },
            indent=2,
        )
        + "\n"
    )


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def drain(worker: Any, direction: str, total: int, warmup: int) -> dict[str, float]:
    """Time one worker process (a tests' WorkerProcess) from `warmup` confirmed messages of `direction`
    to `total`: rate, CPU per message, seconds and peak RSS over that window."""
    pid = worker.server.proc.pid

    def delivered() -> float:
        return float(worker.metric("bridge_delivered_total", direction=direction))

    deadline = time.monotonic() + 600
    while delivered() < warmup:
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)
    t0, d0, c0 = time.monotonic(), delivered(), cpu_seconds(pid)
    while (d := delivered()) < total:
        assert time.monotonic() < deadline, f"stuck at {d} of {total}"
        time.sleep(0.1)
    t1, c1 = time.monotonic(), cpu_seconds(pid)
    n = d - d0
    return {
        "rate": n / (t1 - t0),
        "cpu_us": (c1 - c0) / n * 1e6,
        "seconds": t1 - t0,
        "rss": peak_rss_mib(pid),
    }
