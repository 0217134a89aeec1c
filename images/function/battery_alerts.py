"""battery-alerts: the HTTP function of examples/functiontrigger.yaml.

A car's battery report arrives as a CloudEvent: binary mode (the body is the report, `{"level": 17}`, the
event's attributes are `ce-*` headers), structured mode (`application/cloudevents+json`, the report in
`data`) or a batch (`application/cloudevents-batch+json`, a list of structured events). When a level is
below LOW_LEVEL (20 unless set in the environment) the function answers 200 with a JSON command, which the
trigger publishes back to the car on its reply topic; otherwise 204 and no body, so nothing is published.
A body that is not such a report gets 400 (the trigger does not retry it). Each call is logged on one line.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOW_LEVEL = float(os.environ.get("LOW_LEVEL", "20"))


def _levels(content_type: str, body: bytes) -> list[float]:
    """The battery levels a call carries; ValueError when the body is not a report."""
    document = json.loads(body)
    if content_type.startswith("application/cloudevents-batch+json"):
        reports = [event.get("data") for event in document]
    elif content_type.startswith("application/cloudevents+json"):
        reports = [document.get("data")]
    else:
        reports = [document]
    levels = []
    for report in reports:
        level = report.get("level") if isinstance(report, dict) else None
        if isinstance(level, bool) or not isinstance(level, int | float):
            raise ValueError(f'expected a report like {{"level": 17}}, got {report!r}')
        levels.append(level)
    return levels


def command(levels: list[float]) -> dict[str, Any] | None:
    """The command for the car when its battery is low, else None."""
    low = min(levels, default=LOW_LEVEL)
    if low >= LOW_LEVEL:
        return None
    return {"command": "notify-driver", "level": low}


class Handler(BaseHTTPRequestHandler):
    server_version = "battery-alerts/1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        subject = self.headers.get("ce-subject", "-")
        try:
            levels = _levels(self.headers.get("Content-Type", ""), body)
        except (ValueError, AttributeError, TypeError) as err:
            self._answer(400, {"error": str(err)}, f"subject={subject} bad report: {err}")
            return
        answer = command(levels)
        if answer is None:
            self._answer(204, None, f"subject={subject} levels={levels}")
        else:
            self._answer(200, answer, f"subject={subject} levels={levels} -> {answer['command']}")

    def do_GET(self) -> None:
        # A readiness probe's target.
        self._answer(200, {"status": "ok"}, None)

    def _answer(self, status: int, document: dict[str, Any] | None, line: str | None) -> None:
        # Logged before answering: a caller's next call cannot be logged ahead of this one.
        if line is not None:
            print(f"{self.command} {self.path} {status} {line}", flush=True)
        payload = b"" if document is None else json.dumps(document).encode()
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per call, written by _answer


def main() -> None:
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("", port), Handler)
    server.daemon_threads = True
    # As the container's pid 1 the process would ignore SIGTERM without a handler of its own.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"battery-alerts listening on :{port}, low below {LOW_LEVEL:g}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
