"""The tiny checkpoints of tests/engine/conftest.py, shared with the tiny-writer tests here."""

from tests.engine.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    tiny_llama,
    tiny_llama3_rope,
    tiny_llama_linear_rope,
    tiny_llama_mha,
    tiny_llama_sharded,
    tiny_qwen2,
)
