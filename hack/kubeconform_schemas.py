"""Owns the conversion of an API server's OpenAPI v2 document into strict, standalone kubeconform schemas.

Every definition carrying `x-kubernetes-group-version-kind` becomes `<kind><suffix>.json` (kubeconform's
`{{ .ResourceKind }}{{ .KindSuffix }}` naming), so kubeconform validates offline against exactly the
API server the tests run, our CRDs included:

    kubectl get --raw /openapi/v2 > openapi.json
    python hack/kubeconform_schemas.py openapi.json schemas/
    kubeconform -strict -schema-location 'schemas/{{ .ResourceKind }}{{ .KindSuffix }}.json' ...

Each file is standalone: `$ref`s are inlined, except refs to definitions on a reference cycle (such
as JSONSchemaProps in a CRD), which stay refs into a `definitions` section of the same file. Strict
means every object schema that lists its properties gets `additionalProperties: false`, so a typo'd
field fails. As the API server does, optional fields accept null.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Schema = dict[str, Any]

DRAFT = "http://json-schema.org/draft-04/schema#"
REF_PREFIX = "#/definitions/"
# Types whose OpenAPI v2 form ("type: string") is narrower than what the API server accepts.
INT_OR_STRING: Schema = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
QUANTITY: Schema = {"oneOf": [{"type": "string"}, {"type": "number"}]}
SPECIAL = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": INT_OR_STRING,
    "io.k8s.apimachinery.pkg.api.resource.Quantity": QUANTITY,
}


def kind_suffix(group: str, version: str) -> str:
    """kubeconform's `{{ .KindSuffix }}`: "-v1" for the core group, "-<first group label>-<version>" else."""
    api_version = f"{group}/{version}" if group else version
    group_parts = api_version.split("/")
    suffix = "-" + group_parts[0].split(".")[0].lower()
    if len(group_parts) > 1:
        suffix += "-" + group_parts[1].lower()
    return suffix


def schema_file_name(group: str, version: str, kind: str) -> str:
    return f"{kind.lower()}{kind_suffix(group, version)}.json"


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            yield ref[len(REF_PREFIX) :]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def cyclic_definitions(definitions: dict[str, Schema]) -> set[str]:
    """The definitions that can reach themselves through `$ref`s; they cannot be inlined."""
    graph = {
        name: {ref for ref in _refs(schema) if ref in definitions} for name, schema in definitions.items()
    }
    cyclic: set[str] = set()
    for start in graph:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            name = todo.pop()
            if name == start:
                cyclic.add(start)
                break
            if name not in seen:
                seen.add(name)
                todo.extend(graph[name])
    return cyclic


class Converter:
    """Resolves the definitions of one OpenAPI v2 document; results are shared between kinds."""

    def __init__(self, openapi: Schema) -> None:
        self.definitions: dict[str, Schema] = openapi.get("definitions", {})
        self.cyclic = cyclic_definitions(self.definitions)
        self._resolved: dict[str, Schema] = {}

    def resolve_definition(self, name: str) -> Schema:
        """The definition `name` with its non-cyclic refs inlined and strictness applied."""
        if name not in self._resolved:
            if name in SPECIAL:
                self._resolved[name] = copy.deepcopy(SPECIAL[name])
            elif name not in self.definitions:
                raise KeyError(f"$ref to unknown definition {name!r}")
            else:
                self._resolved[name] = self._resolve(self.definitions[name])
        return self._resolved[name]

    def _resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self._resolve(item) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            name = ref[len(REF_PREFIX) :]
            if name in self.cyclic and name not in SPECIAL:
                return {"$ref": ref}
            # A $ref's siblings (descriptions) mean nothing in draft 4: the target replaces the node.
            return self.resolve_definition(name)
        if node.get("format") == "int-or-string":
            return copy.deepcopy(INT_OR_STRING)
        result: Schema = {}
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                result[key] = {prop: self._resolve(schema) for prop, schema in value.items()}
            elif key in ("items", "additionalProperties", "allOf", "anyOf", "oneOf", "not"):
                result[key] = self._resolve(value)
            else:
                result[key] = value
        if isinstance(result.get("properties"), dict):
            if "additionalProperties" not in result and not result.get(
                "x-kubernetes-preserve-unknown-fields"
            ):
                result["additionalProperties"] = False
            required = set(result.get("required", []))
            result["properties"] = {
                prop: schema if prop in required else _nullable(schema)
                for prop, schema in result["properties"].items()
            }
        return result

    def standalone(self, name: str) -> Schema:
        """One kind's schema file: the resolved definition plus the cyclic definitions it refers to."""
        root = dict(self.resolve_definition(name))
        bundled: dict[str, Schema] = {}
        todo = list(_refs(root))
        while todo:
            ref = todo.pop()
            if ref not in bundled:
                bundled[ref] = self.resolve_definition(ref)
                todo.extend(_refs(bundled[ref]))
        result: Schema = {"$schema": DRAFT, **root}
        if bundled:
            result["definitions"] = dict(sorted(bundled.items()))
        return result


def _nullable(schema: Any) -> Any:
    if isinstance(schema, dict) and isinstance(schema.get("type"), str) and "enum" not in schema:
        return {**schema, "type": [schema["type"], "null"]}
    return schema


def convert(openapi: Schema) -> dict[str, Schema]:
    """File name -> standalone strict schema, for every group/version/kind in the document."""
    converter = Converter(openapi)
    result: dict[str, Schema] = {}
    for name, definition in sorted(converter.definitions.items()):
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            file_name = schema_file_name(gvk.get("group", ""), gvk["version"], gvk["kind"])
            if file_name not in result:
                result[file_name] = converter.standalone(name)
    return result


def write(openapi: Schema, out_dir: Path) -> list[Path]:
    """Write the schemas of `convert` into out_dir; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, schema in convert(openapi).items():
        path = out_dir / file_name
        path.write_text(json.dumps(schema, separators=(",", ":")))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("openapi", help="the OpenAPI v2 JSON (kubectl get --raw /openapi/v2); - for stdin")
    parser.add_argument("out_dir", type=Path, help="where to write <kind><suffix>.json")
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.openapi == "-" else Path(args.openapi).read_text()
    written = write(json.loads(text), args.out_dir)
    print(f"wrote {len(written)} schemas to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
