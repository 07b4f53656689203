"""Trim KServe's CRDs into the test fixtures next to this file: schema descriptions dropped, nothing else changed.

    python -m tests.crds.trim <directory with serving.kserve.io_*.yaml> tests/crds/kserve-v0.16.0

The sources are `config/crd/full/serving.kserve.io_{inferenceservices,servingruntimes,clusterservingruntimes,localmodelcaches}.yaml`
of the KServe repository at the pinned tag (see NOTICE). A schema node's `description` goes; a property
that happens to be called `description` stays.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

KINDS = ("inferenceservices", "servingruntimes", "clusterservingruntimes", "localmodelcaches")
_SCHEMA_MAPS = ("properties", "patternProperties", "definitions")
_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf")
_SCHEMA_ONE = ("items", "additionalProperties", "not", "additionalItems")


def trim_schema(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "description":
            continue
        if key in _SCHEMA_MAPS:
            out[key] = {name: trim_schema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS:
            out[key] = [trim_schema(sub) for sub in value]
        elif key in _SCHEMA_ONE:
            out[key] = trim_schema(value)
        else:
            out[key] = value
    return out


def trim_crd(crd: dict[str, Any]) -> dict[str, Any]:
    crd = dict(crd)
    spec = dict(crd["spec"])
    versions = []
    for version in spec["versions"]:
        version = dict(version)
        version["schema"] = {"openAPIV3Schema": trim_schema(version["schema"]["openAPIV3Schema"])}
        version["additionalPrinterColumns"] = [
            {k: v for k, v in column.items() if k != "description"} for column in version.get("additionalPrinterColumns", [])
        ]
        versions.append(version)
    spec["versions"] = versions
    crd["spec"] = spec
    return crd


def main(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        crd = yaml.safe_load((source / f"serving.kserve.io_{kind}.yaml").read_text())
        text = json.dumps(trim_crd(crd), separators=(",", ":"), sort_keys=True)
        (target / f"serving.kserve.io_{kind}.json").write_text(text + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
