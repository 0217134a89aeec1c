"""A real Mosquitto broker on loopback, started from a mosquitto.conf the caller supplies or a default."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from testenv.paths import run_dir, tool
from testenv.process import Server, free_port

DYNSEC_PLUGIN_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
)


def dynsec_plugin() -> str:
    for candidate in DYNSEC_PLUGIN_CANDIDATES:
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError("Mosquitto's dynamic-security plugin is not installed: run `make testenv`")


@dataclass
class Mosquitto:
    """One broker; `config` is the body of mosquitto.conf without the listener, which is added here."""

    config: str = "allow_anonymous true\n"
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mosquitto-", dir=run_dir())))
    port: int = 0
    server: Server | None = None

    def start(self) -> Mosquitto:
        self.port = self.port or free_port()
        # Mosquitto started as root drops to the `mosquitto` user: its files must stay writable for it
        # (FACTS.md: an unwritable dynamic-security file silently stops saving).
        os.chmod(self.root, 0o777)  # noqa: S103 - a private temp dir of the test run
        conf = self.root / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\n{self.config}")
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
