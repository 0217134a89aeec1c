"""The runner: watches the API server and, in one loop, drives the controllers, the Pod workers, the
hosts file and the garbage collector until it is told to stop; then stops every Pod and removes its
network.

Its state folder holds `network.json` (the subnet and the host's address on it, written once the bridge
is up), `hosts` (the cluster's names), `pods/` (per Pod: volumes, container logs and PIDs) and `claims/`
(persistent volume claims, kept across Pods and runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from lightkube import AsyncClient, KubeConfig
from lightkube.core.resource import NamespacedResource
from lightkube.resources.apps_v1 import Deployment, StatefulSet
from lightkube.resources.core_v1 import Pod, Service
from lightkube.resources.discovery_v1 import EndpointSlice

from devcluster.api import ALL, Api, meta
from devcluster.controllers import Deployments, StatefulSets, collect_garbage, terminating
from devcluster.dns import HostsFile, entries
from devcluster.kubelet import NODE_NAME, Node, PodWorker
from devcluster.network import Network

log = logging.getLogger("devcluster")
GC_PERIOD = 5.0
# A full pass at least this often (probes and backoffs report through wake-ups, this is the safety net),
# and a short pause after a wake-up so that one pass covers a burst of changes.
RESYNC_PERIOD = 2.0
BATCH_DELAY = 0.05
# Longest a stopping runner waits for its Pods (their grace periods run in parallel).
SHUTDOWN_TIMEOUT = 45.0


class Runner:
    def __init__(
        self, kubeconfig: Path, namespaces: list[str] | None, state_dir: Path, subnet: str | None
    ) -> None:
        self.client = AsyncClient(config=KubeConfig.from_file(str(kubeconfig)), field_manager="devcluster")
        self.api = Api(self.client, namespaces)
        self.state_dir = state_dir
        self.subnet = subnet
        self.workers: dict[str, PodWorker] = {}
        self.written: dict[str, dict[str, Any]] = {}
        self.statefulsets = StatefulSets(self.api, state_dir)
        self.deployments = Deployments(self.api, state_dir)
        self._wake = asyncio.Event()
        self._last_gc = 0.0

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        network = Network.create(self.subnet)
        try:
            hosts = HostsFile(self.state_dir / "hosts")
            node = Node(self.api, network, self.state_dir, hosts.path, self.wake)
            await self._forget_previous_pods()
            (self.state_dir / "network.json").write_text(
                json.dumps(
                    {"subnet": str(network.subnet), "gateway": str(network.gateway), "bridge": network.bridge}
                )
            )
            log.info("runner up: Pods get addresses in %s, the host is %s", network.subnet, network.gateway)
            watches = [asyncio.create_task(self._watch(res, ns)) for res, ns in self._watched()]
            try:
                while not stop.is_set():
                    # Cleared before looking, so a change seen during the pass brings the next one at once.
                    self._wake.clear()
                    try:
                        await self._reconcile(node, hosts)
                    except Exception as err:
                        log.exception("reconcile failed (retrying): %s", err)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(_first(self._wake, stop), RESYNC_PERIOD)
                    await asyncio.sleep(BATCH_DELAY)  # let a burst of watch events arrive together
            finally:
                for task in watches:
                    task.cancel()
                await self._stop_pods()
        finally:
            network.delete()
            (self.state_dir / "network.json").unlink(missing_ok=True)
            shutil.rmtree(self.state_dir / "pods", ignore_errors=True)
            await self.client.close()
            log.info("runner stopped: every Pod stopped, bridge %s removed", network.bridge)

    def _watched(self) -> list[tuple[type[NamespacedResource], str]]:
        scopes = self.api.namespaces or (ALL,)
        local = [(res, ns) for res in (StatefulSet, Deployment, Pod) for ns in scopes]
        return [*local, (Service, ALL), (EndpointSlice, ALL)]

    async def _watch(self, res: type[NamespacedResource], namespace: str) -> None:
        """Only a trigger: any change wakes the loop, which lists what it needs."""
        while True:
            try:
                async for _ in self.client.watch(res, namespace=namespace):
                    self.wake()
            except asyncio.CancelledError:
                raise
            except Exception:  # the watch expired or the server restarted: watch again
                await asyncio.sleep(1)

    async def _forget_previous_pods(self) -> None:
        """Pods on this node from an earlier run have no processes any more: delete them, their
        controllers make new ones (as after a node restart)."""
        for pod in await self.api.list(Pod):
            if pod["spec"].get("nodeName") == NODE_NAME:
                await self.api.delete(Pod, meta(pod)["namespace"], meta(pod)["name"], grace=0)

    async def _reconcile(self, node: Node, hosts: HostsFile) -> None:
        pods = await self.api.list(Pod)
        sets = await self.api.list(StatefulSet)
        for sts in sets:
            await self.statefulsets.reconcile(sts, pods)
        self.statefulsets.forget_deleted(meta(s)["uid"] for s in sets)
        for dep in await self.api.list(Deployment):
            await self.deployments.reconcile(dep, pods)
        mine = [p for p in pods if p["spec"].get("nodeName") == NODE_NAME]
        await self._kubelet(node, mine)
        services = await self.api.list(Service, everywhere=True)
        slices = await self.api.list(EndpointSlice, everywhere=True)
        if hosts.update(entries(services, slices, mine)):
            log.info("hosts file updated")
        if time.monotonic() - self._last_gc >= GC_PERIOD:
            self._last_gc = time.monotonic()
            await collect_garbage(self.api)

    async def _kubelet(self, node: Node, pods: list[dict[str, Any]]) -> None:
        seen = set()
        for pod in pods:
            m = meta(pod)
            ns, name, uid = m["namespace"], m["name"], m["uid"]
            seen.add(uid)
            worker = self.workers.get(uid)
            if worker is None:
                if terminating(pod):
                    await self.api.delete(Pod, ns, name, grace=0)
                    continue
                log.info("pod %s/%s: starting", ns, name)
                worker = self.workers[uid] = PodWorker(node, pod)
            if terminating(pod):
                worker.stop(m.get("deletionGracePeriodSeconds"))
                if worker.done.is_set():
                    await self.api.delete(Pod, ns, name, grace=0)
                    log.info("pod %s/%s: stopped and deleted", ns, name)
            status = worker.status()
            if status != self.written.get(uid):
                await self.api.patch_status(Pod, ns, name, status)
                self.written[uid] = status
        for uid, worker in list(self.workers.items()):
            if uid not in seen:
                worker.stop()
                if worker.done.is_set():
                    del self.workers[uid]
                    self.written.pop(uid, None)
                    shutil.rmtree(worker.dir, ignore_errors=True)

    async def _stop_pods(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        waits = [w.done.wait() for w in self.workers.values()]
        if waits:
            log.info("stopping %d pod(s)", len(waits))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), SHUTDOWN_TIMEOUT)


async def _first(*events: asyncio.Event) -> None:
    tasks = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
