"""The fence around rocketmq-python-client's internals (bridge/rocketmq_private.py) still fits the installed
client: every private attribute it relies on exists, with the call shape it uses.

When this fails after an upgrade of the client: re-check bridge/rocketmq_private.py against the new
version (each entry of its doc), then update its CHECKED_VERSION and the pin in pyproject.toml."""

from __future__ import annotations

import pytest

from mqtt_operator.bridge import rocketmq_private as private
from mqtt_operator.bridge.rocketmq_client import load_client


@pytest.fixture(autouse=True)
def _client_loaded() -> None:
    # Imported through the worker's loader: without its stub the import configures the process's logging.
    load_client()


def test_every_private_attribute_the_fence_relies_on_is_in_the_installed_client() -> None:
    problems = private.check()
    assert not problems, "rocketmq-python-client no longer fits bridge/rocketmq_private.py:\n" + "\n".join(
        problems
    )


def test_the_check_names_what_is_missing_and_says_what_to_do() -> None:
    fake = [
        private.Relied("rocketmq.v5.client.client:Client", "_no_such_private_method", "method"),
        private.Relied("rocketmq.v5.client.client:Client", "_no_such_event", "instance attribute"),
        private.Relied("rocketmq.v5.client.client:Client", "_rpc_channel_io_loop", "method", (2, ())),
        private.Relied("rocketmq.v5.client.connection:RpcClient", "send_message_async", "coroutine"),
        private.Relied("rocketmq.v5.client.client:Client", "sign", "property"),
        private.Relied("rocketmq.grpc_protocol:Settings", "subscription.no_such_field", "field"),
        private.Relied("rocketmq.v5.no_such_module:Thing", "x", "method"),
        private.Relied("rocketmq.v5.log", "no_such_log_module", "module"),
    ]
    problems = private.check(fake)
    assert len(problems) == len(fake), problems
    expected = [
        "Client._no_such_private_method (method): it is missing",
        "Client._no_such_event (instance attribute): __init__ no longer sets it",
        "Client._rpc_channel_io_loop (method): it no longer takes (arg, arg)",
        "RpcClient.send_message_async (coroutine): it is no longer a coroutine function",
        "Client.sign (property): it is a function, not a property",
        "Settings.subscription.no_such_field (field): the message has no field 'no_such_field'",
        "rocketmq.v5.no_such_module:Thing.x (method): rocketmq.v5.no_such_module:Thing is missing",
        "rocketmq.v5.log.no_such_log_module (module): the module is missing",
    ]
    for problem, start in zip(problems, expected, strict=True):
        assert start in problem
        assert problem.endswith("re-check the module against this version"), problem
        assert "checked against 5.1.2" in problem


def test_the_check_fails_on_a_version_other_than_the_one_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(private.importlib.metadata, "version", lambda name: "5.9.0")
    (problem,) = private.check([])
    assert problem.startswith("rocketmq-python-client 5.9.0 is installed")
    assert "re-check every private attribute" in problem and "pyproject.toml" in problem
