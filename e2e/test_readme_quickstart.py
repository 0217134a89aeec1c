"""The README's `make dev` quickstart, run as written: the ```sh blocks of its "Set up" section after
the one with `make dev`, read from README.md at test time, so the doc cannot drift from the test.

Each block is one shell of the README ("in another shell", "in a third shell"): `bash -e` runs its
text unchanged, in order, from the repository's root, with what `make dev` tells the user to export
(KUBECONFIG, and testenv's bin/ first on PATH). The one long-running block, the dashboard's
`mosquitto_sub`, runs in the background like the shell it stands for, is stopped after a timeout, and
must have printed the car's report.

The commands name no namespace: they act in the kubeconfig's current one, `default` with make dev's
kubeconfig, where make dev runs the example function. Here they get a copy of the node's kubeconfig
whose current namespace is a fresh one with its own battery-alerts function (the operator watches every
namespace), so the README runs byte for byte without meeting the other tests' objects.

Node only: the quickstart is the `make dev` one, with its in-cluster RocketMQ and function, reaching the
broker and Kafka at their Pods' addresses (on kind, the same examples are driven by the other tests
through port-forward and a NodePort).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from testenv.cluster import Namespace, wait_for
from testenv.paths import BIN, REPO, tool

README = REPO / "README.md"
# Generous: `kubectl wait --timeout=120s` twice, the rollout, the first Pods of a fresh namespace.
BLOCK_TIMEOUT = 420
LISTENER_TIMEOUT = 60


def quickstart_blocks(readme: str) -> list[str]:
    """The ```sh blocks of "## Set up" that follow the block running `make dev`."""
    section = re.search(r"^## Set up\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert section, "README.md has no '## Set up' section"
    blocks = re.findall(r"^```sh\n(.*?)^```[ \t]*$", section.group(1), re.M | re.S)
    make_dev = next((i for i, b in enumerate(blocks) if re.search(r"^make dev\b", b, re.M)), None)
    assert make_dev is not None, "no ```sh block with `make dev` in the Set up section"
    return blocks[make_dev + 1 :]


def _command(block: str, program: str) -> list[str]:
    """The words of the block's line that runs `program` (the README's literal arguments)."""
    line = next((ln for ln in block.splitlines() if ln.startswith(f"{program} ")), None)
    assert line is not None, f"no `{program}` line in:\n{block}"
    return shlex.split(line)


def _option(words: list[str], flag: str) -> str:
    assert flag in words, f"{flag} not in {words}"
    return words[words.index(flag) + 1]


@pytest.fixture
def readme_env(cluster: Any, namespace: Namespace) -> Iterator[dict[str, str]]:
    """The environment of the README's shells: make dev's exports, the fresh namespace made current."""
    cluster.install_function(namespace.namespace)  # as make dev runs it in `default`
    with tempfile.TemporaryDirectory(prefix="readme-") as tmp:
        kubeconfig = Path(tmp) / "kubeconfig"
        kubeconfig.write_bytes(Path(cluster.kubeconfig).read_bytes())
        subprocess.run(
            [
                tool("kubectl"),
                "--kubeconfig",
                str(kubeconfig),
                "config",
                "set-context",
                "--current",
                f"--namespace={namespace.namespace}",
            ],
            check=True,
            capture_output=True,
        )
        # `make dev` prints: export KUBECONFIG=... PATH=<testenv>/bin:<venv>/bin:$PATH
        path = f"{BIN}:{Path(sys.executable).parent}:{os.environ['PATH']}"
        yield {**os.environ, "KUBECONFIG": str(kubeconfig), "PATH": path}


def _connecting(pgid: int, program: str) -> bool:
    """Whether a process of the group runs `program` and holds a socket: mosquitto_sub subscribes as
    soon as the broker accepts its connection, well before the next shell's commands publish."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            group = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
            if group != pgid or (proc / "comm").read_text().strip() != program:
                continue
            return any(os.readlink(fd).startswith("socket:") for fd in (proc / "fd").iterdir())
        except (OSError, ValueError, IndexError):
            continue
    return False


def _run(block: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        ["bash", "-e", "-c", block],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
    )
    assert proc.returncode == 0, (
        f"README block failed ({proc.returncode}):\n{block}\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc.stdout


@contextmanager
def _in_background(block: str, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """The block in its own shell and process group, its output in a file; the group stopped at exit."""
    with tempfile.TemporaryDirectory(prefix="readme-listener-") as tmp:
        output = Path(tmp) / "output"
        with output.open("wb") as out:
            shell = subprocess.Popen(
                ["bash", "-e", "-c", block],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # bash and mosquitto_sub stop together
            )
        try:
            yield shell, output
        finally:
            with suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGTERM)
            shell.wait(10)


def _wait_connecting(shell: subprocess.Popen[bytes], output: Path, program: str) -> None:
    wait_for(
        f"{program} connecting",
        lambda: shell.poll() is not None or _connecting(shell.pid, program),
        timeout=30,
    )
    assert shell.poll() is None, f"{program} exited ({shell.returncode}):\n{output.read_text()}"


@pytest.mark.node_only("the README's quickstart is make dev's: its Kafka, RocketMQ, function, Pod addresses")
def test_the_readme_quickstart_runs_as_written(cluster: Any, readme_env: dict[str, str]) -> None:
    blocks = quickstart_blocks(README.read_text())
    listeners = [b for b in blocks if re.search(r"^mosquitto_sub ", b, re.M)]
    assert len(listeners) == 1, f"expected one block with the mosquitto_sub listener, found {len(listeners)}"
    (listener_block,) = listeners
    # Only the listener may run long: it must be its block's last command, so the rest of the block
    # (its variables) runs before it as in the README's shell.
    assert listener_block.rstrip().splitlines()[-1].startswith("mosquitto_sub "), listener_block
    publish = _command(blocks[-1], "mosquitto_pub")
    topic, report = _option(publish, "-t"), _option(publish, "-m")
    plate = json.loads(report)["plate"]
    heard_line = f"{topic} {report}"  # mosquitto_sub -v prints the topic, a space, the payload

    outputs: list[str] = []
    with ExitStack() as background:
        listener: tuple[subprocess.Popen[bytes], Path] | None = None
        for block in blocks:
            if block is not listener_block:
                outputs.append(_run(block, readme_env))
                continue
            listener = background.enter_context(_in_background(block, readme_env))
            _wait_connecting(*listener, "mosquitto_sub")
            outputs.append("")
        assert listener is not None
        shell, heard = listener
        wait_for(
            "the dashboard hearing the car's report",
            lambda: shell.poll() is not None or heard_line in heard.read_text().splitlines(),
            timeout=LISTENER_TIMEOUT,
        )
        listened = heard.read_text()

    # The dashboard, allowed to read vehicles/+/state, heard the car's report.
    assert heard_line in listened.splitlines(), listened
    # kcat's '%k %s\n': the KafkaConnector's record, keyed by the plate from the payload, its value the
    # envelope of the MQTT message (at least once: a duplicate would be allowed).
    records = [line for line in outputs[-1].splitlines() if line.startswith(f"{plate} ")]
    assert records, outputs[-1]
    envelope = json.loads(records[0][len(plate) + 1 :])
    assert envelope["topic"] == topic
    assert json.loads(envelope["payload"]) == json.loads(report)
