"""Owns charts/mqtt-operator/templates/crds/: the chart's CRD templates, generated from crds/.

crds/ is the source of truth. Each crds/<file>.yaml becomes templates/crds/<file>.yaml, unchanged but
for three insertions: the whole file is wrapped in `{{- if .Values.crds.enabled }}`, metadata gets
the chart's labels (less any the CRD sets itself), and, when `crds.keep` is on, the
`helm.sh/resource-policy: keep` annotation. A `{{` in the source is escaped so Helm renders it back
as written. Generated files whose source is gone are deleted.

    python hack/sync_chart_crds.py          # write (make chart)
    python hack/sync_chart_crds.py --check  # write nothing, exit 1 listing the files that differ
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CRDS_DIR = REPO / "crds"
CHART_CRDS_DIR = REPO / "charts" / "mqtt-operator" / "templates" / "crds"

HEADER = "{{- /* generated from crds/ by make chart; do not edit */}}\n"

_METADATA = re.compile(r"^metadata:[ \t]*(#.*)?$")
_KEY = re.compile(r"^(?P<indent>[ ]+)(?P<key>labels|annotations):[ \t]*(#.*)?$")


class SourceError(ValueError):
    """A file in crds/ that cannot be turned into a chart template; the message says what to change."""


@dataclass(frozen=True)
class Difference:
    """One chart file that is not what crds/ makes it: `reason` is "missing", "differs" or "stale"."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path}: {self.reason}"
        )


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _source_labels(text: str, name: str) -> list[str]:
    """The label keys the CRD sets itself; checks on the way that the file holds exactly one CRD."""
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        raise SourceError(f"crds/{name} is not valid YAML: {error}") from error
    if len(documents) != 1 or not isinstance(documents[0], dict):
        raise SourceError(f"crds/{name} must hold exactly one CustomResourceDefinition")
    crd = documents[0]
    if crd.get("kind") != "CustomResourceDefinition":
        raise SourceError(f"crds/{name} is a {crd.get('kind')!r}, not a CustomResourceDefinition")
    labels = (crd.get("metadata") or {}).get("labels") or {}
    return [str(key) for key in labels]


def render(text: str, name: str) -> str:
    """The chart template for the CRD file `name` whose content is `text`."""
    source_labels = _source_labels(text, name)
    # Helm would read `{{` as the start of an action; this action prints it back verbatim.
    lines = text.replace("{{", '{{ "{{" }}').splitlines()
    starts = [i for i, line in enumerate(lines) if _METADATA.match(line)]
    if len(starts) != 1:
        raise SourceError(f"crds/{name} needs one top-level `metadata:` block, written in block style")
    start = starts[0]
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith((" ", "#"))):
        end += 1
    block = [i for i in range(start + 1, end) if _is_content(lines[i])]
    if not block:
        raise SourceError(f"crds/{name} has an empty metadata block")
    indent = " " * _indent_of(lines[block[0]])

    existing: dict[str, tuple[int, str]] = {}  # key -> (line index, indent of its children)
    for i in block:
        match = _KEY.match(lines[i])
        if match and match["indent"] == indent:
            children = [j for j in block if j > i]
            if not children or _indent_of(lines[children[0]]) <= len(indent):
                raise SourceError(f"crds/{name}: metadata.{match['key']} must be a non-empty block mapping")
            existing[match["key"]] = (i, " " * _indent_of(lines[children[0]]))

    inserts: dict[int, list[str]] = {}  # line index -> lines to insert after it
    # The chart's labels, less those the CRD sets itself: a key may appear only once in a mapping.
    chart_labels = 'include "mqtt-operator.labels" .'
    if source_labels:
        keys = " ".join(json.dumps(key) for key in source_labels)
        chart_labels = f"omit ({chart_labels} | fromYaml) {keys} | toYaml"
    if "labels" in existing:
        at, child = existing["labels"]
        inserts.setdefault(at, []).append(f"{child}{{{{- {chart_labels} | nindent {len(child)} }}}}")
    else:
        inserts.setdefault(start, []).extend(
            [
                f"{indent}labels:",
                f"{indent}  {{{{- {chart_labels} | nindent {len(indent) + 2} }}}}",
            ]
        )
    if "annotations" in existing:
        at, child = existing["annotations"]
        inserts.setdefault(at, []).extend(
            [
                f"{child}{{{{- if .Values.crds.keep }}}}",
                f"{child}helm.sh/resource-policy: keep",
                f"{child}{{{{- end }}}}",
            ]
        )
    else:
        inserts.setdefault(start, []).extend(
            [
                f"{indent}{{{{- if .Values.crds.keep }}}}",
                f"{indent}annotations:",
                f"{indent}  helm.sh/resource-policy: keep",
                f"{indent}{{{{- end }}}}",
            ]
        )

    out = [HEADER, "{{- if .Values.crds.enabled }}\n"]
    for i, line in enumerate(lines):
        out.append(line + "\n")
        out.extend(extra + "\n" for extra in inserts.get(i, []))
    out.append("{{- end }}\n")
    return "".join(out)


def expected(crds_dir: Path = CRDS_DIR) -> dict[str, str]:
    """File name -> content of every chart CRD template that crds/ makes."""
    return {
        source.name: render(source.read_text(), source.name) for source in sorted(crds_dir.glob("*.yaml"))
    }


def differences(crds_dir: Path = CRDS_DIR, chart_dir: Path = CHART_CRDS_DIR) -> list[Difference]:
    """The chart CRD templates that are missing, differ from what crds/ makes, or have no source left."""
    wanted = expected(crds_dir)
    found: list[Difference] = []
    for name, content in wanted.items():
        target = chart_dir / name
        if not target.exists():
            found.append(Difference(target, "missing"))
        elif target.read_text() != content:
            found.append(Difference(target, "differs"))
    for target in sorted(chart_dir.glob("*.yaml")):
        if target.name not in wanted:
            found.append(Difference(target, "stale"))
    return found


def sync(crds_dir: Path = CRDS_DIR, chart_dir: Path = CHART_CRDS_DIR) -> list[Difference]:
    """Make the chart CRD templates match crds/; returns what was changed."""
    wanted = expected(crds_dir)
    changed = differences(crds_dir, chart_dir)
    chart_dir.mkdir(parents=True, exist_ok=True)
    for difference in changed:
        if difference.reason == "stale":
            difference.path.unlink()
        else:
            difference.path.write_text(wanted[difference.path.name])
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when the chart is out of date"
    )
    parser.add_argument("--crds", type=Path, default=CRDS_DIR, help="the source CRDs (default: crds/)")
    parser.add_argument("--chart-crds", type=Path, default=CHART_CRDS_DIR, help="the generated templates")
    args = parser.parse_args(argv)
    try:
        if args.check:
            found = differences(args.crds, args.chart_crds)
            for difference in found:
                print(difference, file=sys.stderr)
            if found:
                print("The chart's CRDs differ from crds/: run `make chart`.", file=sys.stderr)
                return 1
            return 0
        for difference in sync(args.crds, args.chart_crds):
            print(f"{'deleted' if difference.reason == 'stale' else 'wrote'} {difference}")
    except SourceError as error:
        print(error, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
