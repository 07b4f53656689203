"""The GitOps directory sink."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config import RenderConfig
from controller.render import render_inference_service
from controller.sinks.base import ApplyAction, NotManagedError, Object, PermanentSinkError
from controller.sinks.dir import DirSink, to_yaml
from controller.state import Deployment
from templates.catalog import load_catalog

TINY = next(v for v in load_catalog() if v.name == "tiny-demo")


def isvc(name: str = "tiny-demo", namespace: str = "llm", stopped: bool = False) -> Object:
    return render_inference_service(TINY, Deployment("tiny-demo", namespace, name, None, stopped=stopped), RenderConfig())


async def test_create_unchanged_update_delete(tmp_path: Path) -> None:
    sink = DirSink(tmp_path)
    path = tmp_path / "llm" / "tiny-demo.yaml"
    assert await sink.apply(isvc()) is ApplyAction.CREATED
    written = path.read_text()
    assert written == to_yaml(isvc()), "deterministic: sorted keys, same bytes for the same object"
    mtime = path.stat().st_mtime_ns
    assert await sink.apply(isvc()) is ApplyAction.UNCHANGED
    assert path.stat().st_mtime_ns == mtime, "not rewritten"
    assert await sink.apply(isvc(stopped=True)) is ApplyAction.UPDATED
    assert "serving.kserve.io/stop" in path.read_text()
    assert await sink.get("llm", "tiny-demo") == isvc(stopped=True)
    assert [o["metadata"]["name"] for o in await sink.list_managed()] == ["tiny-demo"]
    assert await sink.delete("llm", "tiny-demo") is True
    assert not path.exists()
    assert await sink.delete("llm", "tiny-demo") is False
    assert [p.name for p in (tmp_path / "llm").iterdir()] == [], "no temporary files left behind"


async def test_foreign_and_unreadable_files_are_left_alone(tmp_path: Path) -> None:
    sink = DirSink(tmp_path)
    (tmp_path / "llm").mkdir()
    foreign = tmp_path / "llm" / "tiny-demo.yaml"
    foreign.write_text("kind: InferenceService\nmetadata: {name: tiny-demo, labels: {team: ours}}\n")
    broken = tmp_path / "llm" / "broken.yaml"
    broken.write_text("{not yaml: [")
    with pytest.raises(NotManagedError):
        await sink.apply(isvc())
    with pytest.raises(NotManagedError):
        await sink.delete("llm", "tiny-demo")
    with pytest.raises(NotManagedError):
        await sink.apply(isvc(name="broken"))
    assert await sink.list_managed() == []
    assert "team: ours" in foreign.read_text() and broken.read_text() == "{not yaml: ["


async def test_names_cannot_leave_the_directory_and_namespaces_are_enforced(tmp_path: Path) -> None:
    sink = DirSink(tmp_path / "out", namespaces=["llm"])
    bad = isvc()
    bad["metadata"]["namespace"] = "../etc"
    with pytest.raises(PermanentSinkError, match="not a valid Kubernetes name"):
        await sink.apply(bad)
    with pytest.raises(PermanentSinkError, match="not one this sink covers"):
        await sink.apply(isvc(namespace="other"))
    unmanaged = isvc()
    del unmanaged["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    with pytest.raises(PermanentSinkError, match="not labelled as managed"):
        await sink.apply(unmanaged)
    assert not (tmp_path / "etc").exists() and await sink.list_managed() == []
