"""The kubelet's part for one Pod: its network, its init containers, its containers kept running with
probes and restart backoff, its termination, and the Pod status that says all of that.

A container runs as `nsenter` (into the Pod's network and UTS namespaces) + `unshare --mount --pid --fork`
+ devcluster.sandbox, which execs the image's program as PID 1 of the container's PID namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devcluster.api import Api
from devcluster.containers import ConfigError, PodContext, sandbox_spec
from devcluster.images import Image, UnknownImage, lookup
from devcluster.network import Network, PodNetwork
from devcluster.probes import Probe
from devcluster.procs import die_with_parent, first_child, send
from testenv.paths import REPO

log = logging.getLogger("devcluster")

NODE_NAME = "devcluster"
# Seconds before the n-th consecutive restart (the first is immediate); a container that ran for
# BACKOFF_RESET seconds starts again from the beginning. Shorter than a kubelet's 10 s .. 5 min.
BACKOFF = (0, 2, 5, 10, 20, 40)
BACKOFF_RESET = 60.0


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Container:
    spec: dict[str, Any]
    init: bool
    restart_count: int = 0
    crashes: int = 0
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "PodInitializing"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    started: bool = False  # the startup probe passed (or there is none)
    ready: bool = False
    process: asyncio.subprocess.Process | None = None
    pid: int | None = None  # host PID of the container's PID 1

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def waiting(self, reason: str, message: str = "") -> None:
        self.state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}

    def status(self, pod_uid: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.spec["image"],
            "imageID": "",
            "containerID": f"devcluster://{pod_uid[:8]}-{self.name}-{self.restart_count}",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }


@dataclass
class Node:
    """What every Pod worker shares: the API, the network, the runner's folders, a way to say 'look again'."""

    api: Api
    network: Network
    state_dir: Path
    hosts_file: Path
    wake: Callable[[], None]


class PodWorker:
    def __init__(self, node: Node, pod: dict[str, Any]) -> None:
        self.node = node
        self.pod = pod
        meta = pod["metadata"]
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.dir = node.state_dir / "pods" / self.namespace / f"{self.name}-{self.uid[:8]}"
        spec = pod["spec"]
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.init_containers = [Container(c, init=True) for c in spec.get("initContainers") or []]
        self.containers = [Container(c, init=False) for c in spec["containers"]]
        self.net: PodNetwork | None = None
        self.failure: tuple[str, str] | None = None
        self.initialized = False
        self.start_time = now()
        self.grace = float(spec.get("terminationGracePeriodSeconds", 30))
        self.stopping = asyncio.Event()
        self.done = asyncio.Event()
        self._since: dict[str, tuple[str, str]] = {}
        self._images: dict[str, Image] = {}
        self._killing: set[asyncio.Task[None]] = set()
        self.task = asyncio.create_task(self._run(), name=f"pod {self.namespace}/{self.name}")

    # -- lifecycle -----------------------------------------------------------------------------------

    def stop(self, grace: float | None = None) -> None:
        """Begin terminating: SIGTERM to every container, SIGKILL after the grace period."""
        if self.stopping.is_set():
            return
        if grace is not None:
            self.grace = grace
        self.stopping.set()
        for c in self.init_containers + self.containers:
            if c.process is not None:
                task = asyncio.create_task(self._kill(c, self.grace))
                self._killing.add(task)
                task.add_done_callback(self._killing.discard)

    async def _run(self) -> None:
        try:
            await self._main()
        except Exception as err:
            log.exception("pod %s/%s: %s", self.namespace, self.name, err)
            self.failure = ("DevclusterError", str(err))
        finally:
            await self._stop_all()
            if self.net is not None:
                await self.net.delete()
            self.done.set()
            self.node.wake()

    async def _main(self) -> None:
        try:
            self._images = {c.name: lookup(c.spec["image"]) for c in self.init_containers + self.containers}
        except UnknownImage as err:
            self.failure = ("UnknownImage", str(err))
            for c in self.init_containers + self.containers:
                c.waiting("ErrImagePull", str(err))
            log.warning("pod %s/%s failed: %s", self.namespace, self.name, err)
            return
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        hostname = self.pod["spec"].get("hostname") or self.name
        for attempt in range(3):
            try:
                self.net = await PodNetwork.create(self.node.network, hostname)
                break
            except RuntimeError as err:  # a command of the network setup failed: try again, then give up
                log.warning("pod %s/%s: network setup failed: %s", self.namespace, self.name, err)
                if attempt == 2:
                    raise
                if await self._sleep(2):
                    return
        for c in self.init_containers + self.containers:
            c.waiting("PodInitializing" if c.init or self.init_containers else "ContainerCreating")
        self.node.wake()
        for c in self.init_containers:
            while True:
                code = await self._run_once(c)
                if code is None or self.stopping.is_set():
                    return
                if code == 0:
                    break
                if self.restart_policy == "Never":
                    self.failure = ("InitContainerFailed", f"init container {c.name} exited with {code}")
                    return
                if await self._backoff(c):
                    return
        self.initialized = True
        for c in self.containers:
            c.waiting("ContainerCreating")
        self.node.wake()
        await asyncio.gather(*(self._keep_running(c) for c in self.containers))

    async def _keep_running(self, c: Container) -> None:
        while not self.stopping.is_set():
            code = await self._run_once(c)
            if code is None or self.stopping.is_set():
                return
            if self.restart_policy == "Never" or (self.restart_policy == "OnFailure" and code == 0):
                return
            if await self._backoff(c):
                return

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless the Pod stops first; True when it does."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
        return self.stopping.is_set()

    async def _backoff(self, c: Container) -> bool:
        delay = BACKOFF[min(c.crashes, len(BACKOFF) - 1)]
        c.crashes += 1
        c.restart_count += 1
        c.last_state = c.state
        if delay:
            c.waiting("CrashLoopBackOff", f"back-off {delay}s restarting failed container={c.name}")
            self.node.wake()
        return await self._sleep(delay)

    async def _run_once(self, c: Container) -> int | None:
        """Start the container and wait for it to exit; its exit code, or None if the Pod stopped first."""
        assert self.net is not None
        ctx = PodContext(
            pod=self.pod,
            dir=self.dir,
            claims=self.node.state_dir / "claims",
            pod_ip=str(self.net.address),
            host_ip=str(self.node.network.gateway),
            hosts_file=self.node.hosts_file,
        )
        while True:
            try:
                spec = await sandbox_spec(
                    self.node.api, ctx, c.spec, self._images[c.name], self.dir / "rootfs" / c.name
                )
                break
            except (ConfigError, LookupError) as err:
                reason = (
                    "CreateContainerConfigError" if isinstance(err, ConfigError) else "CreateContainerError"
                )
                if c.state.get("waiting", {}).get("message") != str(err):
                    log.warning("pod %s/%s container %s: %s", self.namespace, self.name, c.name, err)
                c.waiting(reason, str(err))
                self.node.wake()
                if await self._sleep(3):
                    return None
        spec_file = self.dir / f"{c.name}.json"
        spec_file.write_text(json.dumps(spec))
        os.chmod(spec_file, 0o600)  # it holds the container's environment
        if self.stopping.is_set():
            return None
        with (self.dir / "logs" / f"{c.name}.log").open("ab") as out:
            c.process = await asyncio.create_subprocess_exec(
                "nsenter",
                f"--target={self.net.pid}",
                "--net",
                "--uts",
                "--",
                "unshare",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--",
                sys.executable,
                "-m",
                "devcluster.sandbox",
                str(spec_file),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={
                    "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                    "PYTHONPATH": str(REPO),
                },
                preexec_fn=die_with_parent,
                start_new_session=True,
            )
        started = time.monotonic()
        c.pid = await self._container_pid(c.process)
        (self.dir / f"{c.name}.pid").write_text(f"{c.pid or c.process.pid}\n")
        c.state = {"running": {"startedAt": now()}}
        probes = None if c.init else asyncio.create_task(self._probe(c))
        if c.init:
            c.started = True
        self.node.wake()
        code = await c.process.wait()
        if probes is not None:
            probes.cancel()
        exit_code = code if code >= 0 else 128 - code
        c.state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": c.state["running"]["startedAt"],
                "finishedAt": now(),
            }
        }
        c.process, c.pid, c.ready, c.started = None, None, False, False
        if time.monotonic() - started >= BACKOFF_RESET:
            c.crashes = 0
        self.node.wake()
        log.info("pod %s/%s container %s exited with %s", self.namespace, self.name, c.name, exit_code)
        return exit_code

    async def _container_pid(self, process: asyncio.subprocess.Process) -> int | None:
        for _ in range(100):
            pid = first_child(process.pid)
            if pid is not None or process.returncode is not None:
                return pid
            await asyncio.sleep(0.02)
        return None

    async def _kill(self, c: Container, grace: float) -> None:
        """SIGTERM to the container's PID 1, SIGKILL after `grace` seconds."""
        process = c.process
        if process is None:
            return
        send(c.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(process.wait()), grace)
        if process.returncode is None:
            send(c.pid, signal.SIGKILL)
            send(process.pid, signal.SIGKILL)

    async def _stop_all(self) -> None:
        running = [c for c in self.init_containers + self.containers if c.process is not None]
        await asyncio.gather(*(self._kill(c, self.grace) for c in running))
        for c in running:
            if c.process is not None:
                await c.process.wait()

    # -- probes --------------------------------------------------------------------------------------

    async def _probe(self, c: Container) -> None:
        assert self.net is not None
        ip = str(self.net.address)
        spec = c.spec
        probes = {
            kind: Probe(spec[kind], spec, ip)
            for kind in ("startupProbe", "livenessProbe", "readinessProbe")
            if kind in spec
        }
        for kind, probe in probes.items():
            if not probe.supported:
                log.info(
                    "pod %s/%s: %s of %s is not run (only httpGet and tcpSocket)",
                    self.namespace,
                    self.name,
                    kind,
                    c.name,
                )
        startup = probes.get("startupProbe")
        if startup is not None and not await self._until(startup, c, "startup"):
            return
        c.started = True
        if "readinessProbe" not in probes:
            c.ready = True
        self.node.wake()
        loops: list[Coroutine[Any, Any, object]] = []
        if "readinessProbe" in probes:
            loops.append(self._readiness(probes["readinessProbe"], c))
        if "livenessProbe" in probes:
            loops.append(self._until(probes["livenessProbe"], c, "liveness", forever=True))
        await asyncio.gather(*loops)

    async def _until(self, probe: Probe, c: Container, what: str, forever: bool = False) -> bool:
        """Run `probe` each period; False (and the container killed) after failureThreshold failures in a
        row; True at the first success unless `forever`."""
        await asyncio.sleep(probe.initial_delay)
        failures = 0
        while True:
            if await probe.check():
                failures = 0
                if not forever:
                    return True
            else:
                failures += 1
                if failures >= probe.failure_threshold:
                    log.warning(
                        "pod %s/%s: %s probe of %s failed %d times: restarting it",
                        self.namespace,
                        self.name,
                        what,
                        c.name,
                        failures,
                    )
                    await self._kill(c, self.grace)
                    return False
            await asyncio.sleep(probe.period)

    async def _readiness(self, probe: Probe, c: Container) -> None:
        await asyncio.sleep(probe.initial_delay)
        successes = failures = 0
        while True:
            if await probe.check():
                successes, failures = successes + 1, 0
                if not c.ready and successes >= probe.success_threshold:
                    c.ready = True
                    self.node.wake()
            else:
                successes, failures = 0, failures + 1
                if c.ready and failures >= probe.failure_threshold:
                    c.ready = False
                    self.node.wake()
            await asyncio.sleep(probe.period)

    # -- status --------------------------------------------------------------------------------------

    def _phase(self) -> str:
        if self.failure is not None:
            return "Failed"
        states = [c.state for c in self.containers]
        if self.restart_policy != "Always" and all("terminated" in s for s in states):
            return "Succeeded" if all(s["terminated"]["exitCode"] == 0 for s in states) else "Failed"
        if self.initialized and all(
            "running" in s or c.restart_count for s, c in zip(states, self.containers, strict=True)
        ):
            return "Running"
        return "Pending"

    def _condition(self, kind: str, ok: bool) -> dict[str, Any]:
        status = "True" if ok else "False"
        previous = self._since.get(kind)
        if previous is None or previous[0] != status:
            self._since[kind] = (status, now())
        return {
            "type": kind,
            "status": status,
            "lastTransitionTime": self._since[kind][1],
            "lastProbeTime": None,
        }

    def status(self) -> dict[str, Any]:
        ready = self.initialized and all(c.ready for c in self.containers) and not self.stopping.is_set()
        status: dict[str, Any] = {
            "phase": self._phase(),
            "hostIP": str(self.node.network.gateway),
            "hostIPs": [{"ip": str(self.node.network.gateway)}],
            "startTime": self.start_time,
            "conditions": [
                self._condition("PodScheduled", True),
                self._condition("Initialized", self.initialized),
                self._condition("ContainersReady", ready),
                self._condition("Ready", ready),
            ],
            "containerStatuses": [c.status(self.uid) for c in self.containers],
            "initContainerStatuses": [c.status(self.uid) for c in self.init_containers],
            "reason": None,
            "message": None,
        }
        if self.net is not None:
            status["podIP"] = str(self.net.address)
            status["podIPs"] = [{"ip": str(self.net.address)}]
        if self.failure is not None:
            status["reason"], status["message"] = self.failure
        return status
