"""One admin connection per broker, reused across reconciles and replaced when its address or
credentials change."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from mqtt_operator.broker.client import DynsecClient


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str
    password: str


class BrokerPool:
    def __init__(self, timeout: float = 10.0) -> None:
        self._clients: dict[tuple[str, str], tuple[BrokerAddress, DynsecClient]] = {}
        self._lock = asyncio.Lock()
        self.timeout = timeout

    async def client(self, key: tuple[str, str], address: BrokerAddress) -> DynsecClient:
        """A connected client for broker `key` (namespace, instance); raises BrokerUnreachable."""
        async with self._lock:
            current = self._clients.get(key)
            if current is not None and current[0] != address:
                await current[1].close()
                current = None
            if current is None:
                client = DynsecClient(
                    address.host, address.port, address.username, address.password, timeout=self.timeout
                )
                self._clients[key] = (address, client)
            else:
                client = current[1]
        await client.connect()
        return client

    async def forget(self, key: tuple[str, str]) -> None:
        async with self._lock:
            current = self._clients.pop(key, None)
        if current is not None:
            await current[1].close()

    async def close(self) -> None:
        for key in list(self._clients):
            await self.forget(key)
