"""A tiny random-weight Llama with its own byte-level BPE tokenizer and chat template.

It stands in for a real model wherever nothing may be downloaded (tests, `make demo`, the
CPU runtime image). Everything is derived from the seed, so the same seed gives the same
files byte for byte. The words it generates are noise; the serving path is the real one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

DEFAULT_SEED = 0
HIDDEN_SIZE = 128
HEAD_DIM = 64  # vLLM's CPU attention backend needs head_dim >= 64
NUM_HEADS = HIDDEN_SIZE // HEAD_DIM
NUM_LAYERS = 2
INTERMEDIATE_SIZE = 256
MAX_POSITIONS = 2048
TOKENIZER_VOCAB = 512

BOS, EOS, PAD = "<|begin|>", "<|end|>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)
THINK_START, THINK_END = "<think>", "</think>"
TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"
# The markers of the formats vLLM's `hermes` tool-call parser and its think-tag reasoning parsers
# (`deepseek_r1`, `qwen3`) read: single tokens, as in the models those parsers are for, and not
# special, so they stay in the decoded text where the parsers look for them.
MARKUP_TOKENS = (THINK_START, THINK_END, TOOL_CALL_START, TOOL_CALL_END)

# `{{ '<|' + role + '|>' }}` keeps the role markers special tokens for the three known roles. With
# `tools`, a system turn lists their signatures and asks for calls in the Hermes format, which
# `--tool-call-parser=hermes` reads back; assistant turns replay their calls, tool results come back
# as user turns.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|system|>\nFunctions you may call, one JSON signature a line:\n<tools>\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}"
    '</tools>\nTo call one, answer <tool_call>{"name": NAME, "arguments": {...}}</tool_call>{{ eos_token }}\n'
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}"
    "<|user|>\n<tool_response>{{ message['content'] }}</tool_response>{{ eos_token }}\n"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>' }}\n{{ message['content'] or '' }}"
    "{% for call in message['tool_calls'] or [] %}"
    "<tool_call>{{ {'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson }}</tool_call>"
    "{% endfor %}"
    "{{ eos_token }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}\n{% endif %}"
)

TRAINING_TEXT = (
    "Hello from stokehold, the event driven way to run open language models on Kubernetes.",
    "Templates are published as events, and the controller turns them into inference services.",
    "The runtime serves the OpenAI API with vLLM, and scales to zero when nobody is asking.",
    "A tiny model answers quickly: one, two, three, four, five, six, seven, eight, nine, ten.",
    "The quick brown fox jumps over the lazy dog while the moon rises over Paris and Berlin.",
    "System: you are a helpful assistant. User: say hello. Assistant: hello, how can I help?",
)


def _train_tokenizer() -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in MARKUP_TOKENS])
    return tokenizer


def _save_tokenizer(tokenizer: Any, out: Path) -> int:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=MAX_POSITIONS,
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(str(out))
    return len(fast)


def _save_model(vocab_size: int, token_ids: dict[str, int], seed: int, out: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=token_ids[BOS],
        eos_token_id=token_ids[EOS],
        pad_token_id=token_ids[PAD],
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()  # type: ignore[no-untyped-call]
    ids = {"bos_token_id": token_ids[BOS], "eos_token_id": token_ids[EOS], "pad_token_id": token_ids[PAD]}
    model.generation_config = GenerationConfig(**ids)  # type: ignore[no-untyped-call]
    model.save_pretrained(str(out), safe_serialization=True)


def build_tiny_model(out_dir: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """Write the tiny model (config, safetensors weights, tokenizer, chat template) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    vocab_size = _save_tokenizer(tokenizer, out)
    token_ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    _save_model(vocab_size, token_ids, seed, out)
    (out / "README.md").write_text(
        f"# tiny-demo\n\nRandom-weight Llama ({NUM_LAYERS} layers, hidden {HIDDEN_SIZE}, head_dim {HEAD_DIM}, "
        f"vocabulary {vocab_size}) built by `stokehold models build-tiny` with seed {seed}. It generates noise.\n"
    )
    return out


def file_hashes(model_dir: str | Path) -> dict[str, str]:
    """sha256 of every file in a model directory, by relative path."""
    root = Path(model_dir)
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(root.rglob("*")) if path.is_file()
    }


def describe(model_dir: str | Path) -> dict[str, Any]:
    """The architecture facts of a built model, from its config.json."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    keys = ("architectures", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim")
    return {key: config.get(key) for key in keys}
