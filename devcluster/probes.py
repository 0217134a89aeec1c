"""Container probes, as a kubelet runs them: httpGet and tcpSocket against the Pod's address.

exec and grpc probes are not run (they count as passing, and the runner logs that once).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Kubernetes' defaults.
PERIOD = 10
TIMEOUT = 1
FAILURES = 3
SUCCESSES = 1


@dataclass(frozen=True)
class Probe:
    spec: Mapping[str, Any]
    container: Mapping[str, Any]
    pod_ip: str

    @property
    def initial_delay(self) -> float:
        return float(self.spec.get("initialDelaySeconds", 0))

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", PERIOD))

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds", TIMEOUT))

    @property
    def failure_threshold(self) -> int:
        return int(self.spec.get("failureThreshold", FAILURES))

    @property
    def success_threshold(self) -> int:
        return int(self.spec.get("successThreshold", SUCCESSES))

    @property
    def supported(self) -> bool:
        return "httpGet" in self.spec or "tcpSocket" in self.spec

    def port(self, value: int | str) -> int:
        """A port number, or a container port's name."""
        if isinstance(value, int) or str(value).isdigit():
            return int(value)
        for port in self.container.get("ports") or []:
            if port.get("name") == value:
                return int(port["containerPort"])
        raise ValueError(f"probe names port {value!r}, which the container does not declare")

    async def check(self) -> bool:
        """One attempt: True when the probe passes within its timeout."""
        try:
            return await asyncio.wait_for(self._attempt(), self.timeout)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            return False

    async def _attempt(self) -> bool:
        if "tcpSocket" in self.spec:
            tcp = self.spec["tcpSocket"]
            _, writer = await asyncio.open_connection(tcp.get("host") or self.pod_ip, self.port(tcp["port"]))
            writer.close()
            return True
        if "httpGet" in self.spec:
            return await self._http_get(self.spec["httpGet"])
        return True

    async def _http_get(self, get: Mapping[str, Any]) -> bool:
        host = get.get("host") or self.pod_ip
        tls = None
        if str(get.get("scheme", "HTTP")).upper() == "HTTPS":
            tls = ssl.create_default_context()
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE  # a kubelet does not verify either
        reader, writer = await asyncio.open_connection(host, self.port(get["port"]), ssl=tls)
        try:
            headers = "".join(f"{h['name']}: {h['value']}\r\n" for h in get.get("httpHeaders") or [])
            request = (
                f"GET {get.get('path') or '/'} HTTP/1.1\r\nHost: {host}\r\n"
                f"User-Agent: kube-probe/devcluster\r\n{headers}Connection: close\r\n\r\n"
            )
            writer.write(request.encode())
            await writer.drain()
            status_line = await reader.readline()
        finally:
            writer.close()
        parts = status_line.split()
        return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400
