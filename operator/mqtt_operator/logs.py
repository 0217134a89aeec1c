"""Structured JSON logging for the operator and the bridge workers, with secret redaction.

Every secret value the process learns (generated passwords, passwords read from Secrets) is
registered here; the formatter replaces it wherever it would appear, so not even DEBUG logs of
objects or exceptions can carry it.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any, Literal

REDACTED = "***"
_PLAIN = (str, int, float, bool, list, tuple, dict, type(None))
# Secrets are found by their first _KEY characters: a line is scanned once, position by position,
# with a set lookup each, so the cost does not grow with the thousands of passwords a fleet has.
_KEY = 6
_by_prefix: dict[str, tuple[str, ...]] = {}
_lock = threading.Lock()

# Attributes every LogRecord has; anything else in record.__dict__ came in through `extra=`.
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def register_secret(value: str | bytes | None) -> None:
    """Make sure `value` never appears in a log line written from now on."""
    if not value:
        return
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    # Very short values would redact ordinary words; passwords we generate are long.
    if len(text) < _KEY:
        return
    with _lock:
        same_prefix = _by_prefix.get(text[:_KEY], ())
        if text not in same_prefix:
            _by_prefix[text[:_KEY]] = tuple(sorted((*same_prefix, text), key=len, reverse=True))


def redact(text: str) -> str:
    if not _by_prefix:
        return text
    out: list[str] = []
    i = done = 0
    while i <= len(text) - _KEY:
        candidates = _by_prefix.get(text[i : i + _KEY])
        match = next((s for s in candidates if text.startswith(s, i)), None) if candidates else None
        if match is None:
            i += 1
            continue
        out.append(text[done:i])
        out.append(REDACTED)
        i = done = i + len(match)
    if not out:
        return text
    out.append(text[done:])
    return "".join(out)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the kopf object reference, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict):
            entry["object"] = {k: ref[k] for k in ("kind", "namespace", "name") if ref.get(k)}
        for key, value in record.__dict__.items():
            # kopf attaches its whole settings object to each record: only plain data is kept.
            if (
                key not in _STANDARD_ATTRS
                and not key.startswith("k8s_")
                and key not in entry
                and isinstance(value, _PLAIN)
            ):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure(level: str = "info", fmt: Literal["json", "text"] = "json") -> None:
    """Send every logger's records to stderr in the chosen format; idempotent."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access logs and asyncio's debug chatter are noise at every level.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    # kopf says "Handler ... succeeded" and "... is processed" at info for every handler of every
    # object: thousands of lines for a thousand accounts, and a measurable share of the operator's CPU.
    # Our own info logs say what was done; kopf's warnings and errors (a failed handler) stay.
    if root.level > logging.DEBUG:
        logging.getLogger("kopf.objects").setLevel(max(root.level, logging.WARNING))
