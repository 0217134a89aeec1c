"""The image table: which local programs stand in for a container image.

An image is matched by the last component of its repository, whatever the registry, path, tag or
digest (`docker.io/library/eclipse-mosquitto:2.0.22` -> `eclipse-mosquitto`). A container's command is
looked up by its base name in the image's programs; inside the Pod, PATH holds only those programs, so
a script can call nothing else the image would not have. An image that is not here fails its Pod.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devcluster.sandbox import IMAGE_BIN
from testenv.mosquitto import dynsec_plugin
from testenv.paths import REPO

__all__ = ["IMAGE_BIN", "TABLE", "Image", "UnknownImage", "command_line", "lookup", "program_for"]


@dataclass(frozen=True)
class Image:
    name: str
    # command name -> the local program (resolved when a container starts, so a missing install fails
    # that container, not the runner)
    programs: Mapping[str, str]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    # USER of the image as (uid, gid); None: root.
    user: tuple[int, int] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    # path inside the image -> local file (linked into the Pod's root filesystem)
    files: Mapping[str, str] = field(default_factory=dict)
    # Host folders the container must see at the same path whatever the Pod mounts (e.g. a repository
    # cloned under /tmp, which a Pod's own /tmp would hide): bound read-only after the volumes.
    host_paths: tuple[str, ...] = ()


def _which(name: str, *fallbacks: str) -> str:
    found = shutil.which(name) or next((f for f in fallbacks if Path(f).exists()), None)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed: run `make testenv`")
    return found


def _mosquitto() -> Image:
    tools = ("mosquitto_ctrl", "mosquitto_passwd", "mosquitto_pub", "mosquitto_sub")
    return Image(
        name="eclipse-mosquitto",
        programs={
            "mosquitto": _which("mosquitto", "/usr/sbin/mosquitto"),
            **{tool: _which(tool) for tool in tools},
            "sh": "/bin/sh",
        },
        # The image's entrypoint only chowns /mosquitto before exec'ing CMD; it is left out.
        cmd=("/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"),
        files={"/usr/lib/mosquitto_dynamic_security.so": dynsec_plugin()},
    )


def _operator() -> Image:
    venv_program = REPO / ".venv" / "bin" / "mqtt-operator"
    program = str(venv_program) if venv_program.exists() else _which("mqtt-operator")
    # As in the Dockerfile: USER 65532, ENTRYPOINT mqtt-operator, CMD run.
    return Image(
        name="mqtt-operator",
        programs={"mqtt-operator": program},
        entrypoint=("mqtt-operator",),
        cmd=("run",),
        user=(65532, 65532),
        env={"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"},
        # The program is this repo's .venv, with the package installed in editable mode from it.
        host_paths=(str(REPO),),
    )


# The table itself: image name -> how to build its entry (lazily: a missing binary fails only its Pods).
TABLE = {"eclipse-mosquitto": _mosquitto, "mqtt-operator": _operator}


def image_name(reference: str) -> str:
    """`registry:5000/org/name:tag@sha256:...` -> `name`."""
    without_digest = reference.split("@", 1)[0]
    last = without_digest.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


class UnknownImage(LookupError):
    """No local program stands in for this image: the Pod fails with this message."""


def lookup(reference: str) -> Image:
    build = TABLE.get(image_name(reference))
    if build is None:
        raise UnknownImage(
            f"image {reference!r} has no local stand-in: devcluster runs only "
            f"{', '.join(sorted(TABLE))} (see docs/dev-cluster.md)"
        )
    try:
        return build()
    except FileNotFoundError as err:
        raise UnknownImage(f"image {reference!r}: {err}") from None


def command_line(image: Image, container: Mapping[str, Any]) -> list[str]:
    """What the container runs, by Kubernetes' rules: `command` replaces ENTRYPOINT (and drops CMD),
    `args` replaces CMD."""
    command = [str(a) for a in container.get("command") or ()]
    args = [str(a) for a in container.get("args") or ()]
    if command:
        return command + args
    return list(image.entrypoint) + (args or list(image.cmd))


def program_for(image: Image, argv0: str) -> str:
    """The local program for the command's first word, looked up by base name; LookupError if none."""
    name = argv0.rsplit("/", 1)[-1]
    program = image.programs.get(name)
    if program is None:
        raise LookupError(
            f"{argv0!r} is not a program of image {image.name} in devcluster's table "
            f"(it has {', '.join(sorted(image.programs))})"
        )
    return program
