"""Fixtures that start the real components of the test environment on free loopback ports.

A component that cannot start fails the tests that need it, with its log in the error; nothing is
skipped. Slow starters (the control plane, Kafka) are session-scoped.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testenv.kafka import Kafka
from testenv.kube import ControlPlane
from testenv.mosquitto import Mosquitto

REPO = Path(__file__).resolve().parent.parent
CRDS = REPO / "crds"
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver with RBAC and an admin kubeconfig (`control_plane.kubeconfig`)."""
    cp = ControlPlane().start()
    yield cp
    cp.stop()


@pytest.fixture(scope="session")
def crds_installed(control_plane: ControlPlane) -> ControlPlane:
    """The six CRDs from crds/ applied and Established."""
    control_plane.kubectl("apply", "--server-side", "-f", str(CRDS))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))
    return control_plane


@pytest.fixture
def namespace(control_plane: ControlPlane) -> str:
    """A fresh namespace per test (no namespace controller runs, so it is never deleted)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.kubectl("create", "namespace", name)
    return name


@pytest.fixture(scope="session")
def kafka() -> Iterator[Kafka]:
    """A one-node KRaft Kafka; `kafka.bootstrap` is host:port."""
    broker = Kafka().start()
    yield broker
    broker.stop()


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A Mosquitto broker allowing anonymous clients; tests needing another config build their own."""
    broker = Mosquitto().start()
    yield broker
    broker.stop()
