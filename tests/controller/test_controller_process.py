"""The controller process fixture stops what it started, also when the code using it fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from events.local_server import LocalNatsServer
from tests.fixtures.controller_process import ControllerProcess, group_alive


class Boom(Exception):
    pass


def test_a_failure_while_the_controller_runs_leaves_no_process_behind(nats_server: LocalNatsServer, tmp_path: Path) -> None:
    args = ["--sink", "dir", "--dir", str(tmp_path / "gitops"), "--namespace", "default", "--nats-url", nats_server.url]
    args += ["--log-level", "WARNING"]
    controller = ControllerProcess(args, tmp_path / "controller.log")
    with pytest.raises(Boom), controller:
        controller.wait_ready(60)
        with pytest.raises(RuntimeError, match="still running"):
            controller.start()  # one process per fixture: a second start would orphan the first
        raise Boom
    assert controller.process is not None and controller.process.poll() is not None, "the controller was waited for"
    assert not group_alive(controller.pid), "nothing of its process group is left"
    assert controller.starts == 1
