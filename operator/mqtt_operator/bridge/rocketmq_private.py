"""Every use of rocketmq-python-client's private or internal API, in one place (the fence).

`rocketmq_client.py` drives the client below its public API (see that module's doc for why: its
per-message calls are too slow for a bridge). Everything it takes from the client that is not the
public API (`rocketmq.Producer`, `SimpleConsumer`, `ClientConfiguration`, `Credentials`,
`FilterExpression`, and the protocol's generated messages in `rocketmq.grpc_protocol`) goes through
the functions here. Checked against rocketmq-python-client 5.1.2 (`CHECKED_VERSION`; pinned exactly
in pyproject.toml). What is used, and why:

- `rocketmq.v5.log.log_config` (module, replaced in `sys.modules` by `install_log_stub`): importing
  it calls `logging.config.dictConfig` (closing every handler of the process) and creates
  $HOME/logs/rocketmq_python; the package `rocketmq.v5.log` only reads `logger` from it.
- `Client._retrieve_topic_route_data(topic)` (`retrieve_topic_route`): fills the client's own route
  cache, which drives its heartbeats and its telemetry (settings) stream.
- `Client._rpc_channel_io_loop()` (`client_loop`): the event loop (thread of the client's own) on
  which it creates its gRPC calls; a streamed ReceiveMessage and `on_new_endpoints` must run there.
- `Client._init_settings_event` (instance attribute, `settings_event`): set when the proxy has
  answered the client's settings; a receive before fails with "settings is null".
- `Client.on_new_endpoints(endpoints)` (`send_settings`): opens a new telemetry stream and sends the
  settings again (the client itself does so only every 5 minutes; a restarted proxy lost them).
- `SimpleConsumer.reset_setting(settings)`, replaced on the instance (`on_settings`): the proxy's
  answer to the settings, `Settings.subscription.fifo` tells whether the group is FIFO.
- `Client.rpc_client` (an `RpcClient`) and `Client.sign()`: the client's gRPC channel and signed
  request metadata; the RpcClient's `query_topic_route_async`, `send_message_async`,
  `ack_message_async`, `change_invisible_duration_async`, `forward_message_to_dead_letter_queue_async`
  (`unary_call`, each `(endpoints, req, metadata=, timeout=)`, a concurrent.futures future) and the
  coroutine `receive_message` (`receive_message`, a streaming call): one request for many messages.
- `ClientConfiguration.rpc_endpoints`, `rocketmq.v5.client.connection.RpcEndpoints(pb_endpoints)`
  and its `endpoints`: the proxy's address for a QueryRoute, and a route's broker as a call target.
- `rocketmq.v5.util.MessageIdCodec().next_message_id()`: message ids as the client makes them.

On an upgrade: `tests/unit/test_rocketmq_private.py` runs `check()`, which names every attribute of
`RELIED_ON` the installed client lacks (or whose call shape changed) and fails while the installed
version is not `CHECKED_VERSION`. Re-read the client's code for each entry above, adjust this module,
then `CHECKED_VERSION` and the pin; the RocketMQ integration tests tell whether the behaviour held.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import inspect
import logging
import sys
import threading
import types
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, get_args

DISTRIBUTION: Final = "rocketmq-python-client"
CHECKED_VERSION: Final = "5.1.2"
LOG_CONFIG_MODULE: Final = "rocketmq.v5.log.log_config"


class Relied(NamedTuple):
    """One private or internal attribute this module uses, as `check()` verifies it."""

    owner: str  # "package.module" or "package.module:Class"
    name: str  # the attribute ("" for the module or class itself)
    kind: str  # module | class | method | coroutine | property | instance attribute | field
    call: tuple[int, tuple[str, ...]] = (0, ())  # methods: positional arguments, keyword names


_RPC: Final = (2, ("metadata", "timeout"))
# The RpcClient's unary calls (`unary_call`), each `(endpoints, req, metadata=, timeout=)`.
Unary = Literal[
    "query_topic_route_async",
    "send_message_async",
    "ack_message_async",
    "change_invisible_duration_async",
    "forward_message_to_dead_letter_queue_async",
]

RELIED_ON: Final[tuple[Relied, ...]] = (
    Relied("rocketmq.v5.log", "log_config", "module"),
    Relied("rocketmq.v5.client.client:Client", "_retrieve_topic_route_data", "method", (1, ())),
    Relied("rocketmq.v5.client.client:Client", "_rpc_channel_io_loop", "method"),
    Relied("rocketmq.v5.client.client:Client", "_init_settings_event", "instance attribute"),
    Relied("rocketmq.v5.client.client:Client", "on_new_endpoints", "method", (1, ())),
    Relied("rocketmq.v5.client.client:Client", "sign", "method"),
    Relied("rocketmq.v5.client.client:Client", "rpc_client", "property"),
    Relied("rocketmq.v5.consumer:SimpleConsumer", "reset_setting", "method", (1, ())),
    Relied("rocketmq.grpc_protocol:Settings", "subscription.fifo", "field"),
    *(Relied("rocketmq.v5.client.connection:RpcClient", name, "method", _RPC) for name in get_args(Unary)),
    Relied("rocketmq.v5.client.connection:RpcClient", "receive_message", "coroutine", _RPC),
    Relied("rocketmq.v5.client:ClientConfiguration", "rpc_endpoints", "property"),
    Relied("rocketmq.v5.client.connection:RpcEndpoints", "", "class", (1, ())),
    Relied("rocketmq.v5.client.connection:RpcEndpoints", "endpoints", "property"),
    Relied("rocketmq.v5.util:MessageIdCodec", "", "class"),
    Relied("rocketmq.v5.util:MessageIdCodec", "next_message_id", "method"),
)


# --- the uses -------------------------------------------------------------------------------------


def install_log_stub(logger: logging.Logger) -> None:
    """Before `import rocketmq`: its log package reads `logger` from a module of ours, not its own."""
    if LOG_CONFIG_MODULE not in sys.modules:
        stub = types.ModuleType(LOG_CONFIG_MODULE)
        stub.logger = logger  # type: ignore[attr-defined]
        sys.modules[stub.__name__] = stub


def retrieve_topic_route(client: Any, topic: str) -> Any:
    """The client's own route lookup (blocking): its heartbeats and settings stream follow the route."""
    return client._retrieve_topic_route_data(topic)


def client_loop(client: Any) -> asyncio.AbstractEventLoop:
    """The event loop (in the client's thread) on which the client makes its gRPC calls."""
    loop: asyncio.AbstractEventLoop = client._rpc_channel_io_loop()
    return loop


def settings_event(client: Any) -> threading.Event | None:
    """Set once the proxy has taken the client's settings; None after shutdown()."""
    event: threading.Event | None = getattr(client, "_init_settings_event", None)
    return event


def send_settings(client: Any, endpoints: Any) -> None:
    """A new telemetry stream to `endpoints` with the client's settings, opened on the client's loop."""
    client_loop(client).call_soon_threadsafe(client.on_new_endpoints, endpoints)


def on_settings(consumer: Any, hook: Callable[[Any], None]) -> None:
    """Call `hook(settings)` (a `Settings` message) whenever the proxy answers the consumer's settings."""
    original = consumer.reset_setting

    def reset_setting(settings: Any) -> None:
        hook(settings)
        original(settings)

    consumer.reset_setting = reset_setting


def proxy_endpoints(configuration: Any) -> Any:
    """The configured proxy address (an `RpcEndpoints`)."""
    return configuration.rpc_endpoints


def endpoints_message(endpoints: Any) -> Any:
    """The `Endpoints` protobuf message of an `RpcEndpoints`."""
    return endpoints.endpoints


def rpc_endpoints(pb_endpoints: Any) -> Any:
    """An `RpcEndpoints` (a call target) for a route's broker `Endpoints` message."""
    return importlib.import_module("rocketmq.v5.client.connection").RpcEndpoints(pb_endpoints)


def message_id_codec() -> Any:
    """The client's generator of message ids (`next_message_id()`)."""
    return importlib.import_module("rocketmq.v5.util").MessageIdCodec()


def unary_call(client: Any, method: Unary, endpoints: Any, req: Any, timeout_s: float) -> Future[Any]:
    """One of the RpcClient's unary calls, with the client's signed metadata: a concurrent.futures future."""
    call = getattr(client.rpc_client, method)
    return call(endpoints, req, metadata=client.sign(), timeout=timeout_s)  # type: ignore[no-any-return]


async def receive_message(client: Any, endpoints: Any, req: Any, timeout_s: float) -> Any:
    """The streamed ReceiveMessage call; run this on `client_loop(client)`."""
    return await client.rpc_client.receive_message(endpoints, req, metadata=client.sign(), timeout=timeout_s)


# --- the check ------------------------------------------------------------------------------------


def check(relied: Sequence[Relied] = RELIED_ON) -> list[str]:
    """What the installed client lacks of `relied` (and a version other than the one checked), as sentences.

    Load the client first (`rocketmq_client.load_client()`): importing it unfenced configures logging.
    """
    problems: list[str] = []
    try:
        version = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    if version != CHECKED_VERSION:
        problems.append(
            f"{DISTRIBUTION} {version} is installed, bridge/rocketmq_private.py was checked against "
            f"{CHECKED_VERSION}: re-check every private attribute it lists, then update CHECKED_VERSION and "
            "the pin in pyproject.toml"
        )
    for item in relied:
        fault = _fault(item)
        if fault is not None:
            where = f"{item.owner}.{item.name}" if item.name else item.owner
            problems.append(
                f"{where} ({item.kind}): {fault} in {DISTRIBUTION} {version}; bridge/rocketmq_private.py "
                f"relies on it (checked against {CHECKED_VERSION}): re-check the module against this version"
            )
    return problems


def _fault(item: Relied) -> str | None:
    module_name, _, class_name = item.owner.partition(":")
    try:
        owner: Any = importlib.import_module(module_name)
        if class_name:
            owner = getattr(owner, class_name)
    except (ImportError, AttributeError) as err:
        return f"{item.owner} is missing ({err})"
    if item.kind == "module":
        # Not imported (the stub stands in for it): the file must be there beside its package.
        paths = getattr(owner, "__path__", [])
        if not any((Path(p) / f"{item.name}.py").is_file() for p in paths):
            return "the module is missing"
        if getattr(owner, "logger", None) is not getattr(sys.modules.get(LOG_CONFIG_MODULE), "logger", 0):
            return "the package no longer takes `logger` from it"
        return None
    if item.kind == "class":
        return _call_fault(owner, item.call, bound=False)
    if item.kind == "instance attribute":
        try:
            source = inspect.getsource(owner.__init__)
        except (OSError, TypeError):
            return "the class's __init__ has no source to look in"
        return None if f"self.{item.name} =" in source else "__init__ no longer sets it"
    if item.kind == "field":
        descriptor = owner.DESCRIPTOR
        for part in item.name.split("."):
            field = descriptor.fields_by_name.get(part) if descriptor is not None else None
            if field is None:
                return f"the message has no field {part!r}"
            descriptor = field.message_type
        return None
    try:
        attr = inspect.getattr_static(owner, item.name)
    except AttributeError:
        return "it is missing"
    if item.kind == "property":
        return None if isinstance(attr, property) else f"it is a {type(attr).__name__}, not a property"
    if not callable(attr):
        return f"it is a {type(attr).__name__}, not a method"
    if item.kind == "coroutine" and not inspect.iscoroutinefunction(attr):
        return "it is no longer a coroutine function"
    return _call_fault(attr, item.call, bound=True)


def _call_fault(target: Any, call: tuple[int, tuple[str, ...]], *, bound: bool) -> str | None:
    """Does `target` take `call` (positional count, keyword names), after `self` for a method?"""
    positional, keywords = call
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return None  # a builtin without a signature: nothing to compare
    args = [None] * (positional + (1 if bound else 0))
    try:
        signature.bind(*args, **dict.fromkeys(keywords))
    except TypeError as err:
        shape = ", ".join(["arg"] * positional + [f"{k}=" for k in keywords])
        return f"it no longer takes ({shape}): {err}; its signature is now {signature}"
    return None
