"""A scoring template (STOKEHOLD_TASK=score): a cross-encoder reranker on vLLM's pooling runner behind the same runtime.

The model is a tiny random-weight XLMRobertaForSequenceClassification with one label, the architecture of
BAAI/bge-reranker-v2-m3, and a tokenizer that joins a pair as XLM-R does (`<s> query </s></s> document </s>`).
Its scores are noise; what is checked is that every document gets one, that the routes agree with each
other, and that the gate's rules (API key, body cap) hold on them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtimes.local import LocalServer, free_port, runtime_command

pytestmark = pytest.mark.vllm

MODEL = "tiny-rerank"
KEY = "rerank-key"
MAX_BODY_BYTES = 8192
QUERY = "What is the capital of France?"
DOCUMENTS = ["Paris is the capital of France.", "The quick brown fox jumps over the lazy dog.", "Berlin is in Germany."]
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # XLM-R's ids 0-3
TRAINING_TEXT = (QUERY, *DOCUMENTS, "Rerankers score a query against each document, one pair at a time.")


def build_tiny_reranker(out: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaForSequenceClassification

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=512,
    )
    fast.save_pretrained(str(out))
    config = XLMRobertaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 64: vLLM's CPU attention backend needs at least that
        intermediate_size=256,
        max_position_embeddings=514,  # RoBERTa's positions start after the padding id
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=1,  # one relevance logit: what makes vLLM serve /score and /rerank for a classifier
        dtype="float32",
    )
    torch.manual_seed(seed)
    XLMRobertaForSequenceClassification(config).eval().save_pretrained(str(out), safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    model_dir = build_tiny_reranker(tmp_path_factory.mktemp("models") / "tiny-rerank")
    port = free_port()
    command = runtime_command(model_dir, MODEL, port, "--dtype=float32", "--enforce-eager", "--max-model-len=512")
    env = {"STOKEHOLD_TASK": "score", "STOKEHOLD_API_KEY": KEY, "STOKEHOLD_MAX_BODY_BYTES": str(MAX_BODY_BYTES)}
    runtime = LocalServer(command, port, tmp_path_factory.mktemp("logs") / "rerank.log", env)
    with runtime:
        runtime.wait_until("/ready", timeout=400)
        yield runtime


def post(server: LocalServer, path: str, body: dict[str, Any], key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.base_url + path, json=body, headers=headers, timeout=60)


def rerank(server: LocalServer, path: str = "/v1/rerank", **extra: Any) -> list[dict[str, Any]]:
    response = post(server, path, {"model": MODEL, "query": QUERY, "documents": DOCUMENTS, **extra})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def test_rerank_scores_every_document_best_first(server: LocalServer) -> None:
    for path in ("/v1/rerank", "/rerank", "/v2/rerank", "/openai/v1/rerank"):
        results = rerank(server, path)
        assert sorted(r["index"] for r in results) == [0, 1, 2], path
        assert [r["document"]["text"] for r in results] == [DOCUMENTS[r["index"]] for r in results]
        scores = [r["relevance_score"] for r in results]
        assert scores == sorted(scores, reverse=True)
        assert all(0.0 < s < 1.0 for s in scores)  # one logit through a sigmoid
    assert [r["index"] for r in rerank(server, top_n=1)] == [rerank(server)[0]["index"]]


def test_score_gives_each_pair_the_score_rerank_gave_it(server: LocalServer) -> None:
    by_index = {r["index"]: r["relevance_score"] for r in rerank(server)}
    for path in ("/v1/score", "/score", "/openai/v1/score"):
        response = post(server, path, {"model": MODEL, "text_1": QUERY, "text_2": DOCUMENTS})
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert [d["index"] for d in data] == [0, 1, 2]
        assert all(math.isclose(d["score"], by_index[d["index"]], rel_tol=1e-4) for d in data), (data, by_index)
    one = post(server, "/score", {"model": MODEL, "text_1": QUERY, "text_2": DOCUMENTS[2]}).json()["data"]
    assert len(one) == 1 and math.isclose(one[0]["score"], by_index[2], rel_tol=1e-4)  # a pair's score does not depend on its batch


def test_readiness_computes_a_score(server: LocalServer) -> None:
    ready = httpx.get(server.base_url + "/ready", timeout=30)
    assert ready.status_code == 200 and ready.json() == {"ready": True, "reason": "computed a score"}


def test_the_gate_rules_hold_on_the_scoring_routes(server: LocalServer) -> None:
    body = {"model": MODEL, "query": QUERY, "documents": DOCUMENTS}
    for path in ("/v1/rerank", "/score"):
        refused = post(server, path, body, key=None)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    too_large = post(server, "/rerank", {**body, "documents": ["x" * MAX_BODY_BYTES]})
    assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "request_too_large"
    # a reranker does not generate: vLLM has no chat route for it, and the answer is still an OpenAI error
    chat = post(server, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
    assert chat.status_code == 404 and set(chat.json()["error"]) == {"message", "type", "param", "code"}
    pooling = post(server, "/pooling", {"model": MODEL, "input": "x"})
    assert pooling.status_code == 404 and pooling.json()["error"]["code"] == "not_found"  # the gate's: not served
