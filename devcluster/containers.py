"""From a Pod's spec to what one container start needs: its volumes on disk, its environment, its user,
and the spec file devcluster.sandbox reads.

Errors a Pod's author can cause (a missing Secret, an unsupported volume type) are ConfigError, shown as
the container's `CreateContainerConfigError` and retried, as a kubelet does.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devcluster.api import Api
from devcluster.images import IMAGE_BIN, Image, command_line, program_for


class ConfigError(Exception):
    """The container cannot be configured yet (kubelet: CreateContainerConfigError)."""


@dataclass(frozen=True)
class PodContext:
    """What every container of one Pod shares."""

    pod: dict[str, Any]
    dir: Path  # the Pod's folder on the host
    claims: Path  # where persistent volume claims live (kept beyond the Pod)
    pod_ip: str
    host_ip: str
    hosts_file: Path

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    @property
    def security(self) -> dict[str, Any]:
        return dict(self.pod["spec"].get("securityContext") or {})

    @property
    def fs_group(self) -> int | None:
        value = self.security.get("fsGroup")
        return int(value) if value is not None else None


def _chgrp(path: Path, group: int | None) -> None:
    if group is not None:
        os.chown(path, -1, group)


def _write_files(folder: Path, data: dict[str, bytes], source: dict[str, Any], fs_group: int | None) -> None:
    """A configMap or secret volume: each key (or each listed item) as a file, stale ones removed."""
    items = source.get("items")
    wanted = {i["key"]: (i["path"], i.get("mode")) for i in items} if items else {k: (k, None) for k in data}
    default_mode = int(source.get("defaultMode", 0o644))
    written = set()
    for key, (rel, mode) in wanted.items():
        if key not in data:
            if source.get("optional"):
                continue
            raise ConfigError(f"key {key!r} not found in {source.get('name') or source.get('secretName')}")
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data[key])
        file_mode = int(mode) if mode is not None else default_mode
        if fs_group is not None:
            file_mode |= 0o440  # as the kubelet does for read-only volumes with an fsGroup
        os.chmod(tmp, file_mode)
        _chgrp(tmp, fs_group)
        os.replace(tmp, target)
        written.add(rel.split("/", 1)[0])
    for entry in folder.iterdir():
        if entry.name not in written:
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def _writable_dir(path: Path, fs_group: int | None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o2777 if fs_group is not None else 0o777)
    _chgrp(path, fs_group)
    return path


async def volumes(api: Api, ctx: PodContext) -> dict[str, Path]:
    """Volume name -> its folder on the host, materialized now (configMap and secret contents are
    written again at every container start, so a restart sees the current data)."""
    result: dict[str, Path] = {}
    base = ctx.dir / "volumes"
    for volume in ctx.pod["spec"].get("volumes") or []:
        name = volume["name"]
        if "emptyDir" in volume:
            result[name] = _writable_dir(base / name, ctx.fs_group)
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            result[name] = _writable_dir(ctx.claims / ctx.namespace / claim, ctx.fs_group)
        elif "configMap" in volume or "secret" in volume:
            kind, source = (
                ("Secret", volume["secret"]) if "secret" in volume else ("ConfigMap", volume["configMap"])
            )
            ref = source.get("secretName") or source.get("name")
            data = await api.data(kind, ctx.namespace, ref)
            if data is None and not source.get("optional"):
                raise ConfigError(f'{kind.lower()} "{ref}" not found (volume {name})')
            folder = base / name
            folder.mkdir(parents=True, exist_ok=True)
            _write_files(folder, data or {}, source, ctx.fs_group)
            result[name] = folder
        else:
            kinds = ", ".join(k for k in volume if k != "name")
            raise ConfigError(f"volume {name}: {kinds} volumes are not supported by devcluster")
    return result


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) references: replaced when VAR is defined, `$$` escapes a `$`."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(sub, text)


def _field(ctx: PodContext, path: str) -> str:
    meta, spec = ctx.pod["metadata"], ctx.pod["spec"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": ctx.pod_ip,
        "status.podIPs": ctx.pod_ip,
        "status.hostIP": ctx.host_ip,
        "status.hostIPs": ctx.host_ip,
    }
    if path in simple:
        return str(simple[path])
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise ConfigError(f"fieldRef {path!r} is not supported by devcluster")


async def _key(api: Api, ctx: PodContext, kind: str, ref: dict[str, Any]) -> str | None:
    data = await api.data(kind, ctx.namespace, ref["name"])
    if data is None or ref["key"] not in data:
        if ref.get("optional"):
            return None
        what = f'{kind.lower()} "{ref["name"]}"'
        raise ConfigError(f"{what} not found" if data is None else f"key {ref['key']!r} not found in {what}")
    return data[ref["key"]].decode()


async def environment(api: Api, ctx: PodContext, container: dict[str, Any], image: Image) -> dict[str, str]:
    """The image's ENV, then envFrom, then env (with valueFrom read from the API server now)."""
    env = {
        "PATH": IMAGE_BIN,
        "HOME": "/",
        "HOSTNAME": ctx.pod["spec"].get("hostname") or ctx.pod["metadata"]["name"],
    }
    env.update(image.env)
    for source in container.get("envFrom") or []:
        kind = "Secret" if "secretRef" in source else "ConfigMap"
        ref = source.get("secretRef") or source.get("configMapRef") or {}
        data = await api.data(kind, ctx.namespace, ref["name"])
        if data is None and not ref.get("optional"):
            raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found (envFrom)')
        for key, raw in (data or {}).items():
            env[source.get("prefix", "") + key] = raw.decode()
    for item in container.get("env") or []:
        source = item.get("valueFrom")
        value: str | None
        if source is None:
            value = expand(str(item.get("value", "")), env)
        elif "secretKeyRef" in source:
            value = await _key(api, ctx, "Secret", source["secretKeyRef"])
        elif "configMapKeyRef" in source:
            value = await _key(api, ctx, "ConfigMap", source["configMapKeyRef"])
        elif "fieldRef" in source:
            value = _field(ctx, source["fieldRef"]["fieldPath"])
        else:
            raise ConfigError(f"env {item['name']}: {', '.join(source)} is not supported by devcluster")
        if value is not None:
            env[item["name"]] = value
    return env


def _user(
    ctx: PodContext, container: dict[str, Any], image: Image
) -> tuple[int | None, int | None, list[int]]:
    """uid, gid and supplementary groups: the container's securityContext over the Pod's over the image."""
    own = container.get("securityContext") or {}
    pod = ctx.security
    uid = own.get("runAsUser", pod.get("runAsUser"))
    gid = own.get("runAsGroup", pod.get("runAsGroup"))
    if uid is None and image.user is not None:
        uid, gid = image.user if gid is None else (image.user[0], gid)
    groups = [int(g) for g in pod.get("supplementalGroups") or []]
    if ctx.fs_group is not None:
        groups.insert(0, ctx.fs_group)
    return (int(uid) if uid is not None else None, int(gid) if gid is not None else None, groups)


async def sandbox_spec(
    api: Api, ctx: PodContext, container: dict[str, Any], image: Image, scratch: Path
) -> dict[str, Any]:
    """Everything devcluster.sandbox needs to start `container`; ConfigError or LookupError if it cannot."""
    mounted = await volumes(api, ctx)
    env = await environment(api, ctx, container, image)
    argv = [expand(word, env) for word in command_line(image, container)]
    if not argv:
        raise ConfigError(f"container {container['name']}: no command, and image {image.name} has none")
    executable = program_for(image, argv[0])
    mounts = []
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in mounted:
            raise ConfigError(f"volumeMount {mount['name']!r} names no volume of the Pod")
        source = mounted[mount["name"]]
        if mount.get("subPath"):
            source = source / mount["subPath"]
            if not source.exists():
                source.mkdir(parents=True)
        mounts.append(
            {"source": str(source), "target": mount["mountPath"], "readOnly": bool(mount.get("readOnly"))}
        )
    resolv = ctx.dir / "resolv.conf"
    if not resolv.exists():
        # No name server: names resolve from /etc/hosts only, and a miss fails at once.
        ns = ctx.namespace
        resolv.write_text(
            f"search {ns}.svc.cluster.local svc.cluster.local cluster.local\n"
            "options ndots:5 timeout:1 attempts:1\n"
        )
    mounts += [
        {"source": str(ctx.hosts_file), "target": "/etc/hosts", "readOnly": True},
        {"source": str(resolv), "target": "/etc/resolv.conf", "readOnly": True},
    ]
    uid, gid, groups = _user(ctx, container, image)
    security = container.get("securityContext") or {}
    return {
        "scratch": str(scratch),
        "files": dict(image.files),
        "programs": dict(image.programs),
        "host_paths": list(image.host_paths),
        "executable": executable,
        "argv": argv,
        "env": env,
        "workingDir": container.get("workingDir") or "/",
        "mounts": mounts,
        "uid": uid,
        "gid": gid,
        "groups": groups,
        "readOnlyRoot": bool(security.get("readOnlyRootFilesystem")),
        "noNewPrivileges": security.get("allowPrivilegeEscalation") is False,
    }
