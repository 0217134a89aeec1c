"""A real Mosquitto broker on loopback, started from a mosquitto.conf the caller supplies or a default."""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from testenv.paths import REPO, TESTENV_DIR, run_dir, tool
from testenv.process import Server, free_port

DYNSEC_PLUGIN_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
)


def broker_dir() -> Path:
    """Where brokers keep their files: the run folder when the `mosquitto` user can reach it.

    Started as root, Mosquitto drops to the `mosquitto` user, which must traverse every parent of
    its data folder. A clone under a private folder (mktemp -d is 0700) would make the
    dynamic-security file unreadable, and every login would fail with "not authorised".
    """
    run = run_dir()
    if all(os.stat(p).st_mode & 0o001 for p in [run, *run.parents]):
        return run
    fallback = Path(tempfile.gettempdir()) / "mqtt-operator-testenv"
    fallback.mkdir(exist_ok=True)
    os.chmod(fallback, 0o777)  # noqa: S103 - shared scratch for test brokers only
    return fallback


def dynsec_plugin() -> str:
    for candidate in DYNSEC_PLUGIN_CANDIDATES:
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError("Mosquitto's dynamic-security plugin is not installed: run `make testenv`")


def stamp_plugin() -> str:
    """Our broker plugin (broker-plugin/) built against the host's Mosquitto headers; built on first use.

    hack/testenv/build-broker-plugin.sh keys the build by the source's hash, so this is a lookup once built.
    """
    proc = subprocess.run(
        ["bash", str(REPO / "hack/testenv/build-broker-plugin.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TESTENV_DIR": str(TESTENV_DIR)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building the broker plugin failed: {proc.stderr.strip()[-2000:]}")
    return str(_readable_by_broker(Path(proc.stdout.strip().splitlines()[-1])))


def _readable_by_broker(plugin: Path) -> Path:
    """The plugin where the `mosquitto` user can load it: as built when it can traverse every parent
    folder, else a copy in broker_dir() (a clone under a 0700 folder, as mktemp -d makes, would make the
    broker fail with "Permission denied")."""
    if all(os.stat(p).st_mode & 0o001 for p in plugin.parents):
        return plugin
    folder = broker_dir() / "plugins" / plugin.parent.name
    copy = folder / plugin.name
    if not copy.exists():
        folder.mkdir(parents=True, exist_ok=True)
        for made in (folder.parent, folder):
            os.chmod(made, 0o755)  # noqa: S103 - the broker's user must traverse it
        partial = folder / f".{plugin.name}.{os.getpid()}"  # renamed when whole: never half loaded
        shutil.copyfile(plugin, partial)
        os.chmod(partial, 0o755)  # noqa: S103 - the broker's user must load it
        partial.rename(copy)
    return copy


@dataclass
class Mosquitto:
    """One broker; `config` is the body of mosquitto.conf without the listener, which is added here."""

    config: str = "allow_anonymous true\n"
    # False when `config` carries its own `listener` lines (a conf the operator rendered).
    add_listener: bool = True
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mosquitto-", dir=broker_dir())))
    port: int = 0
    server: Server | None = None

    def start(self) -> Mosquitto:
        self.port = self.port or free_port()
        # Mosquitto started as root drops to the `mosquitto` user: its files must stay writable for it
        # (FACTS.md: an unwritable dynamic-security file silently stops saving).
        os.chmod(self.root, 0o777)  # noqa: S103 - a private temp dir of the test run
        conf = self.root / "mosquitto.conf"
        listener = f"listener {self.port} 127.0.0.1\n" if self.add_listener else ""
        conf.write_text(listener + self.config)
        self.server = Server("mosquitto", [tool("mosquitto"), "-c", str(conf)], self.root / "mosquitto.log")
        self.server.start()
        self.server.wait_until(self._answers, 30, "accepting connections")
        return self

    def _answers(self) -> bool:
        proc = subprocess.run(
            [
                tool("mosquitto_sub"),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-t",
                "$SYS/broker/version",
                "-C",
                "1",
                "-W",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=5,
        )
        # A broker that refuses anonymous clients still answers with CONNACK "not authorised".
        return proc.returncode == 0 or "not authori" in proc.stderr.lower()

    def stop(self, keep: bool = False) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)


IN_POD_DATA_DIR = "/mosquitto/data"
IN_POD_PLUGIN = "/usr/lib/mosquitto_dynamic_security.so"
IN_POD_STAMP_PLUGIN = "/usr/lib/mqtt_operator_stamp.so"


def from_rendered(conf: str, mqtt_port_in_pod: int, port: int, admin: tuple[str, str] | None) -> Mosquitto:
    """A broker run from the mosquitto.conf the operator rendered, changing only paths and the port.

    With `admin` (username, password) the dynamic-security file is initialised first, as the
    StatefulSet's init container does.
    """
    broker = Mosquitto(config="", add_listener=False, port=port)
    data = broker.root / "data"
    data.mkdir()
    os.chmod(data, 0o777)  # noqa: S103 - a private temp dir of the test run
    text = conf.replace(IN_POD_DATA_DIR, str(data)).replace(IN_POD_PLUGIN, dynsec_plugin())
    if IN_POD_STAMP_PLUGIN in text:
        text = text.replace(IN_POD_STAMP_PLUGIN, stamp_plugin())
    lines = text.splitlines()
    listener_line = f"listener {mqtt_port_in_pod}"
    if listener_line not in lines:
        raise ValueError(f"the rendered conf has no line {listener_line!r}")
    broker.config = (
        "\n".join(f"listener {port} 127.0.0.1" if line == listener_line else line for line in lines) + "\n"
    )
    if admin is not None:
        init_dynsec(data / "dynamic-security.json", *admin)
    return broker


def init_dynsec(path: Path, username: str, password: str) -> None:
    """What the init container does: a dynamic-security file holding only the admin account."""
    path.unlink(missing_ok=True)
    subprocess.run(
        [tool("mosquitto_ctrl"), "dynsec", "init", str(path), username, password],
        check=True,
        capture_output=True,
        timeout=10,
    )
    os.chmod(path, 0o666)  # noqa: S103 - the broker drops to the mosquitto user and must write it


def dynsec_file(broker: Mosquitto) -> Path:
    """The dynamic-security file of a broker made by `from_rendered`."""
    return broker.root / "data" / "dynamic-security.json"


_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_IN_CLOSE_WRITE, _IN_OPEN, _IN_Q_OVERFLOW = 0x8, 0x20, 0x4000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class FileSaves:
    """How many times a file was written whole since this was made, by inotify (no polling to miss one).

    A write is a close of the file, or of `<name>.new`, after writing: Mosquitto 2.0.11's dynamic-security
    plugin rewrites its file in place, later 2.0.x write `<name>.new` and rename it over the file. Opens
    are watched too, only so that the kernel never merges two unread closes in a row into one event.
    """

    def __init__(self, path: Path) -> None:
        self.names = {path.name.encode(), f"{path.name}.new".encode()}
        self.saves = 0
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, bytes(path.parent), _IN_CLOSE_WRITE | _IN_OPEN) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {path.parent}")

    def count(self) -> int:
        """The writes so far (reads what the kernel queued; call it at least every few thousand writes)."""
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return self.saves
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:
                    raise RuntimeError("inotify dropped events: count() was called too rarely")
                if mask & _IN_CLOSE_WRITE and name in self.names:
                    self.saves += 1

    def close(self) -> None:
        os.close(self.fd)
