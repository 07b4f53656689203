"""KServe's real CRDs (trimmed copies in tests/crds, see the NOTICE there): the schemas the emulator serves its custom resources with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KSERVE_VERSION = "v0.16.0"
CRD_DIR = Path(__file__).resolve().parents[1] / "crds" / f"kserve-{KSERVE_VERSION}"


def load_crd(plural: str) -> dict[str, Any]:
    """The CustomResourceDefinition `<plural>.serving.kserve.io`."""
    crd: dict[str, Any] = json.loads((CRD_DIR / f"serving.kserve.io_{plural}.json").read_text(encoding="utf-8"))
    return crd


def served_schema(crd: dict[str, Any]) -> dict[str, Any]:
    """The openAPIV3Schema of the storage version (each of these CRDs serves one version)."""
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


ISVC_CRD = load_crd("inferenceservices")
SERVING_RUNTIME_CRD = load_crd("servingruntimes")
CLUSTER_SERVING_RUNTIME_CRD = load_crd("clusterservingruntimes")
LOCAL_MODEL_CACHE_CRD = load_crd("localmodelcaches")
