"""argocd/ is what hack/argocd_health.py makes of argocd/health.lua: the one source of the six checks."""

from __future__ import annotations

from hack import argocd_health


def test_generated_files_match_the_source() -> None:
    assert argocd_health.differences() == [], "run `python hack/argocd_health.py`"


def test_every_kind_has_its_check_and_cases() -> None:
    for kind in (
        "MqttInstance",
        "AuthUser",
        "AclPolicy",
        "KafkaConnector",
        "ReplicationTask",
        "FunctionTrigger",
    ):
        folder = argocd_health.kind_dir(kind)
        assert (folder / "health.lua").is_file(), kind
        assert (folder / "health_test.yaml").is_file(), kind
        assert list((folder / "testdata").glob("*.yaml")), kind
