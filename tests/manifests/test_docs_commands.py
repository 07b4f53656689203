"""The commands in docs/kubectl.md and docs/install.md work on what stokehold creates.

kubectl output expressions run through the installed kubectl on an InferenceService the
controller's renderer produced; label selectors use labels it sets; `stokehold` command
lines parse with the CLI itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.config import RenderConfig
from controller.render import render_inference_service
from controller.state import Deployment
from templates.catalog import load_catalog
from tests.manifests.commands import (
    CommandLineError,
    check_stokehold_args,
    custom_columns,
    jsonpath,
    label_selectors,
    output_spec,
    selector_keys,
    shell_lines,
    stokehold_args,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
KUBECTL_MD = (DOCS / "kubectl.md").read_text()
INSTALL_MD = (DOCS / "install.md").read_text()
KSERVE_POD_LABELS = {"serving.kserve.io/inferenceservice", "component"}


@pytest.fixture(scope="module")
def isvc() -> dict[str, Any]:
    """tiny-demo as the controller renders it, stopped, with the status KServe reports for a failed revision."""
    version = next(v for v in load_catalog() if v.name == "tiny-demo")
    deployment = Deployment(template="tiny-demo", namespace="llm", name="tiny-demo", version=None, stopped=True, event_id="evt-1")
    obj = render_inference_service(version, deployment, RenderConfig())
    message = 'Revision "tiny-demo-predictor-00001" failed with message: Initial scale was never achieved.'
    obj["status"] = {
        "url": "http://tiny-demo.llm.example.com",
        "conditions": [
            {"type": "PredictorReady", "status": "False", "reason": "RevisionMissing", "message": message},
            {"type": "Ready", "status": "False", "reason": "RevisionMissing", "message": message},
        ],
    }
    return obj


def output_lines(markdown: str) -> list[tuple[str, str, str]]:
    found = []
    for line in shell_lines(markdown):
        spec = output_spec(line)
        if spec is not None:
            found.append((line, *spec))
    return found


def test_docs_have_the_commands_users_need() -> None:
    lines = shell_lines(KUBECTL_MD)
    assert any("get isvc" in line and "-l stokehold.dev/template=" in line for line in lines)
    assert any("custom-columns" in line and "content-hash" in line and "stokehold\\.dev/version" in line for line in lines)
    assert any(line.startswith("kubectl describe isvc") for line in lines)
    assert any(".status.conditions" in line for line in lines)
    for verb in ("publish", "deploy", "status", "stop", "resume"):
        assert any(line.startswith(f"kubectl stokehold {verb}") for line in lines), verb


def test_every_output_expression_extracts_something(isvc: dict[str, Any], tmp_path: Path) -> None:
    """Each documented jsonpath / custom-columns path prints a non-empty value for a rendered service."""
    checked = 0
    for line, kind, expression in output_lines(KUBECTL_MD):
        if "isvc" not in line:
            continue  # e.g. the Lease
        paths = [path for _, path in custom_columns(expression)] if kind == "custom-columns" else [expression]
        for path in paths:
            template = path if kind == "jsonpath" else "{" + path + "}"
            assert jsonpath(isvc, template, tmp_path).strip(), f"{path!r} prints nothing (from: {line})"
            checked += 1
    assert checked >= 10


def test_documented_columns_show_version_hash_and_readiness(isvc: dict[str, Any], tmp_path: Path) -> None:
    expression = next(e for _, kind, e in output_lines(KUBECTL_MD) if kind == "custom-columns" and "HASH" in e)
    values = {name: jsonpath(isvc, "{" + path + "}", tmp_path) for name, path in custom_columns(expression)}
    assert values["VERSION"] == "1"
    assert values["HASH"] == isvc["metadata"]["annotations"]["stokehold.dev/content-hash"]
    assert values["HASH"].startswith("sha256:")
    assert values["READY"] == "False"
    stopped = next(o for o in output_lines(KUBECTL_MD) if o[1] == "custom-columns" and "STOPPED" in o[2])
    assert {name: jsonpath(isvc, "{" + path + "}", tmp_path) for name, path in custom_columns(stopped[2])}["STOPPED"] == "true"


def test_condition_listing_explains_the_failure(isvc: dict[str, Any], tmp_path: Path) -> None:
    expression = next(e for _, _, e in output_lines(KUBECTL_MD) if "range .status.conditions" in e)
    printed = jsonpath(isvc, expression, tmp_path).splitlines()
    assert printed[-1].split("\t")[:3] == ["Ready", "False", "RevisionMissing"]
    assert "Initial scale was never achieved" in printed[-1]


@pytest.mark.parametrize("markdown", [KUBECTL_MD, INSTALL_MD], ids=["kubectl.md", "install.md"])
def test_label_selectors_use_labels_stokehold_sets(markdown: str, isvc: dict[str, Any]) -> None:
    rendered = set(isvc["metadata"]["labels"]) | KSERVE_POD_LABELS
    selectors = [s for line in shell_lines(markdown) if "isvc" in line or "pods" in line for s in label_selectors(line)]
    assert selectors
    for selector in selectors:
        for key in selector_keys(selector):
            assert key in rendered or key.startswith("template.stokehold.dev/"), f"{key!r} is not a label stokehold sets"


@pytest.mark.parametrize("markdown", [KUBECTL_MD, INSTALL_MD], ids=["kubectl.md", "install.md"])
def test_stokehold_command_lines_parse(markdown: str) -> None:
    commands = [args for line in shell_lines(markdown) if (args := stokehold_args(line)) is not None]
    assert commands
    for args in commands:
        check_stokehold_args(args)


def test_a_wrong_command_line_is_caught() -> None:
    with pytest.raises(CommandLineError, match="--namespaces"):
        check_stokehold_args(["deploy", "gemma-7b-it", "--namespaces", "llm"])
    with pytest.raises(CommandLineError, match="no such command"):
        check_stokehold_args(["templates", "lists"])
    with pytest.raises(CommandLineError, match="ref"):
        check_stokehold_args(["deploy", "--namespace", "llm"])
