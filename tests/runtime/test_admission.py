"""How many sequences a request asks for, read the way vLLM's request models read it."""

from __future__ import annotations

from typing import Any

import pytest

from runtimes.admission import sequences


@pytest.mark.parametrize(
    ("path", "document", "expected"),
    [
        ("/v1/completions", {"prompt": "hi"}, 1),
        ("/v1/completions", {"prompt": "hi", "n": 1000}, 1000),
        ("/v1/completions", {"n": "12"}, 12),  # pydantic's lax mode reads "12" and 12.0 as 12
        ("/v1/completions", {"n": 12.0}, 12),
        ("/v1/completions", {"n": " 7 "}, 7),
        ("/v1/completions", {"n": 2, "best_of": 5}, 5),
        ("/v1/completions", {"n": 5, "best_of": 2}, 5),
        ("/v1/completions", {"prompt": ["a", "b", "c"], "n": 4}, 12),
        ("/v1/completions", {"prompt": [[1, 2], [3], [4]]}, 3),
        ("/v1/completions", {"prompt": [1, 2, 3]}, 1),  # token ids of one prompt
        ("/v1/completions", {"prompt": []}, 1),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}] * 5, "n": 3}, 3),
        ("/v1/chat/completions", {"prompt": ["a", "b"]}, 1),  # chat has no prompt list
        ("/v1/embeddings", {"input": ["a"] * 100, "n": 9}, 1),
        # what vLLM refuses counts as 1 and goes on to vLLM's own 400
        ("/v1/completions", {"n": True}, 1),
        ("/v1/completions", {"n": "many"}, 1),
        ("/v1/completions", {"n": 2.5}, 1),
        ("/v1/completions", {"n": -4}, 1),
        ("/v1/completions", {"n": "1e400"}, 1),
        ("/v1/completions", {"n": None}, 1),
        ("/v1/completions", ["not", "an", "object"], 1),
        ("/v1/completions", None, 1),
    ],
)
def test_sequences(path: str, document: Any, expected: int) -> None:
    assert sequences(path, document) == expected
