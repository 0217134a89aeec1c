"""The chart's CRD templates are generated from crds/ (the one source of truth) and must not drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hack import sync_chart_crds
from hack.sync_chart_crds import SourceError, differences, render, sync

SOURCE = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.io
spec:
  group: example.io
  names: {kind: Widget, plural: widgets}
  scope: Namespaced
  versions:
    - name: v1
      schema:
        openAPIV3Schema:
          description: "a template-looking {{ value }} stays as written"
          type: object
"""

INSERTED = re.compile(
    r"^\s*(\{\{- (if \.Values\.crds\.(enabled|keep)|end|(omit \()?include \"mqtt-operator\.labels\" .*) \}\}"
    r"|\{\{- /\* generated from crds/ by make chart; do not edit \*/\}\}"
    r"|labels:|annotations:|helm\.sh/resource-policy: keep)\s*$"
)


def strip_insertions(rendered: str) -> str:
    """What is left of a generated template without the lines the sync script adds."""
    kept = [line for line in rendered.splitlines(keepends=True) if not INSERTED.match(line)]
    return "".join(kept).replace('{{ "{{" }}', "{{")


def test_chart_crds_match_crds_dir() -> None:
    sources = sorted(sync_chart_crds.CRDS_DIR.glob("*.yaml"))
    assert sources, f"{sync_chart_crds.CRDS_DIR} holds no CRD"
    found = differences()
    assert not found, "The chart's CRDs differ from crds/: run `make chart`.\n" + "\n".join(map(str, found))


def test_generated_template_is_the_source_plus_the_insertions() -> None:
    rendered = render(SOURCE, "widgets.example.io.yaml")
    assert rendered.startswith("{{- /* generated from crds/ by make chart; do not edit */}}\n")
    assert "{{- if .Values.crds.enabled }}\n" in rendered
    assert rendered.endswith("{{- end }}\n")
    assert strip_insertions(rendered) == SOURCE
    # Helm would otherwise read the `{{` of a description as a template action.
    assert '{{ "{{" }} value }}' in rendered


def test_existing_labels_and_annotations_are_extended_not_duplicated() -> None:
    source = SOURCE.replace(
        "  name: widgets.example.io\n",
        "  name: widgets.example.io\n  labels:\n    app.kubernetes.io/name: mqtt-operator\n    team: mqtt\n"
        "  annotations:\n    note: kept\n",
    )
    rendered = render(source, "widgets.example.io.yaml")
    assert rendered.count("labels:") == 1
    assert rendered.count("annotations:") == 1
    # The CRD's own labels win: the chart's are added without the keys the CRD already sets.
    chart_labels = (
        'omit (include "mqtt-operator.labels" . | fromYaml) "app.kubernetes.io/name" "team" | toYaml'
    )
    assert (
        f"  labels:\n    {{{{- {chart_labels} | nindent 4 }}}}\n    app.kubernetes.io/name: mqtt-operator\n"
        in (rendered)
    )
    assert (
        "    {{- if .Values.crds.keep }}\n    helm.sh/resource-policy: keep\n    {{- end }}\n    note: kept\n"
        in (rendered)
    )
    assert strip_insertions(rendered) == source.replace("  labels:\n", "").replace("  annotations:\n", "")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("kind: ConfigMap\nmetadata:\n  name: x\n", "not a CustomResourceDefinition"),
        (SOURCE + "---\n" + SOURCE, "exactly one CustomResourceDefinition"),
        (
            SOURCE.replace(
                "metadata:\n  name: widgets.example.io\n", "metadata: {name: widgets.example.io}\n"
            ),
            "block style",
        ),
    ],
)
def test_sources_the_chart_cannot_take_are_refused_with_a_reason(source: str, message: str) -> None:
    with pytest.raises(SourceError, match=re.escape(message)):
        render(source, "bad.yaml")


def test_sync_writes_deletes_stale_and_check_reports(tmp_path: Path) -> None:
    crds, chart = tmp_path / "crds", tmp_path / "chart"
    crds.mkdir()
    (crds / "widgets.example.io.yaml").write_text(SOURCE)
    chart.mkdir()
    (chart / "gone.example.io.yaml").write_text("old")
    args = ["--crds", str(crds), "--chart-crds", str(chart)]

    assert sync_chart_crds.main([*args, "--check"]) == 1
    assert (chart / "gone.example.io.yaml").exists(), "--check must write nothing"
    assert sync_chart_crds.main(args) == 0
    assert sorted(p.name for p in chart.iterdir()) == ["widgets.example.io.yaml"]
    assert sync_chart_crds.main([*args, "--check"]) == 0

    (crds / "widgets.example.io.yaml").write_text(SOURCE.replace("v1\n", "v2\n"))
    assert [d.reason for d in differences(crds, chart)] == ["differs"]
    assert [d.reason for d in sync(crds, chart)] == ["differs"]
    assert (
        yaml.safe_load(strip_insertions((chart / "widgets.example.io.yaml").read_text()))["spec"]["versions"][
            0
        ]["name"]
        == "v2"
    )
