"""A real one-node Apache RocketMQ 5 on loopback: a name server and a proxy in local mode.

The proxy in local mode embeds the broker, so two JVMs make the whole cluster: clients speak gRPC to
`endpoint` (the proxy), admin tools (mqadmin) speak the remoting protocol to the name server. Installed
from Maven Central by hack/testenv/install-rocketmq.sh; `version` picks another installed version.

Things learned the hard way, kept here so nobody learns them again:
- Both processes exit at once (code 254, "Please set the ROCKETMQ_HOME variable") unless
  ROCKETMQ_HOME or -Drocketmq.home.dir is set; the stock scripts also ask for 8 GB heaps.
- The logback configs shipped in the jars log to ${user.home}/logs/rocketmqlogs, and the name server
  and broker keep state under ${user.home} too: user.home is pointed at the instance's root.
- The broker listens on `broker_port` and on `broker_port - 2` (its "fast" channel), both bound to
  `bindAddress`. The proxy's gRPC and remoting ports and the broker's HA port always bind the wildcard
  address (RocketMQ 5.3/5.5 have no setting for them); they are free ports all the same.
- A gRPC client naming a topic that does not exist gets TOPIC_NOT_FOUND: `create_topic()` first. A
  topic's `message.type` attribute (NORMAL, FIFO, DELAY, TRANSACTION) must match what is sent to it.
- From 5.5 the proxy refuses a consumer group that does not exist ("group not found", whatever
  autoCreateSubscriptionGroup says): `create_group()` first (fifo=True for FIFO topics).
- The proxy caches routes, topics and groups (missing ones too) for 20 s by default; here for 1 s.
- mqadmin exits 0 whatever happens: success is read from what it prints. Its client then takes
  3-4 s to shut down, so create_topic/create_group stop it once it printed success (~1 s a call).
- A graceful stop of the proxy takes ~15 s (the broker's shutdown); `stop_proxy(graceful=False)`
  kills it, a crash the broker recovers from on the next start.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from testenv.paths import TESTENV_DIR, run_dir, versions
from testenv.process import Server, StartError, free_port, log_tail, port_open

# Java 17 closes the JDK internals RocketMQ reaches into (unmapping files, netty's direct buffers).
JAVA17_OPENS = [
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-exports=java.base/jdk.internal.ref=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
]

MESSAGE_TYPES = ("NORMAL", "FIFO", "DELAY", "TRANSACTION")


def rocketmq_libs(version: str | None = None) -> Path:
    """The jars of the pinned (or the given, if installed) RocketMQ version."""
    home = TESTENV_DIR / "rocketmq" / (version or versions()["ROCKETMQ_VERSION"])
    if not (home / ".complete").exists():
        raise FileNotFoundError(f"RocketMQ is not installed in {home}: run `make testenv`")
    return home / "lib"


def _free_broker_port() -> int:
    """A free loopback port whose port - 2 is free as well (the broker's fast channel listens there)."""
    for _ in range(100):
        port = free_port()
        if port < 1026:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port - 2))
            except OSError:
                continue
        return port
    raise RuntimeError("found no free pair of ports for the RocketMQ broker")


class AdminError(RuntimeError):
    """An mqadmin command did not report success; the message carries its output."""


@dataclass
class RocketMQ:
    """Name server + proxy (local mode, embedded broker); `endpoint` is the gRPC host:port."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rocketmq-", dir=run_dir())))
    cluster: str = "TestCluster"
    broker_name: str = "broker-a"
    namesrv_port: int = 0
    broker_port: int = 0
    ha_port: int = 0
    grpc_port: int = 0
    remoting_port: int = 0
    heap: str = "384m"
    namesrv_heap: str = "128m"
    # False: as on most production clusters, a producer naming a missing topic gets an error.
    # (The gRPC proxy answers TOPIC_NOT_FOUND for a missing topic whatever this says.)
    auto_create_topics: bool = False
    # True: the broker creates a consumer group on first use (its default). The 5.5 proxy refuses a
    # group that does not exist before it gets there: create_group() all the same.
    auto_create_groups: bool = True
    # Extra broker.conf properties and rmq-proxy.json keys, over the defaults written here.
    broker_config: dict[str, str] = field(default_factory=dict)
    proxy_config: dict[str, object] = field(default_factory=dict)
    # Another version works when its jars are in .testenv/rocketmq/<version>/lib (install-rocketmq.sh).
    version: str = field(default_factory=lambda: versions()["ROCKETMQ_VERSION"])
    namesrv: Server | None = None
    proxy: Server | None = None
    # Seconds the last `start()` took until a topic could be created (JVM start to ready).
    start_seconds: float = 0.0

    @property
    def endpoint(self) -> str:
        """The proxy's gRPC endpoint, what rocketmq-python-client's ClientConfiguration takes."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def namesrv_addr(self) -> str:
        return f"127.0.0.1:{self.namesrv_port}"

    @property
    def broker_addr(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    @property
    def log_dir(self) -> Path:
        """RocketMQ's own logs (namesrv.log, broker.log, proxy.log, ...)."""
        return self.root / "logs" / "rocketmqlogs"

    def _java(self, heap: str, main: str, *args: str, extra: tuple[str, ...] = ()) -> list[str]:
        return [
            "java",
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:-OmitStackTraceInFastThrow",
            *JAVA17_OPENS,
            *extra,
            f"-Duser.home={self.root}",
            f"-Drocketmq.home.dir={self.root}",
            "-cp",
            f"{rocketmq_libs(self.version)}/*",
            main,
            *args,
        ]

    def _env(self) -> dict[str, str]:
        return {"ROCKETMQ_HOME": str(self.root), "RMQ_PROXY_HOME": str(self.root)}

    def _write_config(self) -> None:
        if not self.namesrv_port:
            self.namesrv_port = free_port()
            self.broker_port = _free_broker_port()
            self.ha_port = free_port()
            self.grpc_port = free_port()
            self.remoting_port = free_port()
        store = self.root / "store"
        (self.root / "namesrv.properties").write_text(
            "\n".join(
                [
                    f"listenPort={self.namesrv_port}",
                    "bindAddress=127.0.0.1",
                    f"kvConfigPath={self.root / 'namesrv' / 'kvConfig.json'}",
                    "",
                ]
            )
        )
        (self.root / "broker.conf").write_text(
            "\n".join(
                [
                    f"brokerClusterName={self.cluster}",
                    f"brokerName={self.broker_name}",
                    "brokerId=0",
                    "brokerRole=ASYNC_MASTER",
                    "flushDiskType=ASYNC_FLUSH",
                    f"namesrvAddr={self.namesrv_addr}",
                    "brokerIP1=127.0.0.1",
                    "brokerIP2=127.0.0.1",
                    "bindAddress=127.0.0.1",
                    f"listenPort={self.broker_port}",
                    f"haListenPort={self.ha_port}",
                    f"storePathRootDir={store}",
                    f"storePathCommitLog={store / 'commitlog'}",
                    # 64 MB commit-log files instead of 1 GB (sparse, but `du` shows them all the same).
                    "mappedFileSizeCommitLog=67108864",
                    f"autoCreateTopicEnable={str(self.auto_create_topics).lower()}",
                    f"autoCreateSubscriptionGroup={str(self.auto_create_groups).lower()}",
                    "enablePropertyFilter=true",
                    # Two shared cores: let a send wait longer in the broker's queue before "broker busy".
                    "waitTimeMillsInSendQueue=2000",
                    # Writes are refused above this disk usage (the default 90 trips on full CI disks).
                    "diskSpaceWarningLevelRatio=95",
                    # Pop consumers (the worker's receives): keep each receive's checkpoint in memory
                    # and match the acks there, instead of writing a record for each to the revive
                    # topic and scanning it back. Warm runs at 1,000 msg/s: p99 send -> received
                    # 38-57 ms with these, 50-187 ms without (docs/resources/replicationtask.md,
                    # "Running RocketMQ for it").
                    # Unacknowledged messages still come again: a checkpoint not acknowledged in
                    # time is written out, and a crash loses no offset (commits wait for acks).
                    "enablePopBufferMerge=true",
                    "enablePopBatchAck=true",
                    *(f"{key}={value}" for key, value in self.broker_config.items()),
                    "",
                ]
            )
        )
        (self.root / "rmq-proxy.json").write_text(
            json.dumps(
                {
                    "rocketMQClusterName": self.cluster,
                    "namesrvAddr": self.namesrv_addr,
                    "proxyMode": "local",
                    "grpcServerPort": self.grpc_port,
                    "remotingListenPort": self.remoting_port,
                    "localServeAddr": "127.0.0.1",
                    # The proxy caches topic routes, topic configs and groups, a missing one included,
                    # and refreshes them every 20 s by default: a topic made right after a client asked
                    # for it stayed TOPIC_NOT_FOUND for ~20 s. Tests create topics on the fly.
                    "topicRouteServiceCacheRefreshSeconds": 1,
                    "topicConfigCacheRefreshSeconds": 1,
                    "subscriptionGroupConfigCacheRefreshSeconds": 1,
                    # A graceful stop waits this long for open gRPC streams (30 s by default).
                    "grpcShutdownTimeSeconds": 1,
                    **self.proxy_config,
                },
                indent=2,
            )
        )

    def start(self) -> RocketMQ:
        began = time.monotonic()
        if not (self.root / "broker.conf").exists():
            self._write_config()
        self.namesrv = Server(
            "rocketmq-namesrv",
            self._java(
                self.namesrv_heap,
                "org.apache.rocketmq.namesrv.NamesrvStartup",
                "-c",
                str(self.root / "namesrv.properties"),
            ),
            self.root / "namesrv.out",
            env=self._env(),
            cwd=self.root,
        )
        self.namesrv.start()
        try:
            try:
                self.namesrv.wait_until(lambda: port_open(self.namesrv_port), 60, "listening")
            except StartError as err:
                raise StartError(f"{err}\n{self._logs_tail()}") from None
            self.start_proxy()
        except BaseException:
            # Started in sessions of their own, they would outlive the test run; the root stays for
            # the logs the error names.
            self.stop_proxy(graceful=False)
            _halt(self.namesrv, graceful=False)
            self.namesrv = None
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def start_proxy(self) -> None:
        """Start the proxy (and so the broker) on the same ports and store; ready when a topic is made."""
        self.proxy = Server(
            "rocketmq-proxy",
            self._java(
                self.heap,
                "org.apache.rocketmq.proxy.ProxyStartup",
                "-pm",
                "local",
                "-bc",
                str(self.root / "broker.conf"),
                "-pc",
                str(self.root / "rmq-proxy.json"),
                "-n",
                self.namesrv_addr,
            ),
            self.root / "proxy.out",
            env=self._env(),
            cwd=self.root,
        )
        self.proxy.start()
        try:
            self.proxy.wait_until(lambda: port_open(self.grpc_port), 120, "serving gRPC")
            # The broker registers with the name server as it starts; a topic made through the cluster
            # name proves the name server knows the broker and the broker writes its topic config.
            self.proxy.wait_until(self._topic_created, 60, "creating a topic")
        except StartError as err:
            raise StartError(f"{err}\n{self._logs_tail()}") from None

    def stop_proxy(self, graceful: bool = True) -> None:
        """Stop the proxy and its broker, keeping the store: `start_proxy()` brings both back.

        graceful=False kills it (SIGKILL), a crash: the broker then recovers its store on restart.
        """
        _halt(self.proxy, graceful)
        self.proxy = None

    def _topic_created(self) -> bool:
        try:
            self.create_topic("rmq-testenv-probe")
        except AdminError:
            return False
        return True

    def _admin_argv(self, *args: str) -> list[str]:
        return self._java(
            "128m",
            "org.apache.rocketmq.tools.command.MQAdminStartup",
            *args,
            "-n",
            self.namesrv_addr,
            extra=("-XX:TieredStopAtLevel=1",),
        )

    def admin(self, *args: str, timeout: float = 60) -> str:
        """Run one mqadmin (MQAdminStartup) sub-command against this name server; what it printed.

        mqadmin exits 0 even when the command failed: read the output.
        """
        proc = subprocess.run(
            self._admin_argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self._env()},
            cwd=self.root,
        )
        return proc.stdout + proc.stderr

    def _admin_until_success(self, *args: str, timeout: float = 60) -> tuple[bool, str]:
        """Run an update command, returning as soon as it printed "... success." (the broker has
        answered by then): its client's shutdown would cost 3-4 s more of waiting on its threads."""
        proc = subprocess.Popen(
            self._admin_argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self._env()},
            cwd=self.root,
        )
        assert proc.stdout is not None
        out: list[str] = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([proc.stdout], [], [], 0.5)
                if not ready:
                    continue
                line = proc.stdout.readline().decode(errors="replace")
                if not line:
                    break
                out.append(line)
                if line.rstrip().endswith(" success."):
                    return True, "".join(out)
            return False, "".join(out)
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()

    def create_topic(self, name: str, message_type: str = "NORMAL", queues: int = 4) -> None:
        """Create (or update) a topic on the cluster; message_type is NORMAL, FIFO, DELAY or TRANSACTION."""
        if message_type not in MESSAGE_TYPES:
            raise ValueError(f"message_type must be one of {MESSAGE_TYPES}, not {message_type!r}")
        ok, out = self._admin_until_success(
            "updateTopic",
            "-c",
            self.cluster,
            "-t",
            name,
            "-r",
            str(queues),
            "-w",
            str(queues),
            "-a",
            f"+message.type={message_type}",
        )
        if not ok:
            raise AdminError(f"updateTopic {name} failed:\n{out.strip()[-3000:]}")

    def create_group(self, name: str, fifo: bool = False, max_retries: int = 16) -> None:
        """Create (or update) a consumer group; fifo=True is what FIFO topics need (consumeMessageOrderly)."""
        ok, out = self._admin_until_success(
            "updateSubGroup",
            "-c",
            self.cluster,
            "-g",
            name,
            "-o",
            str(fifo).lower(),
            "-r",
            str(max_retries),
        )
        if not ok:
            raise AdminError(f"updateSubGroup {name} failed:\n{out.strip()[-3000:]}")

    def new_name(self, prefix: str = "t") -> str:
        """A fresh topic or group name (letters, digits, - and _ only, as RocketMQ requires)."""
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    def _logs_tail(self) -> str:
        parts = []
        for name in ("proxy.log", "broker.log", "namesrv.log"):
            path = self.log_dir / name
            if path.exists():
                parts.append(f"--- {path}:\n{log_tail(path, 20)}")
        return "\n".join(parts)

    def stop(self, keep_data: bool = False) -> None:
        """Stop the proxy and the name server; keep_data leaves the store so `start()` resumes it.

        Without keep_data both are killed at once: a graceful shutdown takes seconds and the data is
        deleted anyway.
        """
        self.stop_proxy(graceful=keep_data)
        _halt(self.namesrv, keep_data)
        self.namesrv = None
        if not keep_data:
            shutil.rmtree(self.root, ignore_errors=True)


def _halt(server: Server | None, graceful: bool) -> None:
    if server is None:
        return
    if graceful:
        server.stop(timeout=60)
    elif server.proc is not None:
        server.kill(signal.SIGKILL)
        server.proc.wait(30)
        server.proc = None
