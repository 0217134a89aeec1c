"""argocd/ is what hack/argocd_health.py makes of argocd/health.lua: the one source of the six checks."""

from __future__ import annotations

import re

from hack import argocd_health

from mqtt_operator.api.kinds import ALL_KINDS


def test_generated_files_match_the_source() -> None:
    assert argocd_health.differences() == [], "run `python hack/argocd_health.py`"


def test_every_kind_has_its_check_and_cases() -> None:
    for kind in (k.kind for k in ALL_KINDS):
        folder = argocd_health.kind_dir(kind)
        assert (folder / "health.lua").is_file(), kind
        assert (folder / "health_test.yaml").is_file(), kind
        assert list((folder / "testdata").glob("*.yaml")), kind


def test_at_rest_reasons_are_the_operators() -> None:
    """The Ready=False reasons the check shows as Suspended are those the operator sets neither
    Reconciling nor Stalled for: what the spec asks for."""
    from mqtt_operator.controllers.outcome import AT_REST

    table = re.search(r"local at_rest = \{(.*)\}", argocd_health.SOURCE.read_text())
    assert table is not None, "argocd/health.lua has no `local at_rest = {...}` line"
    assert set(re.findall(r"(\w+) = true", table[1])) == set(AT_REST)
