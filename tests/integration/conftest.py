"""Fixtures of the integration tests beyond the shared ones in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_bridge_helpers import no_drop_broker

from testenv.mosquitto import Mosquitto
from testenv.rocketmq import RocketMQ


@pytest.fixture(scope="session")
def rocketmq_cluster() -> Iterator[RocketMQ]:
    """A one-node RocketMQ 5: name server + proxy in local mode; clients use `rocketmq_cluster.endpoint`.

    Topics and consumer groups are not created on demand: `create_topic()` and `create_group()` first.
    """
    cluster = RocketMQ().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def no_drop_mosquitto() -> Iterator[Mosquitto]:
    """A Mosquitto broker that keeps every message for slow subscribers (test_bridge_helpers.NO_DROP_CONF)."""
    broker = no_drop_broker()
    yield broker
    broker.stop()
