"""The first program of every container: builds the container's filesystem view, then becomes the program.

Started by the runner as root, already inside the Pod's network and UTS namespaces and in a new mount and
PID namespace of its own (`nsenter ... unshare --mount --pid --fork`), so nothing done here is seen by the
host. The root filesystem is an overlay of the host's `/` with a private writable layer on tmpfs; the
image's programs and files are linked into it, the Pod's volumes are bind-mounted at their exact
mountPaths, /etc/hosts and /etc/resolv.conf are the runner's, and then: chroot, drop to the Pod's user,
exec. The container's program runs as PID 1 of its namespace, as under a container runtime.

Usage: python -m devcluster.sandbox SPEC.json (written by devcluster.containers). Standard library only:
it starts for every container.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

# Bound from the host as they are; /proc is mounted fresh (the container's own PID namespace), /tmp and
# /run are the image's (here: the overlay's), not the host's.
_HOST_MOUNTS = ("/dev", "/sys")
_NOT_SHARED = {"/proc", "/sys", "/dev", "/tmp", "/run"}  # noqa: S108 - names, not files used
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
# Where the image's programs are linked; PATH inside the container, unless the Pod sets its own.
IMAGE_BIN = "/.devcluster/bin"


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise OSError(f"mount {' '.join(args)}: {proc.stderr.strip()}")


def inside(root: Path, path: str) -> Path:
    """`path` as the container sees it, under `root`: symlinks on the way are followed as if `root` were
    `/` (never out to the host's files); the last component is not followed."""
    current = root
    parts = [p for p in path.split("/") if p]
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in (".", ""):
            continue
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if parts and candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise OSError(f"too many symbolic links in {path}")
            link = os.readlink(candidate)
            if link.startswith("/"):
                current = root
            parts = [p for p in link.split("/") if p] + parts
            continue
        current = candidate
    return current


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return field.encode().decode("unicode_escape")


def extra_host_mounts() -> list[str]:
    """Top-level mounts of the host besides the system ones (e.g. a separate /home holding the
    repository and its .venv): the overlay of `/` does not show what is mounted on it."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    fields = [line.split(" ") for line in lines]
    root_ids = {f[0] for f in fields if _unescape(f[4]) == "/"}
    result = []
    for f in fields:
        point = _unescape(f[4])
        if f[1] in root_ids and point.count("/") == 1 and point != "/" and point not in _NOT_SHARED:
            result.append(point)
    return sorted(set(result))


def _make_reachable(root: Path, program: str) -> None:
    """Let any user traverse the folders leading to `program` (in the private layer only): an image's
    programs are world-executable, a host's may sit under a private home (/root/.pyenv/...)."""
    for folder in reversed(Path(program).parents):
        if str(folder) == "/":
            continue
        view = inside(root, str(folder))
        if not view.exists():
            return  # not visible (yet): a host path bound later is made reachable then
        mode = view.stat().st_mode
        if not mode & 0o001:
            os.chmod(view, (mode & 0o7777) | 0o001)


def _interpreter(program: str) -> str | None:
    with open(program, "rb") as f:
        head = f.read(256)
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    return os.path.realpath(words[0].decode()) if words else None


def build_root(spec: dict[str, Any]) -> Path:
    scratch = Path(spec["scratch"])
    scratch.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", "mode=0755", "devcluster", str(scratch))
    for sub in ("upper", "work", "root"):
        (scratch / sub).mkdir()
    root = scratch / "root"
    _mount(
        "-t",
        "overlay",
        "-o",
        f"lowerdir=/,upperdir={scratch / 'upper'},workdir={scratch / 'work'}",
        "devcluster-root",
        str(root),
    )
    # A recursive bind of a host mount holding the scratch folder must not copy the new root into itself.
    _mount("--make-unbindable", str(scratch))
    _mount("-t", "proc", "proc", str(root / "proc"))
    for point in (*_HOST_MOUNTS, *extra_host_mounts()):
        _mount("--rbind", point, str(inside(root, point)))

    for path, local in spec["files"].items():
        target = inside(root, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        target.symlink_to(local)
    bin_dir = inside(root, IMAGE_BIN)
    bin_dir.mkdir(parents=True)
    for name, local in spec["programs"].items():
        (bin_dir / name).symlink_to(local)
    if spec.get("uid"):
        executable = os.path.realpath(spec["executable"])
        for program in (executable, _interpreter(executable)):
            if program:
                _make_reachable(root, program)

    for mount in spec["mounts"]:
        source = Path(mount["source"])
        target = inside(root, mount["target"])
        if target.is_symlink():
            target.unlink()
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
        _mount("--bind", str(source), str(target))
        if mount.get("readOnly"):
            _mount("-o", "remount,bind,ro", str(target))
    for host_path in spec.get("host_paths", ()):
        # After the volumes: a Pod's emptyDir on /tmp must not hide a repository cloned under /tmp.
        target = inside(root, host_path)
        if target.is_dir() and any(target.iterdir()):
            continue  # already visible through the overlay or a host mount
        target.mkdir(parents=True, exist_ok=True)
        _mount("--rbind", host_path, str(target))
        _mount("-o", "remount,bind,ro", str(target))
    if spec.get("uid") and spec.get("host_paths"):
        executable = os.path.realpath(spec["executable"])
        for program in (executable, _interpreter(executable)):
            if program:
                _make_reachable(root, program)
    if spec.get("readOnlyRoot"):
        _mount("-o", "remount,bind,ro", str(root))
    return root


def become(spec: dict[str, Any]) -> None:
    """Drop to the container's user and groups; no new privileges if it asked."""
    uid, gid, groups = spec.get("uid"), spec.get("gid"), spec.get("groups") or []
    if uid is not None or gid is not None or groups:
        os.setgroups(groups)
        os.setgid(gid if gid is not None else 0)
    if spec.get("noNewPrivileges"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if uid is not None:
        os.setuid(uid)
    # A change of user clears the parent-death signal `unshare --kill-child` set: without it again, the
    # container would outlive a runner that was killed.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    try:
        root = build_root(spec)
        os.chroot(root)
        os.chdir(spec.get("workingDir") or "/")
        become(spec)
    except OSError as err:
        print(f"devcluster: cannot set up the container: {err}", file=sys.stderr, flush=True)
        return 126
    try:
        os.execve(spec["executable"], spec["argv"], spec["env"])  # noqa: S606 - the container's own program
    except OSError as err:
        print(f"devcluster: cannot run {spec['argv'][0]}: {err}", file=sys.stderr, flush=True)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv))
