"""What kopf remembers of an object, kept in memory (handlers/handled.py): the same causes as kopf's own
annotation storage would give (creation, nothing changed, update), without writing to the object."""

from __future__ import annotations

import copy
from typing import Any

import kopf

from mqtt_operator.api.kinds import PAUSE_ANNOTATION
from mqtt_operator.handlers.handled import KOPF_PREFIX, HandledMemory


def body(spec: dict[str, Any] | None = None, **annotations: str) -> kopf.Body:
    return kopf.Body(
        {
            "apiVersion": "mqtt-operator.io/v1alpha1",
            "kind": "AuthUser",
            "metadata": {"name": "u", "namespace": "ns", "uid": "uid-1", "annotations": annotations},
            "spec": spec if spec is not None else {"instanceRef": {"name": "devices"}},
            "status": {"observedGeneration": 1},
        }
    )


def old_and_new(memory: HandledMemory, live: kopf.Body) -> tuple[Any, Any]:
    """What kopf's processing compares (kopf/_core/reactor/processing.py, _detect_causes)."""
    old = memory.diffbase.fetch(body=live)
    new = memory.progress.clear(essence=memory.diffbase.build(body=live))
    return (memory.progress.clear(essence=old) if old is not None else None), new


def handled(memory: HandledMemory, live: kopf.Body) -> kopf.Patch:
    """What kopf does once the handlers succeeded: store the new essence as the diff base."""
    patch = kopf.Patch()
    memory.diffbase.store(body=live, patch=patch, essence=old_and_new(memory, live)[1])
    return patch


def test_an_object_never_handled_is_a_creation_and_storing_writes_nothing() -> None:
    memory = HandledMemory()
    live = body()
    assert old_and_new(memory, live)[0] is None  # kopf: Reason.CREATE
    assert not handled(memory, live)  # an empty patch: no request


def test_once_handled_status_and_kopf_annotations_are_no_change_but_spec_and_pause_are() -> None:
    memory = HandledMemory()
    handled(memory, body())
    old, new = old_and_new(memory, body())
    assert old == new  # kopf: Reason.NOOP (or RESUME at the first listing)
    touched = body(**{f"{KOPF_PREFIX}/touch-dummy": "2026-01-01T00:00:00"})
    status_only = copy.deepcopy(dict(body()))
    status_only["status"] = {"observedGeneration": 1, "conditions": []}
    for same in (touched, kopf.Body(status_only)):
        old, new = old_and_new(memory, same)
        assert old == new
    for changed in (body({"instanceRef": {"name": "other"}}), body(**{PAUSE_ANNOTATION: "true"})):
        old, new = old_and_new(memory, changed)
        assert old is not None and old != new  # kopf: Reason.UPDATE


def test_the_annotation_an_older_operator_wrote_goes_with_the_first_handling_only() -> None:
    memory = HandledMemory()
    legacy = f"{KOPF_PREFIX}/last-handled-configuration"
    live = body(**{legacy: '{"spec":{}}'})
    assert old_and_new(memory, live)[0] is None  # the annotation is not read: every object is handled
    assert handled(memory, live) == {"metadata": {"annotations": {legacy: None}}}
    assert not handled(memory, body())


def test_progress_records_are_kept_per_object_and_forgotten_with_it() -> None:
    memory = HandledMemory()
    live = body()
    record: kopf.ProgressRecord = {"retries": 1, "delayed": "2026-01-01T00:00:05"}
    patch = kopf.Patch()
    memory.progress.store(key=kopf.HandlerId("reconcile"), record=record, body=live, patch=patch)
    assert not patch
    assert memory.progress.fetch(key=kopf.HandlerId("reconcile"), body=live) == record
    memory.progress.purge(key=kopf.HandlerId("reconcile"), body=live, patch=patch)
    assert not patch
    assert memory.progress.fetch(key=kopf.HandlerId("reconcile"), body=live) is None
    memory.progress.store(key=kopf.HandlerId("reconcile"), record=record, body=live, patch=patch)
    handled(memory, live)
    memory.forget("uid-1")
    assert memory.progress.fetch(key=kopf.HandlerId("reconcile"), body=live) is None
    assert memory.diffbase.fetch(body=live) is None
