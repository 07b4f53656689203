"""Every overlay renders with `kubectl kustomize`, every object validates, and the output matches its golden file."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.manifests.kustomize import (
    MANIFESTS,
    OVERLAYS,
    RenderError,
    golden_path,
    ident,
    problems_of,
    render,
    render_dir,
    rendered_text,
    validate_builtin,
)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_valid_objects(overlay: str) -> None:
    docs = render(overlay)
    assert docs, f"manifests/{overlay} rendered nothing"
    problems = [problem for doc in docs for problem in problems_of(doc)]
    assert problems == []
    identities = [ident(doc) for doc in docs]
    assert len(identities) == len(set(identities)), "an object is rendered twice"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_output_matches_golden(overlay: str) -> None:
    text = rendered_text(overlay)
    golden = golden_path(overlay)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden.name}: run UPDATE_GOLDEN=1 pytest tests/manifests"
    assert text == golden.read_text(), f"manifests/{overlay} changed: review the diff, then UPDATE_GOLDEN=1 pytest tests/manifests"


def test_golden_files_belong_to_overlays() -> None:
    expected = {golden_path(overlay).name for overlay in OVERLAYS}
    present = {path.name for path in golden_path(OVERLAYS[0]).parent.glob("*.yaml")}
    assert present == expected, "a golden file without its overlay (or the reverse)"


def _included(directory: Path) -> set[Path]:
    """The kustomization directories a kustomization pulls in (resources and components), transitively."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    found: set[Path] = set()
    for entry in (kustomization.get("resources") or []) + (kustomization.get("components") or []):
        target = (directory / entry).resolve()
        if (target / "kustomization.yaml").exists():
            found |= {target} | _included(target)
    return found


def test_every_kustomization_is_rendered_by_an_overlay_the_tests_check() -> None:
    """A new kustomization under manifests/ is either in OVERLAYS or included by one, so none escapes the checks."""
    roots = {(MANIFESTS / overlay).resolve() for overlay in OVERLAYS}
    covered = roots | {included for root in roots for included in _included(root)}
    every = {path.parent.resolve() for path in MANIFESTS.rglob("kustomization.yaml")}
    assert sorted(str(p.relative_to(MANIFESTS.resolve())) for p in every - covered) == []
    assert {"base", "runtimes", "nats", "monitoring"} <= {str(p.relative_to(MANIFESTS.resolve())) for p in covered - roots}


def test_validation_catches_a_broken_object() -> None:
    # the schema check is strict: a misspelt field of a built-in kind is an error, not ignored
    deployment = next(doc for doc in render("overlays/default") if doc["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_builtin(deployment)
    assert problems_of(deployment)


def test_unknown_custom_kind_is_reported() -> None:
    doc = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}}
    assert problems_of(doc) == ["Gadget g: example.com/v1 Gadget is neither a built-in kind nor one these tests check"]


def test_a_broken_overlay_fails_with_kustomize_message(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(RenderError, match=r"missing\.yaml"):
        render_dir(tmp_path)


def test_user_overlay_replaces_the_nats_secret(tmp_path: Path) -> None:
    """The documented way to bring real credentials: an own overlay on overlays/nats with `behavior: replace`."""
    repo_manifests = Path(__file__).resolve().parents[2] / "manifests"
    (tmp_path / "nats.env").write_text(
        "STOKEHOLD_NATS_URL=tls://nats.prod.example:4222\nSTOKEHOLD_NATS_USER=stokehold\nSTOKEHOLD_NATS_PASSWORD=s3cret\n"
    )
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(repo_manifests / "overlays" / "nats", tmp_path)],
                "secretGenerator": [
                    {"name": "stokehold-nats", "namespace": "stokehold-system", "behavior": "replace", "envs": ["nats.env"]}
                ],
            }
        )
    )
    docs = render_dir(tmp_path)
    secrets = [doc for doc in docs if doc["kind"] == "Secret"]
    assert len(secrets) == 1
    secret = secrets[0]
    assert sorted(secret["data"]) == ["STOKEHOLD_NATS_PASSWORD", "STOKEHOLD_NATS_URL", "STOKEHOLD_NATS_USER"]
    assert base64.b64decode(secret["data"]["STOKEHOLD_NATS_URL"]).decode() == "tls://nats.prod.example:4222"
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    secret_refs = [
        source["secretRef"] for source in deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"] if "secretRef" in source
    ]
    # the Deployment follows the new Secret's hashed name, so a credential change rolls the controller
    assert secret_refs == [{"name": secret["metadata"]["name"], "optional": False}]
