"""The tiny model: deterministic per seed, a shape vLLM's CPU backend accepts, and a real Hugging Face model."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from runtimes.cli import app
from runtimes.tiny_model import EOS, HEAD_DIM, build_tiny_model, describe, file_hashes


def test_same_seed_gives_the_same_files(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again")
    assert file_hashes(again) == file_hashes(tiny_model_dir)
    other = file_hashes(build_tiny_model(tmp_path / "seed-1", seed=1))
    assert other["model.safetensors"] != file_hashes(tiny_model_dir)["model.safetensors"]
    assert other["tokenizer.json"] == file_hashes(tiny_model_dir)["tokenizer.json"]  # the seed is for the weights


def test_shape_suits_vllm_on_cpu(tiny_model_dir: Path) -> None:
    facts = describe(tiny_model_dir)
    assert facts["architectures"] == ["LlamaForCausalLM"]
    assert facts["head_dim"] >= 64 and facts["head_dim"] == HEAD_DIM
    assert facts["hidden_size"] == facts["head_dim"] * facts["num_attention_heads"]
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["max_position_embeddings"] >= 2048  # long streams for the drain and overload tests


def test_loads_and_generates_in_transformers(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.eos_token == EOS
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Say hello"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|begin|><|user|>\nSay hello<|end|>\n<|assistant|>\n"
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    assert tokenizer.convert_tokens_to_ids("<|user|>") in ids[0].tolist()  # role markers are single special tokens
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert out.shape[1] == ids.shape[1] + 4
    assert tokenizer.decode(tokenizer("Hello from stokehold").input_ids) == "Hello from stokehold"  # byte-level round trip


def test_cli_builds_the_model(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["build-tiny", str(tmp_path / "cli"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "model.safetensors" in result.output and "LlamaForCausalLM" in result.output
    assert file_hashes(tmp_path / "cli") == file_hashes(build_tiny_model(tmp_path / "lib", seed=3))
    missing = CliRunner().invoke(app, ["describe", str(tmp_path / "nope")])
    assert missing.exit_code != 0
