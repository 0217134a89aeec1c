"""The controller-manager's part: StatefulSets and Deployments turned into Pods, their status, and the
garbage collector for objects whose owners are gone.

Simplified where the operator does not care (docs/dev-cluster.md lists it): no ControllerRevision or
ReplicaSet objects (Pods are owned by the workload directly), no PersistentVolumeClaim objects (a claim
is a folder kept by the runner), `maxUnavailable`/`maxSurge` are not honoured.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightkube.codecs import resource_registry
from lightkube.resources.apps_v1 import Deployment, StatefulSet
from lightkube.resources.core_v1 import ConfigMap, Pod, Secret, Service

from devcluster.api import Api, meta
from devcluster.kubelet import NODE_NAME, now

log = logging.getLogger("devcluster")

REVISION_LABEL = "controller-revision-hash"
TEMPLATE_HASH_LABEL = "pod-template-hash"
LOGS_ANNOTATION = "devcluster.mqtt-operator.io/logs"


def template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def terminating(pod: dict[str, Any]) -> bool:
    return meta(pod).get("deletionTimestamp") is not None


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(
        ref.get("uid") == uid and ref.get("controller") for ref in meta(obj).get("ownerReferences") or []
    )


def _owner_ref(owner: dict[str, Any], kind: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "name": meta(owner)["name"],
        "uid": meta(owner)["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def new_pod(
    owner: dict[str, Any], kind: str, name: str, labels: dict[str, str], state_dir: Path
) -> dict[str, Any]:
    template = copy.deepcopy(owner["spec"]["template"])
    ns = meta(owner)["namespace"]
    tmeta = template.get("metadata") or {}
    spec = template["spec"]
    spec["nodeName"] = NODE_NAME
    annotations = {**(tmeta.get("annotations") or {}), LOGS_ANNOTATION: str(state_dir / "pods" / ns)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {**(tmeta.get("labels") or {}), **labels},
            "annotations": annotations,
            "ownerReferences": [_owner_ref(owner, kind)],
        },
        "spec": spec,
    }


def _status_changed(live: dict[str, Any], wanted: dict[str, Any]) -> bool:
    current = live.get("status") or {}
    return any(current.get(k) != v for k, v in wanted.items())


class StatefulSets:
    """Pods `<name>-<ordinal>` in order (or all at once with podManagementPolicy: Parallel), rolled from
    the highest ordinal down when the template changes, claims as kept folders."""

    def __init__(self, api: Api, state_dir: Path) -> None:
        self.api = api
        self.state_dir = state_dir
        self.known: dict[str, dict[str, Any]] = {}  # uid -> last seen StatefulSet

    async def reconcile(self, sts: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        m, spec = meta(sts), sts["spec"]
        ns, name, uid = m["namespace"], m["name"], m["uid"]
        self.known[uid] = sts
        if m.get("deletionTimestamp"):
            return
        revision = f"{name}-{template_hash(spec['template'])}"
        replicas = int(spec.get("replicas", 1))
        parallel = spec.get("podManagementPolicy") == "Parallel"
        owned = {meta(p)["name"]: p for p in pods if owned_by(p, uid)}
        ordinal = {pod_name: int(pod_name.rsplit("-", 1)[1]) for pod_name in owned}
        busy = any(terminating(p) for p in owned.values())

        # Scale down: highest ordinals first, one at a time unless Parallel.
        extra = sorted((o, n) for n, o in ordinal.items() if o >= replicas and not terminating(owned[n]))
        for _, pod_name in reversed(extra):
            if busy and not parallel:
                break
            await self.api.delete(Pod, ns, pod_name)
            busy = True
            self._forget_claims(sts, ordinal[pod_name], scaled=True)
        # Scale up: in order, each waiting for the previous to be Ready, unless Parallel.
        for i in range(replicas):
            pod_name = f"{name}-{i}"
            if pod_name in owned:
                if not parallel and not (pod_ready(owned[pod_name]) and not terminating(owned[pod_name])):
                    break
                continue
            if busy and not parallel:
                break
            await self.api.create(self._pod(sts, i, revision))
            log.info("statefulset %s/%s: created pod %s", ns, name, pod_name)
            if not parallel:
                break
        # Rolling update: the highest outdated Pod goes when the others are Ready (or it is not).
        strategy = spec.get("updateStrategy") or {}
        if strategy.get("type", "RollingUpdate") == "RollingUpdate" and not busy and len(owned) >= replicas:
            partition = int((strategy.get("rollingUpdate") or {}).get("partition", 0))
            outdated = sorted(
                (ordinal[n], n)
                for n, p in owned.items()
                if partition <= ordinal[n] < replicas and meta(p)["labels"].get(REVISION_LABEL) != revision
            )
            if outdated:
                _, victim = outdated[-1]
                others_ready = all(pod_ready(p) for n, p in owned.items() if n != victim)
                if others_ready or not pod_ready(owned[victim]):
                    log.info("statefulset %s/%s: replacing pod %s (new template)", ns, name, victim)
                    await self.api.delete(Pod, ns, victim)

        active = [p for p in owned.values() if not terminating(p)]
        updated = sum(1 for p in active if meta(p)["labels"].get(REVISION_LABEL) == revision)
        current = (sts.get("status") or {}).get("currentRevision") or revision
        if updated == replicas == len(active):
            current = revision
        ready = sum(1 for p in active if pod_ready(p))
        status = {
            "observedGeneration": m.get("generation"),
            "replicas": len(active),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "currentReplicas": sum(1 for p in active if meta(p)["labels"].get(REVISION_LABEL) == current),
            "updatedReplicas": updated,
            "currentRevision": current,
            "updateRevision": revision,
            "collisionCount": 0,
        }
        if _status_changed(sts, status):
            await self.api.patch_status(StatefulSet, ns, name, status)

    def _pod(self, sts: dict[str, Any], ordinal: int, revision: str) -> dict[str, Any]:
        name = f"{meta(sts)['name']}-{ordinal}"
        labels = {
            REVISION_LABEL: revision,
            "statefulset.kubernetes.io/pod-name": name,
            "apps.kubernetes.io/pod-index": str(ordinal),
        }
        pod = new_pod(sts, "StatefulSet", name, labels, self.state_dir)
        spec = pod["spec"]
        spec["hostname"] = name
        if sts["spec"].get("serviceName"):
            spec["subdomain"] = sts["spec"]["serviceName"]
        volumes = spec.setdefault("volumes", [])
        for claim in sts["spec"].get("volumeClaimTemplates") or []:
            claim_name = claim["metadata"]["name"]
            volumes[:] = [v for v in volumes if v["name"] != claim_name]
            volumes.append(
                {
                    "name": claim_name,
                    "persistentVolumeClaim": {"claimName": f"{claim_name}-{name}"},
                }
            )
        return pod

    def _forget_claims(self, sts: dict[str, Any], ordinal: int | None, scaled: bool) -> None:
        """Remove claim folders as persistentVolumeClaimRetentionPolicy says (Retain by default)."""
        policy = sts["spec"].get("persistentVolumeClaimRetentionPolicy") or {}
        if policy.get("whenScaled" if scaled else "whenDeleted", "Retain") != "Delete":
            return
        ns, name = meta(sts)["namespace"], meta(sts)["name"]
        for claim in sts["spec"].get("volumeClaimTemplates") or []:
            prefix = f"{claim['metadata']['name']}-{name}-"
            for folder in (self.state_dir / "claims" / ns).glob(f"{prefix}*"):
                if ordinal is None or folder.name == f"{prefix}{ordinal}":
                    shutil.rmtree(folder, ignore_errors=True)

    def forget_deleted(self, present: Iterable[str]) -> None:
        """StatefulSets that are gone: their claims follow whenDeleted."""
        for uid in set(self.known) - set(present):
            self._forget_claims(self.known.pop(uid), None, scaled=False)


class Deployments:
    """Pods `<name>-<template hash>-<random>`: new ones first, old ones removed as new ones are Ready
    (all at once with strategy Recreate)."""

    def __init__(self, api: Api, state_dir: Path) -> None:
        self.api = api
        self.state_dir = state_dir
        self._conditions: dict[str, dict[str, Any]] = {}

    async def reconcile(self, dep: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        m, spec = meta(dep), dep["spec"]
        ns, name, uid = m["namespace"], m["name"], m["uid"]
        if m.get("deletionTimestamp"):
            return
        revision = template_hash(spec["template"])
        replicas = int(spec.get("replicas", 1))
        active = [p for p in pods if owned_by(p, uid) and not terminating(p)]
        new = [p for p in active if meta(p)["labels"].get(TEMPLATE_HASH_LABEL) == revision]
        old = [p for p in active if p not in new]
        new_ready = sum(1 for p in new if pod_ready(p))
        recreate = (spec.get("strategy") or {}).get("type") == "Recreate"

        doomed: list[dict[str, Any]] = []
        if recreate:
            doomed = old
        else:
            # Keep `replicas` Pods ready throughout: an old Pod goes for each new one that is Ready.
            removable = len(old) + new_ready - replicas
            doomed = sorted(old, key=pod_ready)[: max(0, removable)] + [p for p in old if not pod_ready(p)]
        surplus = len(new) - replicas
        if surplus > 0:
            doomed += sorted(new, key=pod_ready)[:surplus]
        for pod in {meta(p)["name"]: p for p in doomed}.values():
            await self.api.delete(Pod, ns, meta(pod)["name"])
        if not (recreate and old):
            for _ in range(replicas - len(new)):
                pod_name = f"{name}-{revision}-{secrets.token_hex(3)[:5]}"
                await self.api.create(
                    new_pod(dep, "Deployment", pod_name, {TEMPLATE_HASH_LABEL: revision}, self.state_dir)
                )
                log.info("deployment %s/%s: created pod %s", ns, name, pod_name)

        ready = sum(1 for p in active if pod_ready(p))
        complete = len(new) == replicas and not old and new_ready == replicas
        status = {
            "observedGeneration": m.get("generation"),
            "replicas": len(active),
            "updatedReplicas": len(new),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(0, replicas - ready),
            "conditions": [
                self._condition(uid, "Available", ready >= replicas, "MinimumReplicasAvailable"),
                self._condition(
                    uid, "Progressing", True, "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated"
                ),
            ],
        }
        if _status_changed(dep, status):
            await self.api.patch_status(Deployment, ns, name, status)

    def _condition(self, uid: str, kind: str, ok: bool, reason: str) -> dict[str, Any]:
        status = "True" if ok else "False"
        key = f"{uid}/{kind}"
        previous = self._conditions.get(key)
        if previous is None or previous["status"] != status or previous["reason"] != reason:
            stamp = now()
            self._conditions[key] = {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": "",
                "lastUpdateTime": stamp,
                "lastTransitionTime": stamp
                if previous is None or previous["status"] != status
                else previous["lastTransitionTime"],
            }
        return self._conditions[key]


# The kinds whose orphans the garbage collector deletes (the ones the operator and the runner create).
COLLECTED = (Pod, StatefulSet, Deployment, Service, ConfigMap, Secret)


async def collect_garbage(api: Api) -> None:
    """Delete objects all of whose owners are gone (background propagation, as the real collector)."""
    exists: dict[str, bool] = {}
    for res in COLLECTED:
        for obj in await api.list(res):
            refs = meta(obj).get("ownerReferences") or []
            if not refs:
                continue
            ns = meta(obj)["namespace"]
            alive = False
            for ref in refs:
                if ref["uid"] not in exists:
                    exists[ref["uid"]] = await _owner_exists(api, ns, ref)
                alive = alive or exists[ref["uid"]]
            if not alive:
                log.info(
                    "garbage collector: deleting %s %s/%s (owner gone)", obj["kind"], ns, meta(obj)["name"]
                )
                await api.delete(res, ns, meta(obj)["name"])


async def _owner_exists(api: Api, namespace: str, ref: dict[str, Any]) -> bool:
    """False only when the owner is certainly gone (not found, or another object of that name)."""
    try:
        return await _lookup_owner(api, namespace, ref)
    except Exception:  # a cluster-scoped or unknown kind, the server busy: keep the dependent
        return True


async def _lookup_owner(api: Api, namespace: str, ref: dict[str, Any]) -> bool:
    try:
        res = resource_registry.load(ref["apiVersion"], ref["kind"])
    except Exception:
        res = None
    if res is None:
        await api.load_custom_kinds()
        try:
            res = resource_registry.load(ref["apiVersion"], ref["kind"])
        except Exception:
            res = None
    if res is None:
        return True  # a kind we cannot look up: keep the dependent
    live = await api.get(res, namespace, ref["name"])  # type: ignore[arg-type]
    return live is not None and meta(live).get("uid") == ref["uid"]
