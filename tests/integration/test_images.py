"""The cluster's images (hack/images/build.sh, `make images`), checked from the OCI archives the node imports.

Each archive is read back into buildah's storage under .testenv and run with buildah (chroot isolation, the
host's network): the programs start, answer on their ports and run as the users the Pod specs expect.
Every working container a test makes is removed, so nothing stays mounted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mqtt_operator import __version__
from mqtt_operator.api.instance import MqttInstanceSpec
from mqtt_operator.resources.admin_secret import ADMIN_USERNAME
from mqtt_operator.resources.mosquitto_conf import IN_POD_PATHS, render_mosquitto_conf
from mqtt_operator.resources.statefulset import _DYNSEC_INIT_SCRIPT, BROKER_UID
from testenv.mosquitto import Mosquitto
from testenv.paths import TESTENV_DIR, run_dir, tool, versions
from testenv.process import free_port, port_open

IMAGES = TESTENV_DIR / "images"
STORAGE = TESTENV_DIR / "buildah"
VERSIONS = versions()
EXPECTED = {
    "mqtt-operator": f"localhost/mqtt-operator:{__version__}",
    "mosquitto": f"localhost/mosquitto:{VERSIONS['MOSQUITTO_IMAGE_VERSION']}",
    "kafka": f"localhost/kafka:{VERSIONS['KAFKA_VERSION']}",
    "rocketmq": f"localhost/rocketmq:{VERSIONS['ROCKETMQ_VERSION']}",
    "battery-alerts": f"localhost/battery-alerts:{__version__}",
    "pause": "localhost/pause:3.10",
    "coredns": f"localhost/coredns:{VERSIONS['COREDNS_VERSION']}",
    "local-path-provisioner": "localhost/local-path-provisioner:"
    + VERSIONS["LOCAL_PATH_PROVISIONER_VERSION"],
}


def buildah(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["buildah", "--root", str(STORAGE / "storage"), "--runroot", str(STORAGE / "run")]
    argv += ["--storage-driver", "overlay", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"buildah {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def run_argv(container: str, argv: list[str], env: dict[str, str], volumes: dict[Path, str]) -> list[str]:
    args = ["run", "--isolation", "chroot", "--network", "host"]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    for host, inside in volumes.items():
        args += ["--volume", f"{host}:{inside}"]
    return [*args, container, "--", *argv]


class Image:
    """One image as read from its archive; `container()` makes working containers, removed at the end."""

    def __init__(self, name: str, entry: dict[str, str]) -> None:
        self.name = name
        self.ref = entry["ref"]
        self.archive = Path(entry["archive"])
        self.containers: list[str] = []

    def config(self) -> dict[str, Any]:
        out = buildah("inspect", "--type", "image", self.ref).stdout
        config: dict[str, Any] = json.loads(out)["OCIv1"]["config"]
        return config

    def container(self) -> str:
        name = f"test-images-{self.name}-{uuid.uuid4().hex[:8]}"
        # From the archive itself: what the node imports, not only what buildah keeps.
        buildah("from", "--quiet", "--pull-always", "--name", name, f"oci-archive:{self.archive}")
        self.containers.append(name)
        return name

    def run(
        self,
        *argv: str,
        env: dict[str, str] | None = None,
        volumes: dict[Path, str] | None = None,
        timeout: float = 120,
    ) -> str:
        """Runs argv in a new container of the image as the image's user; its stdout and stderr."""
        container = self.container()
        proc = buildah(
            *run_argv(container, list(argv), env or {}, volumes or {}), timeout=timeout, check=False
        )
        assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout + proc.stderr

    @contextmanager
    def serving(
        self,
        script: str,
        env: dict[str, str],
        volume: Path,
        inside: str,
        ready: Callable[[], bool],
        what: str,
    ) -> Iterator[Path]:
        """Runs `script` (sh) in a container until the test ends; `volume` is mounted at `inside`.

        The container stops its programs itself when the test creates `stop` in the volume: buildah does
        not pass signals on to what it runs.
        """
        container = self.container()
        # `jobs -p` inside $(...) would run in a subshell, which has no jobs: hence the file.
        wrapped = "\n".join(
            [
                script,
                f"while [ ! -e {inside}/stop ]; do sleep 0.2; done",
                "jobs -p >/tmp/jobs; kill $(cat /tmp/jobs) 2>/dev/null; wait",
            ]
        )
        log = volume.parent / f"{volume.name}.log"
        argv = ["buildah", "--root", str(STORAGE / "storage"), "--runroot", str(STORAGE / "run")]
        argv += ["--storage-driver", "overlay"]
        argv += run_argv(container, ["sh", "-c", wrapped], env, {volume: inside})
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            while not ready():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{self.name}: not {what}:\n{log.read_text()[-4000:]}")
                time.sleep(0.5)
            yield log
        finally:
            (volume / "stop").touch()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def remove_containers(self) -> None:
        for container in self.containers:
            buildah("rm", container, check=False)
        self.containers.clear()


@pytest.fixture(scope="module")
def manifest() -> dict[str, dict[str, str]]:
    path = IMAGES / "images.json"
    assert path.exists(), f"{path} is missing: run `make images`"
    images: dict[str, dict[str, str]] = json.loads(path.read_text())
    return images


@pytest.fixture
def image(request: pytest.FixtureRequest, manifest: dict[str, dict[str, str]]) -> Iterator[Image]:
    name = request.param
    assert name in manifest, f"{name} is not in {IMAGES / 'images.json'}: run `make images`"
    built = Image(name, manifest[name])
    try:
        yield built
    finally:
        built.remove_containers()


def _workdir(uid: int) -> Path:
    """A folder the image's user can write, to mount into its container."""
    path = Path(tempfile.mkdtemp(prefix="image-", dir=run_dir()))
    os.chown(path, uid, uid)
    path.chmod(0o770)
    return path


def test_the_manifest_names_every_image_with_a_fixed_tag_and_its_archive(
    manifest: dict[str, dict[str, str]],
) -> None:
    assert {name: entry["ref"] for name, entry in manifest.items()} == EXPECTED
    for name, entry in manifest.items():
        assert not entry["ref"].endswith(":latest"), name
        assert Path(entry["archive"]) == IMAGES / f"{name}.tar"
        assert Path(entry["archive"]).stat().st_size > 100_000, name
        assert len(entry["inputs"]) == 64, name
        index = json.loads(
            subprocess.run(
                ["tar", "-xOf", entry["archive"], "index.json"], capture_output=True, check=True
            ).stdout
        )
        # The archive carries its ref, which the node's image import keeps as the image's name.
        [only] = index["manifests"]
        assert only["annotations"]["org.opencontainers.image.ref.name"] == entry["ref"], name


@pytest.mark.parametrize("image", ["mqtt-operator"], indirect=True)
def test_operator_image_runs_the_command_as_65532(image: Image) -> None:
    config = image.config()
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["mqtt-operator"]
    assert config["Cmd"] == ["run"]
    assert "PYTHONUNBUFFERED=1" in config["Env"]
    out = image.run(
        "sh",
        "-c",
        "id -u; id -g; mqtt-operator version; python3 --version; "
        "python3 -c 'import mqtt_operator.__main__, mqtt_operator.bridge.program, aiokafka, kopf, msgspec'; "
        # The C extensions were built in the build stage, whose compiler stays behind.
        "python3 -c 'from mqtt_operator.bridge import mqtt5, kafka_batch; "
        'print("c-reader", mqtt5.reads_publishes_in_c()); '
        'print("c-batches", kafka_batch.builds_batches_in_c())\'; '
        "python3 -m pip --version >/dev/null 2>&1 && echo pip-present; "
        "command -v gcc cc || echo no-compiler",
    )
    uid, gid, version, python, *rest = out.split("\n")
    assert (uid, gid) == ("65532", "65532")
    assert version == __version__
    assert python.startswith("Python 3.11.")
    assert "Traceback" not in out, out  # every module imports
    assert "c-reader True" in rest
    assert "c-batches True" in rest
    assert "pip-present" not in out and "no-compiler" in rest


@pytest.mark.parametrize("image", ["mosquitto"], indirect=True)
def test_mosquitto_image_runs_the_operators_config_with_dynamic_security(image: Image) -> None:
    version = VERSIONS["MOSQUITTO_IMAGE_VERSION"]
    assert image.config()["User"] == f"{BROKER_UID}:{BROKER_UID}"
    help_text = image.run("sh", "-c", "mosquitto -h; true")
    assert f"mosquitto version {version}" in help_text
    assert (
        image.run("sh", "-c", f"test -f {IN_POD_PATHS.stamp_plugin} && echo stamp-plugin").strip()
        == "stamp-plugin"
    )
    assert image.run("sh", "-c", f"test -f {IN_POD_PATHS.dynsec_plugin} && id -un && id -u").split() == [
        "mosquitto",
        str(BROKER_UID),
    ]

    # The Pod's own steps: the init container's script, then `mosquitto -c <config>` with the config the
    # operator renders (authorization on), a listener on a free port of this machine.
    port = free_port()
    spec = MqttInstanceSpec.model_validate({"listeners": {"mqtt": {"port": port}}})
    assert spec.authorization.enabled
    config_dir, data_dir = _workdir(BROKER_UID), _workdir(BROKER_UID)
    (config_dir / "mosquitto.conf").write_text(render_mosquitto_conf(spec))
    volumes = {config_dir: IN_POD_PATHS.config_dir, data_dir: IN_POD_PATHS.data_dir}
    env = {"DYNSEC_FILE": IN_POD_PATHS.dynsec_file, "ADMIN_USERNAME": "admin", "ADMIN_PASSWORD": "s3cret"}
    init = image.run("sh", "-c", _DYNSEC_INIT_SCRIPT, env=env, volumes=volumes)
    assert "admin" in init and (data_dir / "dynamic-security.json").exists()
    ctrl = f"mosquitto_ctrl -h 127.0.0.1 -p {port} -u admin"
    out = image.run(
        "sh",
        "-c",
        f"mosquitto -c {IN_POD_PATHS.config_file} & pid=$!\n"
        f"for i in $(seq 50); do {ctrl} -P s3cret dynsec listClients >/tmp/ok 2>&1 && break\n"
        "sleep 0.2; done\n"
        f"{ctrl} -P wrong dynsec listClients >/tmp/refused 2>&1\n"
        "kill $pid; wait $pid\n"
        "echo '--- good password'; cat /tmp/ok; echo '--- wrong password'; cat /tmp/refused",
        volumes=volumes,
    )
    assert f"Loading plugin: {IN_POD_PATHS.dynsec_plugin}" in out
    # Our plugin, built in the image against trixie's headers (and linked to its cJSON), loads before
    # dynamic security.
    assert f"Loading plugin: {IN_POD_PATHS.stamp_plugin}" in out
    assert "mqtt_operator_stamp: stamping clientId clientAddress messageId;" in out
    good, wrong = out.split("--- good password")[1].split("--- wrong password")
    assert "admin" in good
    assert "not authorised" in wrong.lower() or "not authorized" in wrong.lower(), wrong


@pytest.mark.parametrize("image", ["mosquitto"], indirect=True)
def test_mosquitto_image_stamps_messages_with_its_own_broker_version(image: Image) -> None:
    # The plugin walks Mosquitto's property list itself (2.0.21 exports no property readers): check it
    # on the image's broker, not only on the host's 2.0.11 (tests/integration/test_broker_stamp.py).
    port = free_port()
    spec = MqttInstanceSpec.model_validate(
        {"listeners": {"mqtt": {"port": port}}, "authorization": {"enabled": False}}
    )
    config_dir, data_dir = _workdir(BROKER_UID), _workdir(BROKER_UID)
    (config_dir / "mosquitto.conf").write_text(render_mosquitto_conf(spec))
    volumes = {config_dir: IN_POD_PATHS.config_dir, data_dir: IN_POD_PATHS.data_dir}
    out = image.run(
        "sh",
        "-c",
        f"mosquitto -c {IN_POD_PATHS.config_file} >/tmp/log 2>&1 & pid=$!\n"
        f"for i in $(seq 50); do mosquitto_sub -p {port} -t '$SYS/broker/version' -C 1 -W 1 >/dev/null 2>&1"
        " && break; sleep 0.2; done\n"
        f"mosquitto_sub -V 5 -p {port} -t t -C 2 -W 10 -F '%P' >/tmp/props & sub=$!\n"
        "sleep 0.5\n"
        f"mosquitto_pub -V 5 -p {port} -t t -m x -i image-pub"
        " -D publish user-property mqtt-operator/clientId forged -D publish user-property note kept\n"
        # Nothing but forged properties: the first stamp takes the place of the list's head.
        f"mosquitto_pub -V 5 -p {port} -t t -m y -i image-pub2"
        " -D publish user-property MQTT-Operator/x forged\n"
        "wait $sub\n"
        # The admin interface, answered to the asking client (mosquitto_rr: request, then response).
        f"mosquitto_rr -V 5 -p {port} -i rr-image -u {ADMIN_USERNAME} -t '$CONTROL/mqtt-operator/v1'"
        " -e '$CONTROL/mqtt-operator/v1/response' -W 10"
        """ -m '{"commands":[{"command":"listClients","match":"rr*"},{"command":"nope"}]}' >/tmp/rr 2>&1\n"""
        "kill $pid; wait $pid\n"
        "echo '--- rr'; cat /tmp/rr; echo '--- props'; cat /tmp/props; echo '--- log'; cat /tmp/log",
        volumes=volumes,
    )
    rr = out.split("--- rr")[1].split("--- props")[0]
    props, log = out.split("--- props")[1].split("--- log")
    assert "mqtt_operator_stamp: stamping clientId clientAddress messageId;" in log
    listing, unknown = json.loads(rr)["responses"]
    (me,) = listing["data"]["clients"]  # mosquitto_rr's own connection (its id starts with "rr")
    assert (me["address"], me["username"], me["protocolVersion"]) == ("127.0.0.1", ADMIN_USERNAME, 5)
    assert unknown == {"command": "nope", "error": "unknown command"}
    first, second = props.strip().splitlines()
    pairs = dict(item.split(":", 1) for item in first.split())
    assert pairs["note"] == "kept"
    assert pairs["mqtt-operator/clientId"] == "image-pub"
    assert pairs["mqtt-operator/clientAddress"] == "127.0.0.1"
    assert uuid.UUID(pairs["mqtt-operator/messageId"]).version == 7
    assert "forged" not in props
    assert [item.split(":", 1)[0] for item in second.split()] == [
        "mqtt-operator/clientId",
        "mqtt-operator/clientAddress",
        "mqtt-operator/messageId",
    ]
    assert "mqtt-operator/clientId:image-pub2" in second.split()


@pytest.mark.parametrize("image", ["kafka"], indirect=True)
def test_kafka_image_formats_and_serves_one_kraft_node_advertising_its_service_name(image: Image) -> None:
    version = VERSIONS["KAFKA_VERSION"]
    listing = image.run("sh", "-c", "java -version 2>&1; ls /opt/kafka/libs")
    assert 'version "17.' in listing
    assert f"kafka_2.13-{version}.jar" in listing and f"kafka-clients-{version}.jar" in listing

    port, controller = free_port(), free_port()
    advertised = f"kafka-0.kafka.kafka.svc:{port}"
    env = {
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(controller),
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{advertised}",
        "KAFKA_HEAP_OPTS": "-Xms256m -Xmx256m",
        "KAFKA_CFG_NUM_PARTITIONS": "3",
    }
    data = _workdir(1001)

    def metadata() -> str:
        proc = subprocess.run(
            [tool("kcat"), "-b", f"127.0.0.1:{port}", "-L", "-m", "3"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return proc.stdout if proc.returncode == 0 else ""

    with image.serving("kafka start &", env, data, "/var/lib/kafka", lambda: "1 brokers" in metadata(), "up"):
        assert f"broker 1 at {advertised}" in metadata()
    assert (data / "data" / "meta.properties").exists()
    assert "num.partitions=3" in (data / "server.properties").read_text().splitlines()


def _free_port_pair() -> int:
    """A free port whose port - 2 and port + 1 are free too (the RocketMQ broker's other listeners)."""
    for _ in range(100):
        port = free_port()
        if port > 1026 and not port_open(port - 2) and not port_open(port + 1):
            return port
    raise AssertionError("no free ports for the broker")


@pytest.mark.parametrize("image", ["rocketmq"], indirect=True)
def test_rocketmq_image_runs_name_server_and_proxy_with_the_test_brokers_settings(image: Image) -> None:
    version = VERSIONS["ROCKETMQ_VERSION"]
    listing = image.run("sh", "-c", "java -version 2>&1; ls /opt/rocketmq/lib")
    assert 'version "17.' in listing
    assert f"rocketmq-proxy-{version}.jar" in listing and f"rocketmq-namesrv-{version}.jar" in listing

    namesrv, grpc, remoting, broker = free_port(), free_port(), free_port(), _free_port_pair()
    env = {
        "ROCKETMQ_NAMESRV_PORT": str(namesrv),
        "ROCKETMQ_NAMESRV_ADDR": f"127.0.0.1:{namesrv}",
        "ROCKETMQ_GRPC_PORT": str(grpc),
        "ROCKETMQ_REMOTING_PORT": str(remoting),
        "ROCKETMQ_BROKER_PORT": str(broker),
        "ROCKETMQ_BROKER_IP": "127.0.0.1",
        "ROCKETMQ_CLUSTER": "ImageCluster",
    }
    home = _workdir(3000)
    script = "rocketmq namesrv >namesrv.out 2>&1 &\nrocketmq proxy >proxy.out 2>&1 &"
    with image.serving(script, env, home, "/var/lib/rocketmq", lambda: port_open(grpc), "serving gRPC"):
        clusters = ""
        deadline = time.monotonic() + 60
        while "broker-a" not in clusters and time.monotonic() < deadline:
            clusters = image.run("rocketmq", "admin", "clusterList", "-n", f"127.0.0.1:{namesrv}", env=env)
        assert "ImageCluster" in clusters and "broker-a" in clusters, clusters
    broker_conf = (home / "broker.conf").read_text().splitlines()
    for setting in ("enablePopBufferMerge=true", "enablePopBatchAck=true", "autoCreateTopicEnable=false"):
        assert setting in broker_conf


@pytest.mark.parametrize("image", ["battery-alerts"], indirect=True)
def test_battery_alerts_answers_a_low_level_with_a_command_and_a_good_one_with_nothing(image: Image) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    work = _workdir(65532)

    def call(body: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
        headers = {
            "Content-Type": content_type,
            "ce-specversion": "1.0",
            "ce-subject": "vehicles/car-3/battery",
        }
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - a loopback URL
                return answer.status, answer.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def up() -> bool:
        return port_open(port)

    with image.serving(
        "python3 /app/battery_alerts.py &", {"PORT": str(port)}, work, "/work", up, "up"
    ) as log:
        assert call(b'{"level": 17}') == (200, b'{"command": "notify-driver", "level": 17}')
        assert call(b'{"level": 80}') == (204, b"")
        batch = [{"specversion": "1.0", "data": {"level": 50}}, {"specversion": "1.0", "data": {"level": 5}}]
        status, body = call(json.dumps(batch).encode(), "application/cloudevents-batch+json")
        assert (status, json.loads(body)) == (200, {"command": "notify-driver", "level": 5})
        assert call(b"not json")[0] == 400
    lines = [line for line in log.read_text().splitlines() if line.startswith("POST ")]
    assert len(lines) == 4, lines
    assert lines[0] == "POST / 200 subject=vehicles/car-3/battery levels=[17] -> notify-driver"
    assert image.config()["User"] == "65532:65532"


@pytest.mark.parametrize("image", ["pause"], indirect=True)
def test_pause_is_static_reaps_children_and_exits_on_sigterm(image: Image) -> None:
    config = image.config()
    assert config["Entrypoint"] == ["/pause"]
    container = image.container()
    mount = buildah("mount", container).stdout.strip()
    try:
        binary = run_dir() / f"pause-{uuid.uuid4().hex[:8]}"
        shutil.copy(Path(mount) / "pause", binary)
        assert os.listdir(mount) == ["pause"]  # nothing but the binary
    finally:
        buildah("umount", container)
    try:
        elf = binary.read_bytes()
        assert elf[:4] == b"\x7fELF" and b"/lib64/ld-linux" not in elf  # no dynamic loader: static
        assert subprocess.run([str(binary), "-v"], capture_output=True, text=True).stdout == "pause 3.10\n"
        proc = subprocess.Popen([str(binary)], stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        assert proc.poll() is None  # it waits
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        binary.unlink(missing_ok=True)


@pytest.mark.parametrize("image", ["coredns"], indirect=True)
def test_coredns_image_is_the_pinned_version_with_the_kubernetes_plugin(image: Image) -> None:
    assert image.config()["Entrypoint"] == ["/coredns"]
    version = VERSIONS["COREDNS_VERSION"].lstrip("v")
    assert f"CoreDNS-{version}" in image.run("/coredns", "-version")
    plugins = image.run("/coredns", "-plugins").split()
    assert {"kubernetes", "forward", "cache", "health", "ready", "loop"} <= set(plugins), plugins


@pytest.mark.parametrize("image", ["local-path-provisioner"], indirect=True)
def test_local_path_provisioner_image_runs_the_provisioner_and_its_helper_scripts(image: Image) -> None:
    assert image.config()["Cmd"] == ["local-path-provisioner"]
    assert "local-path-provisioner" in image.run("local-path-provisioner", "--help")
    # What the helper Pods' setup and teardown scripts do, in the same image.
    out = image.run(
        "sh",
        "-c",
        "mkdir -m 0777 -p /tmp/pv/a && chmod 0700 /tmp/pv/a && stat -c %a /tmp/pv/a && rm -rf /tmp/pv "
        "&& test ! -e /tmp/pv && echo removed",
    )
    assert out.split() == ["700", "removed"]


@pytest.mark.parametrize("image", ["mqtt-operator"], indirect=True)
def test_operator_image_runs_the_broker_exporter(image: Image) -> None:
    """The MqttInstance's exporter sidecar is `mqtt-operator broker-exporter` in this image: run as the
    image's user against a real broker, it serves the broker's figures."""
    broker = Mosquitto(config="allow_anonymous true\nsys_interval 1\n").start()
    port = free_port()
    container = image.container()
    env = {"BROKER_ENDPOINT": f"tcp://127.0.0.1:{broker.port}", "BIND_ADDRESS": f"127.0.0.1:{port}"}
    argv = ["buildah", "--root", str(STORAGE / "storage"), "--runroot", str(STORAGE / "run")]
    argv += [
        "--storage-driver",
        "overlay",
        *run_argv(container, ["mqtt-operator", "broker-exporter"], env, {}),
    ]
    log = broker.root / "exporter.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        figures = ""
        while not re.search(r"^broker_clients_connected 1(\.0)?$", figures, re.M):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    figures = resp.read().decode()
            except (OSError, urllib.error.URLError):
                time.sleep(0.5)
        assert "broker_publish_messages_received_total" in figures
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        broker.stop()


def test_no_container_or_mount_is_left_behind(manifest: dict[str, dict[str, str]]) -> None:
    del manifest  # after the image tests, in file order
    names = buildah("containers", "--format", "{{.ContainerName}}").stdout.split()
    assert not [name for name in names if name.startswith("test-images-")]
    mounts = Path("/proc/self/mounts").read_text()
    assert str(STORAGE) not in mounts, [line for line in mounts.splitlines() if str(STORAGE) in line]
