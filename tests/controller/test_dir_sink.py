"""The GitOps directory sink."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from controller.labels import Object
from controller.metrics import ControllerMetrics
from controller.render import render_inference_service
from controller.render_config import RenderConfig
from controller.sinks.base import ApplyAction, NotManagedError, PermanentSinkError, TransientSinkError
from controller.sinks.dir import MAX_FILE_BYTES, TEMP_NAME, DirSink, to_yaml
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


# ------------------------------------------------------------ I/O errors are transient (finding 5)


def set_immutable(path: Path, on: bool) -> bool:
    """`chattr ±i`: False where the tool, the capability or the file system's support is missing."""
    try:
        done = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


FILE_IN_THE_WAY, IMMUTABLE = "file in the way", "immutable directory"


def block(directory: Path, how: str) -> str:
    """Make `directory` refuse writes even to root; returns how it was done.

    IMMUTABLE is `chattr +i` (EPERM); where the tool, CAP_LINUX_IMMUTABLE or the file system's support
    is missing, the directory is blocked the other real way instead, FILE_IN_THE_WAY (ENOTDIR/EEXIST).
    """
    if how == IMMUTABLE and set_immutable(directory, True):
        return IMMUTABLE
    directory.rename(directory.with_name(directory.name + ".saved"))
    directory.write_text("a file where the directory should be")
    return FILE_IN_THE_WAY


def unblock(directory: Path, how: str) -> None:
    """Undo `block`; `how` is what it returned."""
    if how == IMMUTABLE:
        set_immutable(directory, False)
        return
    directory.unlink()
    directory.with_name(directory.name + ".saved").rename(directory)


@pytest.mark.parametrize(
    "code", [errno.EPERM, errno.EACCES, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOTDIR, errno.EISDIR, errno.EEXIST]
)
async def test_every_io_error_is_transient(tmp_path: Path, code: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Injected: the file system refuses the rename (as a read-only or full directory would); nothing is written."""
    sink = DirSink(tmp_path)

    def refuse(*_: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(TransientSinkError):
        await sink.apply(isvc())
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "llm").iterdir()] == [], "the temporary file is cleaned up"
    assert await sink.apply(isvc()) is ApplyAction.CREATED, "written once the file system works again"


async def test_a_file_where_the_namespace_directory_should_be_is_transient(tmp_path: Path) -> None:
    """Real kernel errors (ENOTDIR, EEXIST) without root's immunity to permission bits: the directory is replaced by a file."""
    sink = DirSink(tmp_path)
    (tmp_path / "llm").write_text("in the way")
    with pytest.raises(TransientSinkError):
        await sink.apply(isvc())
    with pytest.raises(TransientSinkError):
        await sink.delete("llm", "tiny-demo")
    (tmp_path / "llm").unlink()
    assert await sink.apply(isvc()) is ApplyAction.CREATED


async def test_an_immutable_directory_is_transient(tmp_path: Path) -> None:
    """A real EPERM even for root: `chattr +i` (needs CAP_LINUX_IMMUTABLE and a file system that has the
    attribute; without them, the directory is blocked by a file in its place, a real ENOTDIR)."""
    sink = DirSink(tmp_path)
    assert await sink.apply(isvc()) is ApplyAction.CREATED
    directory = tmp_path / "llm"
    how = block(directory, IMMUTABLE)
    try:
        with pytest.raises(TransientSinkError, match="not permitted" if how == IMMUTABLE else "Not a directory"):
            await sink.apply(isvc(stopped=True))
        with pytest.raises(TransientSinkError):
            await sink.apply(isvc(name="second"))
    finally:
        unblock(directory, how)
    assert await sink.apply(isvc(stopped=True)) is ApplyAction.UPDATED


# ------------------------------------------------------ hostile files never crash it (finding 6)


def hostile_directory(root: Path, outside: Path, namespace: str = "llm") -> dict[str, Path]:
    """The files of finding 6 next to one managed object: what each is called → its path."""
    llm = root / namespace
    llm.mkdir(parents=True)
    (llm / "ok.yaml").write_text(to_yaml(isvc(name="ok", namespace=namespace)))
    secret = outside / "shadow"
    secret.write_text("root:$6$saltsalt$hashhashhash:19000:0:99999:7:::\n")
    elsewhere = outside / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.yaml").write_text(to_yaml(isvc(name="x")))
    paths = {
        "big number": llm / "big-number.yaml",
        "deep nesting": llm / "deep.yaml",
        "binary junk": llm / "junk.yaml",
        "symlink": llm / "link.yaml",
        "too large": llm / "large.yaml",
        "fifo": llm / "fifo.yaml",
        "symlinked namespace": root / "evil",
    }
    paths["big number"].write_text("metadata:\n  generation: " + "9" * 5000 + "\n")
    paths["deep nesting"].write_text("[" * 20000)
    paths["binary junk"].write_bytes(bytes(range(256)) * 40)
    paths["symlink"].symlink_to(secret)
    paths["too large"].write_text("a: " + "x" * (MAX_FILE_BYTES + 10) + "\n")
    os.mkfifo(paths["fifo"])
    paths["symlinked namespace"].symlink_to(elsewhere, target_is_directory=True)
    return paths


async def test_hostile_files_are_skipped_and_reported(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    metrics = ControllerMetrics()
    sink = DirSink(tmp_path / "gitops", metrics=metrics)
    paths = hostile_directory(tmp_path / "gitops", outside)
    before = (outside / "elsewhere" / "x.yaml").read_text()
    listed = await sink.list_managed()
    assert [o["metadata"]["name"] for o in listed] == ["ok"], "only the managed object; nothing through a link"
    assert set(sink.skipped) == set(paths.values())
    assert "symbolic link" in sink.skipped[paths["symlink"]] and "hash" not in " ".join(sink.skipped.values())
    assert metrics.unreadable_files._value.get() == len(paths)
    with pytest.raises(NotManagedError, match="symbolic link"):
        await sink.apply(isvc(name="link"))
    with pytest.raises(NotManagedError, match="symbolic link"):
        await sink.apply(isvc(namespace="evil", name="x"))
    assert "root:$6$" in (outside / "shadow").read_text() and "stokehold" not in (outside / "shadow").read_text()
    assert (outside / "elsewhere" / "x.yaml").read_text() == before, "nothing written through the symlinked namespace"


async def test_stale_temporary_files_are_removed_by_the_first_listing(tmp_path: Path) -> None:
    """What SIGKILL between create and rename leaves: `.<name>.yaml.<random>.tmp` (`_write`'s mkstemp names)."""
    sink = DirSink(tmp_path)
    assert await sink.apply(isvc()) is ApplyAction.CREATED
    stale = tmp_path / "llm" / ".tiny-demo.yaml.k3_x9a2q.tmp"
    stale.write_text("half a fi")
    other = tmp_path / "llm" / "notes.tmp"
    other.write_text("someone else's")
    assert TEMP_NAME.fullmatch(stale.name)
    restarted = DirSink(tmp_path)
    assert [o["metadata"]["name"] for o in await restarted.list_managed()] == ["tiny-demo"]
    assert not stale.exists() and other.exists() and restarted.removed_temporaries == 1
