"""Dynamic security's file saved once per pass of the broker's loop (broker-plugin/dynsec_save.c), with the
operator's mosquitto.conf and the real broker: what is created is in the file, survives a restart, and
logs in; and the same broker without the option saves per command, as Mosquitto does.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_dynsec import bulk_accounts, sync
from test_mosquitto_conf import RenderedBroker, make_spec

from mqtt_operator.broker.client import DynsecClient
from mqtt_operator.resources.admin_secret import ADMIN_USERNAME
from testenv import device

pytestmark = pytest.mark.integration

COUNT = 300


@pytest.fixture
def admin_password() -> str:
    return secrets.token_urlsafe(18)


def _started(password: str, batched: bool) -> RenderedBroker:
    broker = RenderedBroker(make_spec())
    if not batched:
        conf = Path(broker.paths.config_file)
        conf.write_text(conf.read_text().replace("plugin_opt_dynsec_batch_saves on", ""))
    broker.run_init_container(password)
    return broker.start()


@pytest.fixture(params=[True, False], ids=["batched", "per-command"])
def broker(request: pytest.FixtureRequest, admin_password: str) -> Iterator[RenderedBroker]:
    started = _started(admin_password, request.param)
    yield started
    started.stop()


def _saved_usernames(broker: RenderedBroker) -> set[str]:
    saved = json.loads(Path(broker.paths.dynsec_file).read_text())
    return {c["username"] for c in saved.get("clients", [])}


def test_what_is_created_is_saved_and_survives_a_crash(broker: RenderedBroker, admin_password: str) -> None:
    batched = "plugin_opt_dynsec_batch_saves on" in Path(broker.paths.config_file).read_text()
    clients, roles = bulk_accounts(COUNT)

    async def create() -> float:
        async with DynsecClient(
            "127.0.0.1", broker.port(), ADMIN_USERNAME, admin_password, batch_size=100
        ) as admin:
            started = time.monotonic()
            await sync(admin, clients, roles)
            return time.monotonic() - started

    elapsed = asyncio.run(create())
    # The save due after the last batch is made at the end of that pass of the loop: by now.
    deadline = time.monotonic() + 5
    while {c.username for c in clients} - _saved_usernames(broker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {c.username for c in clients} <= _saved_usernames(broker)
    print(f"\n{'batched' if batched else 'per command'}: {3 * COUNT} commands applied in {elapsed:.2f} s")
    assert ("deferring dynamic-security saves" in broker.log) == batched
    # SIGKILL: no save at exit; what comes back is what the file held.
    assert broker.server is not None
    broker.server.kill()
    broker.server = None
    broker.start()
    assert device.connects(broker.port(), "bulk-299", "bulk-password-0299")
    assert not device.connects(broker.port(), "bulk-299", "wrong-password")
