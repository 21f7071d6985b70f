"""Center fixtures: tiny checkpoints whose head counts suit TP=2, and a free-port helper."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from isthmus.engine.tiny import make_tiny_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def tp_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GQA LLaMA: 4 query heads, 2 KV heads -> TP=2 splits the KV heads (one per rank)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tp_llama"), "llama", seed=1)


@pytest.fixture(scope="session")
def tp_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2 (qkv bias, tied embeddings) with ONE KV head -> TP=2 replicates it on both ranks."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tp_qwen2"), "qwen2", seed=5, num_kv_heads=1)
