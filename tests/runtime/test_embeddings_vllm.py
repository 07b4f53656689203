"""An embedding template (STOKEHOLD_TASK=embed): vLLM's pooling runner behind the same runtime."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from runtimes.local import LocalServer, free_port, runtime_command
from runtimes.tiny_model import HIDDEN_SIZE

pytestmark = pytest.mark.vllm

MODEL = "tiny-embed"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    port = free_port()
    command = runtime_command(tiny_model_dir, MODEL, port, "--dtype=float32", "--enforce-eager", "--max-model-len=512")
    runtime = LocalServer(command, port, tmp_path_factory.mktemp("logs") / "embed.log", {"STOKEHOLD_TASK": "embed"})
    with runtime:
        runtime.wait_until("/ready", timeout=400)
        yield runtime


def test_embeddings_on_both_prefixes(server: LocalServer) -> None:
    for prefix in ("/v1", "/openai/v1"):
        client = OpenAI(base_url=server.base_url + prefix, api_key="unused", max_retries=0, timeout=60)
        result = client.embeddings.create(model=MODEL, input=["hello", "world"])
        assert [d.index for d in result.data] == [0, 1]
        vectors = [d.embedding for d in result.data]
        assert all(len(v) == HIDDEN_SIZE for v in vectors)
        assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-3) for v in vectors)  # normalised
        assert vectors[0] != vectors[1]


def test_readiness_computes_an_embedding(server: LocalServer) -> None:
    ready = httpx.get(server.base_url + "/ready", timeout=30)
    assert ready.status_code == 200 and ready.json() == {"ready": True, "reason": "computed an embedding"}


def test_generation_routes_are_absent_with_an_openai_error(server: LocalServer) -> None:
    response = httpx.post(server.base_url + "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
