"""JSON log lines, and secrets never reaching them."""

from __future__ import annotations

import json
import logging

from mqtt_operator import logs


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("mqtt_operator.test", logging.DEBUG, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_line_carries_level_logger_message_object_and_extras() -> None:
    line = logs.JsonFormatter().format(
        record("reconciled %s", "x", k8s_ref={"kind": "AuthUser", "namespace": "ns", "name": "u"}, attempt=2)
    )
    entry = json.loads(line)
    assert entry["level"] == "debug"
    assert entry["message"] == "reconciled x"
    assert entry["object"] == {"kind": "AuthUser", "namespace": "ns", "name": "u"}
    assert entry["attempt"] == 2


def test_registered_secret_is_redacted_in_every_format() -> None:
    secret = "s3cr3t-Pa55w0rd-xyz"
    logs.register_secret(secret)
    for formatter in (logs.JsonFormatter(), logs.TextFormatter()):
        out = formatter.format(record("password is %s", secret, detail={"password": secret}))
        assert secret not in out
        assert logs.REDACTED in out


def test_short_values_are_not_registered() -> None:
    logs.register_secret("abc")
    assert logs.redact("abc abc") == "abc abc"


def test_every_occurrence_of_overlapping_and_adjacent_secrets_is_redacted() -> None:
    logs.register_secret("abcdef-secret-one")
    logs.register_secret("abcdef-secret-one-longer")
    line = "a=abcdef-secret-one-longer;b=abcdef-secret-one abcdef-secret-oneabcdef-secret-one"
    assert logs.redact(line) == "a=***;b=*** ******"


def test_redaction_stays_correct_with_thousands_of_secrets() -> None:
    import secrets

    many = [secrets.token_urlsafe(32) for _ in range(3000)]
    for value in many:
        logs.register_secret(value)
    line = f"first {many[0]} middle {many[1500]} last {many[-1]}"
    assert logs.redact(line) == "first *** middle *** last ***"
