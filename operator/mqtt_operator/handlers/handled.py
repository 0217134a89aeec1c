"""What kopf remembers of each object between two events, kept in the operator's memory, not in the object.

kopf's defaults write two things into every object it handles: the "last handled configuration" (the
whole spec, as an annotation) after each successful handling, and each handler's progress (retries,
delays) while one is retrying. For a thousand AuthUsers that is a thousand extra PATCHes on the way to
Ready, and a second copy of every spec in etcd and in every watch event. Nothing here needs them:

- every handler reconciles the whole object; none reads kopf's `diff`, `old` or `new`. The diff base
  only has to tell "handled already" from "changed since": a digest of what kopf compares (spec, labels,
  annotations) per object uid answers that;
- after a restart the memory is empty, so kopf sees every object as new and runs its creation handler,
  which is the same reconcile as the resume handler it ran before: every object is still reconciled,
  and one whose status is already right is not written to (handlers/reconcile.record);
- a retrying handler's record lives here too; kopf still "touches" the object (one annotation patch)
  when a retry is due, because a watch event is what wakes its per-object worker.

Objects written by an older operator carry `kopf.mqtt-operator.io/last-handled-configuration`: it is
removed in the first write kopf makes after handling them, so once per object and release.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import kopf

from mqtt_operator.api.kinds import GROUP

# kopf ignores changes to annotations under its own storage prefix; it must not be our API group,
# or adding the pause annotation (mqtt-operator.io/...) would not trigger a reconcile.
KOPF_PREFIX = f"kopf.{GROUP}"
LEGACY_DIFF_BASE_KEY = "last-handled-configuration"


def _uid(body: kopf.Body) -> str:
    meta = body.get("metadata") or {}
    return str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")


def _digest(essence: Any) -> bytes:
    text = json.dumps(essence, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class MemoryProgressStorage(kopf.AnnotationsProgressStorage):
    """Handlers' progress records in memory; `touch` and `clear` stay kopf's (annotations under `prefix`)."""

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix=prefix)
        self._records: dict[str, dict[str, kopf.ProgressRecord]] = {}

    def fetch(self, *, key: Any, body: kopf.Body) -> kopf.ProgressRecord | None:
        return self._records.get(_uid(body), {}).get(key)

    def store(self, *, key: Any, record: kopf.ProgressRecord, body: kopf.Body, patch: kopf.Patch) -> None:
        self._records.setdefault(_uid(body), {})[key] = record

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        records = self._records.get(_uid(body))
        if records is not None:
            records.pop(key, None)
            if not records:
                del self._records[_uid(body)]
        # A record an older operator left as an annotation goes with the next write kopf makes.
        super().purge(key=key, body=body, patch=patch)

    def forget(self, uid: str) -> None:
        self._records.pop(uid, None)


class MemoryDiffBaseStorage(kopf.DiffBaseStorage):
    """A digest of each object's last handled essence; kopf diffs against the live one when it matches."""

    def __init__(self, progress: kopf.ProgressStorage, prefix: str) -> None:
        super().__init__()
        self.progress = progress
        self.legacy = kopf.AnnotationsDiffBaseStorage(prefix=prefix, key=LEGACY_DIFF_BASE_KEY)
        self._digests: dict[str, bytes] = {}

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        digest = self._digests.get(_uid(body))
        if digest is None:
            return None  # never handled by this process: kopf calls it a creation
        # What kopf compares with: the essence it builds, without its own annotations.
        live = self.progress.clear(essence=self.build(body=body))
        # Unchanged: the live essence itself (no diff). Changed: an empty one, so kopf sees an update;
        # its diff is not the real one, which no handler here reads.
        return live if _digest(live) == digest else kopf.BodyEssence()

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        self._digests[_uid(body)] = _digest(essence)
        for key in self.legacy.make_keys(LEGACY_DIFF_BASE_KEY, body=body):
            if key in body.metadata.annotations:
                patch.metadata.annotations[key] = None

    def forget(self, uid: str) -> None:
        self._digests.pop(uid, None)


class HandledMemory:
    """The two storages kopf is given (runner.configure_kopf), and forgetting a deleted object in both."""

    def __init__(self, prefix: str = KOPF_PREFIX) -> None:
        self.progress = MemoryProgressStorage(prefix)
        self.diffbase = MemoryDiffBaseStorage(self.progress, prefix)

    def forget(self, uid: str) -> None:
        self.progress.forget(uid)
        self.diffbase.forget(uid)
