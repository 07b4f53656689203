"""The model cache: filled once from a real S3 API (moto's server on loopback) with KServe's own storage
library; a second fill downloads nothing; concurrent fillers download once; an incomplete folder is filled
again; a destination outside the cache is refused; DOWNLOADING → CACHED | FAILED reach a real nats-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from events.local_server import LocalNatsServer
from events.types import LoadStatus, VersionLoadStatus
from runtimes.engine_args import MODEL_CACHE_MARKER
from runtimes.launcher import fill_model_cache
from runtimes.model_cache import CacheFillError, CacheRefused, cached_dir, fill, fill_with_status, is_cached, read_marker
from runtimes.start_phases import StartClock
from tests.fixtures.nats import stored_statuses
from tests.fixtures.s3 import S3Server

REPO = Path(__file__).resolve().parents[2]
HASH = "sha256:" + "ab12" * 16
TEMPLATE = "tiny-demo"
BUCKET = "models"
PREFIX = "tiny-demo/v3"
IDENTITY = (f"--content-hash={HASH}", f"--template={TEMPLATE}", "--version=3")
FILES = {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"\0" * 70_000, "tokenizer.json": b"{}"}


def weights(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in FILES.items():
        (directory / name).write_bytes(data)
    return directory


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[S3Server, str]]:
    with S3Server(tmp_path) as server:
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)
        yield server, server.upload_dir(BUCKET, PREFIX, weights(tmp_path / "source"))


def object_gets(server: S3Server) -> int:
    return server.requests("GET", f"/{BUCKET}/{PREFIX}/")


def all_requests(server: S3Server) -> int:
    return sum(server.requests(method, "/") for method in ("GET", "HEAD", "POST", "PUT"))


def test_a_fill_downloads_from_s3_and_a_second_fill_downloads_nothing(s3: tuple[S3Server, str], tmp_path: Path) -> None:
    server, source = s3
    dest = cached_dir(tmp_path / "cache", TEMPLATE, 3, HASH)

    first = fill(source, dest, content_hash=HASH, template=TEMPLATE, version=3)

    assert first.downloaded and first.path == dest
    assert {p.name: p.read_bytes() for p in dest.iterdir() if p.name != MODEL_CACHE_MARKER} == FILES
    assert (first.files, first.bytes) == (len(FILES), sum(map(len, FILES.values())))
    marker = read_marker(dest)
    assert marker is not None and marker.content_hash == HASH and marker.source == source
    assert object_gets(server) == len(FILES)
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".partial-")]
    before = all_requests(server)

    second = fill(source, dest, content_hash=HASH, template=TEMPLATE, version=3)

    assert not second.downloaded and second.bytes == first.bytes
    assert all_requests(server) == before  # not one request: no listing, no object


def test_concurrent_fillers_download_once(s3: tuple[S3Server, str], tmp_path: Path) -> None:
    server, source = s3
    dest = cached_dir(tmp_path / "cache", TEMPLATE, 3, HASH)
    command = [sys.executable, "-m", "runtimes", "cache-fill", f"--source={source}", f"--dest={dest}", *IDENTITY]
    env = os.environ | server.env
    fillers = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    outputs = [proc.communicate(timeout=120) for proc in fillers]

    assert [proc.returncode for proc in fillers] == [0, 0, 0], [err.decode()[-2000:] for _, err in outputs]
    results = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]
    assert sorted(r["downloaded"] for r in results) == [False, False, True]
    assert object_gets(server) == len(FILES)  # each object fetched once, by one filler
    assert is_cached(dest, HASH)


def test_a_folder_without_its_marker_is_filled_again(s3: tuple[S3Server, str], tmp_path: Path) -> None:
    server, source = s3
    dest = cached_dir(tmp_path / "cache", TEMPLATE, 3, HASH)
    dest.mkdir(parents=True)
    (dest / "model.safetensors").write_bytes(b"half a file")  # a filler killed mid-way (as if)

    result = fill(source, dest, content_hash=HASH, template=TEMPLATE, version=3)

    assert result.downloaded
    assert (dest / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    assert is_cached(dest, HASH)
    assert object_gets(server) == len(FILES)


def test_a_marker_with_another_content_hash_is_not_a_cached_copy(tmp_path: Path) -> None:
    source = weights(tmp_path / "source")
    dest = cached_dir(tmp_path / "cache", TEMPLATE, 3, HASH)
    fill(str(source), dest, content_hash=HASH, template=TEMPLATE, version=3)
    assert is_cached(dest, HASH)
    assert not is_cached(dest, HASH[:-4] + "ffff")


@pytest.mark.parametrize(
    "dest",
    [
        "elsewhere/models/tiny-demo/3-ab12ab12ab12ab12",  # not under the root given
        "cache/models/tiny-demo/../../../etc/3-ab12ab12ab12ab12",
        "cache/models/other/3-ab12ab12ab12ab12",  # another template's folder
        "cache/models/tiny-demo/4-ab12ab12ab12ab12",  # another version
        "cache/models/tiny-demo/3-ffffffffffffffff",  # another hash
        "cache/3-ab12ab12ab12ab12",
    ],
)
def test_a_destination_outside_the_version_folder_is_refused(tmp_path: Path, dest: str) -> None:
    with pytest.raises(CacheRefused):
        fill("s3://models/x", tmp_path / dest, content_hash=HASH, template=TEMPLATE, version=3, cache_root=tmp_path / "cache")
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "etc").exists()


def test_a_template_folder_linked_out_of_the_cache_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "cache" / "models").mkdir(parents=True)
    (tmp_path / "cache" / "models" / TEMPLATE).symlink_to(outside)
    dest = cached_dir(tmp_path / "cache", TEMPLATE, 3, HASH)
    with pytest.raises(CacheRefused, match="through a link"):
        fill("s3://models/x", dest, content_hash=HASH, template=TEMPLATE, version=3)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("bad", [{"template": "../x"}, {"content_hash": "md5:1234"}, {"version": -1}])
def test_bad_names_are_refused(tmp_path: Path, bad: dict[str, object]) -> None:
    args: dict[str, object] = {"template": TEMPLATE, "version": 3, "content_hash": HASH} | bad
    with pytest.raises(CacheRefused):
        cached_dir(tmp_path, **args)  # type: ignore[arg-type]


def test_the_cli_refuses_a_bad_destination_with_exit_code_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "runtimes", "cache-fill", "--source=s3://models/x", f"--dest={tmp_path}/etc/passwd", *IDENTITY],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "refused" in proc.stderr


def test_a_local_source_is_copied_not_linked(tmp_path: Path) -> None:
    source = weights(tmp_path / "image" / "tiny")
    dest = cached_dir(tmp_path / "cache", TEMPLATE, 3, HASH)
    fill(str(source), dest, content_hash=HASH, template=TEMPLATE, version=3)
    assert not [p for p in dest.iterdir() if p.is_symlink()]
    assert (dest / "model.safetensors").read_bytes() == FILES["model.safetensors"]


def test_the_head_fills_a_missing_cache_before_serving_and_times_it(tmp_path: Path) -> None:
    source = weights(tmp_path / "source")
    dest = cached_dir(tmp_path / "cache", TEMPLATE, 3, HASH)
    env = {
        "STOKEHOLD_MODEL_SOURCE": str(source),
        "STOKEHOLD_CONTENT_HASH": HASH,
        "STOKEHOLD_TEMPLATE": TEMPLATE,
        "STOKEHOLD_TEMPLATE_VERSION": "3",
    }
    clock = StartClock(started_at=0.0)
    fill_model_cache([f"--model={dest}", "--dtype=float32"], env, clock)
    assert is_cached(dest, HASH) and "download" in clock.phases

    again = StartClock(started_at=0.0)
    fill_model_cache([f"--model={dest}"], env, again)
    assert "download" not in again.phases  # the marker was there: nothing to fill


@pytest.mark.usefixtures("clean_stream")
def test_cached_and_failed_statuses_reach_the_bus(s3: tuple[S3Server, str], tmp_path: Path, nats_server: LocalNatsServer) -> None:
    _, source = s3
    env = {"STOKEHOLD_NATS_URL": nats_server.url}
    dest = cached_dir(tmp_path / "cache", TEMPLATE, 3, HASH)
    fill_with_status(source, dest, content_hash=HASH, template=TEMPLATE, version=3, env=env)
    missing = cached_dir(tmp_path / "cache", TEMPLATE, 4, HASH)
    with pytest.raises(CacheFillError):
        fill_with_status("s3://no-such-bucket/tiny", missing, content_hash=HASH, template=TEMPLATE, version=4, env=env)

    statuses = stored_statuses(nats_server, VersionLoadStatus)

    assert [(s.version, s.status) for s in statuses] == [
        (3, LoadStatus.DOWNLOADING),
        (3, LoadStatus.CACHED),
        (4, LoadStatus.DOWNLOADING),
        (4, LoadStatus.FAILED),
    ]
    cached, failed = statuses[1], statuses[3]
    assert cached.bytes == sum(map(len, FILES.values())) and cached.seconds is not None and cached.cache == str(dest)
    assert failed.reason is not None and "no-such-bucket" in failed.reason and len(failed.reason) <= 1000
    assert not missing.exists()
