"""Small process helpers of the runner: commands, children that die with it, signals."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (a preexec_fn, or for itself).

    Pause processes and containers get SIGKILL, so a runner that is killed leaves no Pod behind: their
    network namespaces, and the veth pairs in them, go with them."""
    _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def run(*argv: str) -> str:
    """Run a short command; its stdout, or a RuntimeError with its stderr."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


async def arun(*argv: str) -> str:
    """`run`, without blocking the event loop."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {err.decode().strip()}")
    return out.decode()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def send(pid: int | None, sig: int) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def first_child(pid: int) -> int | None:
    """The first child of `pid` (the container's PID 1 under `unshare --fork`), if it has one yet."""
    try:
        words = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(words[0]) if words else None
