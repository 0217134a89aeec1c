"""Shared by the benchmarks: the results file (bench/results.json) and process measurements."""

from __future__ import annotations

import json
import os
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
