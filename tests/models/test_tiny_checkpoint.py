"""The tiny checkpoint writer: determinism, sharding, configs our loader and transformers accept."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from isthmus.engine.model.checkpoint import INDEX_FILE, open_checkpoint
from isthmus.engine.model.config import ModelConfig
from isthmus.models.tiny_checkpoint import _tensor_shapes, make_tiny_checkpoint

FIXTURES = [
    "tiny_llama",
    "tiny_llama_mha",
    "tiny_llama_linear_rope",
    "tiny_llama3_rope",
    "tiny_qwen2",
    "tiny_llama_sharded",
]


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = make_tiny_checkpoint(tmp_path / "a", seed=9)
    b = make_tiny_checkpoint(tmp_path / "b", seed=9)
    c = make_tiny_checkpoint(tmp_path / "c", seed=10)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_configs_parse(request: pytest.FixtureRequest, name: str) -> None:
    path: Path = request.getfixturevalue(name)
    config = ModelConfig.from_pretrained(path)
    tok_config = json.loads((path / "tokenizer_config.json").read_text())
    assert config.vocab_size == 1024 and config.num_layers == 2 and config.hidden_size == 64
    assert config.bos_token_id == 0 and config.eos_token_ids  # from the tokenizer's special tokens
    assert tok_config["bos_token"]["content"].startswith("<")
    assert config.tie_word_embeddings == (name == "tiny_qwen2")
    assert config.qkv_bias == (name == "tiny_qwen2")


def test_shards_respect_max_size(tiny_llama_sharded: Path) -> None:
    index = json.loads((tiny_llama_sharded / INDEX_FILE).read_text())
    files = set(index["weight_map"].values())
    for f in files:
        # A shard only exceeds the limit when a single tensor does (the embeddings: 256 KB).
        names = [n for n, v in index["weight_map"].items() if v == f]
        assert len(names) == 1 or (tiny_llama_sharded / f).stat().st_size <= 64 * 1024 + 4096
    assert {n for n, _ in open_checkpoint(tiny_llama_sharded)} == set(index["weight_map"])


def test_7b_shape_has_deepseek_7b_parameter_count() -> None:
    shapes = _tensor_shapes("llama", 4096, 30, 4096, 4096, 11008, 102400, tied=False)
    total = sum(math.prod(s) for _, s in shapes)
    assert 6.90e9 < total < 6.92e9


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="arch"):
        make_tiny_checkpoint(tmp_path / "x", arch="gpt2")
    with pytest.raises(ValueError, match="dtype"):
        make_tiny_checkpoint(tmp_path / "y", dtype="int4")
