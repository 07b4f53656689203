"""The controller process as a newcomer starts it: which NATS it connects to, how it fails, how it logs.

Every test runs `stokehold … controller run` (or `python -m controller run`) as its own process
against a real nats-server and reads what it writes: one JSON object per line, fatal errors too.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from events.local_server import LocalNatsServer
from tests.fixtures.controller_process import ROOT, ControllerProcess, free_port

LIMIT_S = 60  # a guard against a hang, not a measurement: the old controller hung here for about 120 s


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOKEHOLD_") and k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    return env | {"PYTHONPATH": str(ROOT)} | extra


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every line must be one JSON object (a wrapped or plain-text line fails here)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=LIMIT_S, env=env, cwd=ROOT, check=False)


@pytest.fixture
def auth_server() -> Iterator[LocalNatsServer]:
    with LocalNatsServer(user="stokehold", password="right") as server:
        yield server


def test_the_root_connection_flags_reach_controller_run(nats_url: str, tmp_path: Path) -> None:
    """`stokehold --nats-url URL controller run`: the URL given before the command wins over STOKEHOLD_NATS_URL."""
    port = free_port()
    command = [sys.executable, "-m", "events", "--nats-url", nats_url, "controller", "run", "--sink", "dir", "--dir", str(tmp_path)]
    command += ["--namespace", "llm", "--metrics-port", str(port)]
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env=_env(STOKEHOLD_NATS_URL=f"nats://127.0.0.1:{free_port()}"), cwd=ROOT
    )
    try:
        lines = _read_until(process, "state rebuilt from the stream")
        process.send_signal(signal.SIGTERM)
        process.wait(LIMIT_S)
    finally:
        process.kill()
        process.wait()

    assert lines[0]["message"] == "starting the controller" and lines[0]["nats"] == nats_url
    assert process.returncode == 0


def _read_until(process: subprocess.Popen[str], message: str) -> list[dict[str, Any]]:
    """The JSON lines the process writes, up to the one whose message starts with `message`."""
    assert process.stderr is not None
    lines: list[dict[str, Any]] = []
    while True:
        readable, _, _ = select.select([process.stderr], [], [], LIMIT_S)
        line = process.stderr.readline() if readable else ""
        if not line:
            raise AssertionError(f"no {message!r} line; the controller wrote: {lines}")
        lines.append(json.loads(line))
        if lines[-1]["message"].startswith(message):
            return lines


def test_a_wrong_password_fails_at_once_in_one_json_line(auth_server: LocalNatsServer, tmp_path: Path) -> None:
    args = ["-m", "events", "--nats-url", auth_server.url, "--nats-user", "stokehold", "--nats-password", "not-the-password-9f3"]
    args += ["controller", "run", "--sink", "dir", "--dir", str(tmp_path), "--namespace", "llm", "--metrics-port", "0"]

    done = _run(args, _env())  # retries would take minutes: the controller waits up to 60 attempts for a NATS still starting

    lines = _json_lines(done.stderr)
    assert done.returncode == 1
    errors = [line for line in lines if line["level"] == "error"]
    assert len(errors) == 1 and "refused the credentials (authorization violation)" in errors[0]["message"]
    assert "exception" not in errors[0] and "not-the-password-9f3" not in done.stderr


def test_sigterm_stops_a_controller_still_connecting(tmp_path: Path) -> None:
    log = tmp_path / "controller.log"
    unreachable = f"nats://127.0.0.1:{free_port()}"  # nothing listens: the controller retries for about two minutes
    controller = ControllerProcess(["--nats-url", unreachable, "--sink", "dir", "--dir", str(tmp_path), "--namespace", "llm"], log)
    with controller:
        _wait_for_line(controller, "ops endpoints listening")  # the signal handlers are installed before this line
        code = controller.stop(grace=LIMIT_S)  # SIGTERM, then SIGKILL only after LIMIT_S

    lines = _json_lines(log.read_text())
    assert code == 0, lines
    assert lines[-1]["message"] == "controller stopped before it connected to NATS"


def _wait_for_line(controller: ControllerProcess, message: str) -> None:
    from tests.fixtures.controller_process import wait_until

    def written() -> bool:
        return controller.log.exists() and f'"message": "{message}' in controller.log.read_text()

    wait_until(written, f"waiting for {message!r}", LIMIT_S, alive=controller.alive)


def test_the_kube_sink_without_a_kubeconfig_is_one_clear_line(nats_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    args = ["-m", "controller", "run", "--nats-url", nats_url, "--sink", "kube", "--namespace", "llm", "--metrics-port", "0"]

    done = _run(args, _env(HOME=str(home)))
    missing = _run([*args, "--kubeconfig", str(tmp_path / "absent")], _env(HOME=str(home)))

    for result in (done, missing):
        lines = _json_lines(result.stderr)
        assert result.returncode == 1
        assert [line["level"] for line in lines] == ["info", "error"], "the start line, then the reason; nothing connected"
        assert "Traceback" not in result.stderr and "exception" not in lines[-1]
    assert "no Kubernetes configuration: not running in a cluster" in _json_lines(done.stderr)[-1]["message"]
    assert f"cannot use the kubeconfig {tmp_path / 'absent'}" in _json_lines(missing.stderr)[-1]["message"]


def test_the_log_is_json_lines_names_where_it_connects_and_says_state_rebuilt_once(nats_url: str, tmp_path: Path) -> None:
    log = tmp_path / "controller.log"
    secret_url = nats_url.replace("nats://", "nats://someone:secret@")  # the server takes no credentials: they are ignored
    controller = ControllerProcess(["--nats-url", secret_url, "--sink", "dir", "--dir", str(tmp_path / "out"), "--namespace", "llm"], log)
    with controller:
        controller.wait_ready()
        assert controller.stop() == 0

    text = log.read_text()
    lines = _json_lines(text)
    start = lines[0]
    assert start["message"] == "starting the controller" and start["sink"] == "dir" and start["dir"] == str(tmp_path / "out")
    assert start["nats"] == nats_url.replace("nats://", "nats://***@") and "secret" not in text
    assert [line["message"] for line in lines].count("state rebuilt from the stream") == 1


def test_invalid_configuration_is_a_json_line() -> None:
    done = _run(["-m", "controller", "run", "--sink", "dir", "--namespace", "llm"], _env())

    lines = _json_lines(done.stderr)
    assert done.returncode == 2
    assert [line["level"] for line in lines] == ["error"] and "the dir sink needs --dir" in lines[0]["message"]
