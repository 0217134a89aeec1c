"""The base of every spec model: frozen, camelCase aliases matching the CRD, unknown fields refused."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel)


class LocalObjectRef(Model):
    """A reference by name to an object in the same namespace."""

    name: str


class SecretKeyRef(Model):
    name: str
    key: str = "password"


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> float:
    """'1h30m' -> 5400.0; the CRD's pattern already guarantees the syntax."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 2h, 1h30m)")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_SUFFIX = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def quantity_bytes(value: int | str) -> int:
    """2097152 or '2Mi' -> 2097152."""
    if isinstance(value, int):
        return value
    match = _QUANTITY.match(value)
    if not match:
        raise ValueError(f"not a byte quantity: {value!r} (use e.g. 1048576 or 1Mi)")
    return int(float(match.group(1)) * _SUFFIX[match.group(2)])
