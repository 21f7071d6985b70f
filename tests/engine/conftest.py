"""Shared engine fixtures: tiny random checkpoints written once per test session.

Each fixture returns the checkpoint folder (a `Path`). All use the tiny 1024-token tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from isthmus.models.tiny_checkpoint import make_tiny_checkpoint

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 256,
}


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LLaMA with grouped-query attention (4 heads, 2 KV heads), fp32, with a sha256 manifest."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_llama"), "llama", seed=1, write_manifest=True)


@pytest.fixture(scope="session")
def tiny_llama_mha(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LLaMA with multi-head attention (4 heads, 4 KV heads), as DeepSeek-LLM-7B."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_llama_mha"), "llama", seed=2, num_kv_heads=4)


@pytest.fixture(scope="session")
def tiny_llama_linear_rope(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LLaMA with linear RoPE scaling, as DeepSeek-Coder."""
    return make_tiny_checkpoint(
        tmp_path_factory.mktemp("tiny_llama_linear"), "llama", seed=3,
        rope_scaling={"type": "linear", "factor": 2.0}, rope_theta=100000.0,
    )


@pytest.fixture(scope="session")
def tiny_llama3_rope(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LLaMA with llama3 RoPE scaling, as DeepSeek-R1-Distill-Llama."""
    return make_tiny_checkpoint(
        tmp_path_factory.mktemp("tiny_llama3"), "llama", seed=4, rope_scaling=dict(LLAMA3_ROPE),
        rope_theta=500000.0,
    )


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2 with qkv bias and tied embeddings, as DeepSeek-R1-Distill-Qwen-1.5B."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_qwen2"), "qwen2", seed=5)


@pytest.fixture(scope="session")
def tiny_llama_sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights as `tiny_llama` (seed 1), split into ~64 KB shards with an index."""
    return make_tiny_checkpoint(
        tmp_path_factory.mktemp("tiny_llama_sharded"), "llama", seed=1, max_shard_size=64 * 1024,
        write_manifest=True,
    )
