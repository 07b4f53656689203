"""The documentation runs as written.

- Every command of README.md and docs/*.md that needs no cluster runs, in document order, as a
  reader would type it: against a local nats-server and the controller with its dir sink. It
  must succeed, and print what a ```console block shows. The lines that are not run are listed
  in `NOT_RUN`, each with its reason (a cluster, Docker, a whole make target).
- kubectl output expressions run through the installed kubectl on an InferenceService the
  controller's renderer produced; label selectors use labels it sets; `stokehold` command
  lines parse with the CLI itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller.render import render_inference_service
from controller.render_config import RenderConfig
from controller.state import Deployment
from events.local_server import LocalNatsServer
from templates.catalog import load_catalog
from tests.fixtures.controller_process import ControllerProcess
from tests.fixtures.nats import reset_stream, run_in_thread
from tests.manifests.commands import (
    CommandLineError,
    check_stokehold_args,
    custom_columns,
    doc_commands,
    jsonpath,
    label_selectors,
    missing_output,
    output_spec,
    selector_keys,
    shell_lines,
    stokehold_args,
    words,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
KUBECTL_MD = (DOCS / "kubectl.md").read_text()
INSTALL_MD = (DOCS / "install.md").read_text()
README_MD = (DOCS.parent / "README.md").read_text()
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


@pytest.mark.parametrize("markdown", [KUBECTL_MD, INSTALL_MD, README_MD], ids=["kubectl.md", "install.md", "README.md"])
def test_stokehold_command_lines_parse(markdown: str) -> None:
    commands = [args for line in shell_lines(markdown) if (args := stokehold_args(line)) is not None]
    assert commands
    for args in commands:
        check_stokehold_args(args)


def test_a_wrong_command_line_is_caught() -> None:
    with pytest.raises(CommandLineError, match="--namespaces"):
        check_stokehold_args(["deploy", "gemma-3-12b-it", "--namespaces", "llm"])
    with pytest.raises(CommandLineError, match="no such command"):
        check_stokehold_args(["templates", "lists"])
    with pytest.raises(CommandLineError, match="ref"):
        check_stokehold_args(["deploy", "--namespace", "llm"])


# ------------------------------------------------------- the documentation, run as written

REPO = DOCS.parent
DOCUMENTS = ["README.md", *sorted(f"docs/{path.name}" for path in DOCS.glob("*.md"))]
# The lines that are not run, and why. Everything else in a ```bash or ```console block of these
# documents runs, in document order, against a local nats-server and a controller with the dir
# sink serving the namespace llm.
NOT_RUN = [
    (
        re.compile(r"^kubectl (?!kustomize\b|stokehold\b|plugin list\b)"),
        "talks to a Kubernetes cluster (docs/kubectl.md's run against the API emulator: test_kubectl_experience.py)",
    ),
    (re.compile(r"^make (demo|test|test-fast|bench|soak|e2e-kind)\b"), "a whole make target: minutes to hours, and the suite itself"),
    (re.compile(r"^docker "), "needs a Docker engine (CI has none)"),
    (re.compile(r"^pip install "), "installs into the environment: the test uses the checkout's .venv"),
]
# The one liberty taken: the NATS URL is the local server's.
NATS_URL_EXPORT = re.compile(r"^export STOKEHOLD_NATS_URL=\S+")
# `events tail` follows until interrupted: it runs until it says what it follows, then gets Ctrl-C.
FOLLOWS = re.compile(r"(^|\s)stokehold events tail(?!.*--(count|timeout))")
COMMAND_LIMIT_S = 120


def not_run_reason(line: str) -> str | None:
    return next((reason for pattern, reason in NOT_RUN if pattern.search(line)), None)


class DocSession:
    """A shell whose working directory and exported variables carry from one command to the next."""

    def __init__(self, tmp: Path, nats_url: str) -> None:
        self.state = tmp / "state"
        self.state.mkdir()
        home, work = tmp / "home", tmp / "work"
        home.mkdir()
        work.mkdir()
        (home / "stokehold").symlink_to(REPO)  # the checkout next to ~/stokehold-install (docs/install.md, step 4)
        for name in ("templates", "manifests", "controller", "runtimes", "events"):
            (work / name).symlink_to(REPO / name)
        (self.state / "cwd").write_text(str(work))
        env = {key: value for key, value in os.environ.items() if not key.startswith(("STOKEHOLD_", "KUBE")) and key != "COLUMNS"}
        env |= {"HOME": str(home), "PATH": f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}", "STOKEHOLD_NATS_URL": nats_url}
        self.env = env
        self.nats_url = nats_url
        (self.state / "env").write_text("")

    def script(self, command: str) -> str:
        return "\n".join(
            [
                f'cd "$(cat {self.state}/cwd)"',
                f"source {self.state}/env",
                command,
                "status=$?",
                f"pwd > {self.state}/cwd",
                f"export -p | grep -v -e ' PWD=' -e ' OLDPWD=' -e ' SHLVL=' > {self.state}/env",
                "exit $status",
            ]
        )

    def run(self, command: str) -> tuple[int, str]:
        done = subprocess.run(
            ["bash", "-c", self.script(command)],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=COMMAND_LIMIT_S,
            check=False,
        )
        return done.returncode, done.stdout

    def follow_then_interrupt(self, command: str) -> tuple[int, str]:
        """Run a command that follows until interrupted: wait for its 'following' line, then Ctrl-C (SIGINT)."""
        process = subprocess.Popen(
            ["bash", "-c", self.script(f"exec {command}")],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            # as typed in a terminal: a suite started in the background (`make test &`) ignores SIGINT, and so would the command
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        assert process.stdout is not None
        seen = []
        try:
            for line in process.stdout:
                seen.append(line)
                if line.startswith("following "):
                    os.killpg(process.pid, signal.SIGINT)
                    break
            rest, _ = process.communicate(timeout=COMMAND_LIMIT_S)  # reading on: a full pipe would block its exit
            seen.append(rest)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        return process.returncode, "".join(seen)


@dataclass
class Ran:
    ran: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason → lines
    failures: list[str] = field(default_factory=list)


def run_document(name: str, session: DocSession) -> Ran:
    outcome = Ran()
    for command in doc_commands((REPO / name).read_text()):
        where = f"{name}:{command.line}: {command.first_line}"
        reason = not_run_reason(command.text)
        if reason is not None:
            outcome.skipped.setdefault(reason, []).append(command.first_line)
            continue
        text = NATS_URL_EXPORT.sub(f"export STOKEHOLD_NATS_URL={session.nats_url}", command.text)
        if FOLLOWS.search(text.split("#")[0]):
            code, output = session.follow_then_interrupt(text.split("#")[0].strip())
            expected_code = 130  # interrupted, as Ctrl-C does
        else:
            code, output = session.run(text)
            expected_code = 1 if any(line.startswith("error:") for line in command.shown) else 0
        outcome.ran.append(command.first_line)
        if code != expected_code:
            outcome.failures.append(f"{where}\n  exit status {code} (expected {expected_code}):\n{indent(output)}")
        elif missing := missing_output(command.shown, output):
            outcome.failures.append(f"{where}\n  the output lacks {missing}:\n{indent(output)}")
    return outcome


def indent(text: str, limit: int = 40) -> str:
    return "\n".join("    " + line for line in text.splitlines()[-limit:])


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_documented_command_runs_as_written(name: str, nats_server: LocalNatsServer, tmp_path: Path) -> None:
    """Each document's commands in order, as a reader would type them: success, and the output the docs show."""
    run_in_thread(reset_stream(nats_server.options()))
    session = DocSession(tmp_path, nats_server.url)
    args = ["--nats-url", nats_server.url, "--sink", "dir", "--dir", str(tmp_path / "gitops"), "--namespace", "llm"]
    with ControllerProcess(args, tmp_path / "controller.log") as controller:
        controller.wait_ready()
        outcome = run_document(name, session)

    assert not outcome.failures, "\n\n".join(outcome.failures)
    for reason, lines in outcome.skipped.items():
        assert reason in {reason for _, reason in NOT_RUN}, lines  # every line not run has a reason of the list


def test_the_documents_run_more_than_they_skip_and_every_reason_is_used() -> None:
    commands = [(name, command) for name in DOCUMENTS for command in doc_commands((REPO / name).read_text())]
    reasons = {not_run_reason(command.text) for _, command in commands}
    runnable = [command for _, command in commands if not_run_reason(command.text) is None]
    assert {reason for _, reason in NOT_RUN} <= reasons, "a rule of NOT_RUN that no line needs any more"
    assert len(runnable) >= 40
    assert any(command.shown for command in runnable), "some command shows its output, and the test checks it"


def test_template_field_reference_is_generated_from_the_schema() -> None:
    from templates.reference import render_reference

    assert (DOCS / "template-fields.md").read_text() == render_reference(), (
        "docs/template-fields.md is stale: stokehold templates fields > docs/template-fields.md"
    )


def test_readme_and_install_apply_the_knative_settings_the_same_way_and_first() -> None:
    def applies(markdown: str) -> list[str]:
        return [" ".join(words(line)) for line in shell_lines(markdown) if line.startswith("kubectl apply")]

    readme, install = applies((REPO / "README.md").read_text()), applies(INSTALL_MD)
    knative = "kubectl apply --server-side --field-manager=stokehold --force-conflicts -k manifests/knative"
    assert readme[:2] == [knative, "kubectl apply -k manifests/overlays/default"]
    assert install.index(knative) < install.index("kubectl apply -k manifests/overlays/default")


def test_a_console_block_is_checked_line_by_line() -> None:
    shown = ("requested llm/x (x@latest): … #…", "error: the controller rejected it: …")
    output = "requested  llm/x (x@latest): dev.stokehold.deployment.requested abc → s #7\nnote\nerror: the controller rejected it: no\n"

    assert missing_output(shown, output) == []
    assert missing_output(("applied: llm/x created",), output) == ["applied: llm/x created"]
