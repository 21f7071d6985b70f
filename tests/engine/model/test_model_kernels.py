"""The model with its fused elementwise kernels (RMSNorm + residual, in-place RoPE, SiLU * up)
gives the portable path's greedy tokens through the whole runner.

On CPU the kernels run in Triton's interpreter: the dispatchers' device check is forced open in
a subprocess. On a GPU (skipped without one) the runner takes them by itself and is compared
with the dispatch forced onto the portable path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.runner.model_runner import ModelRunner

from .._interpret import needs_cuda, needs_triton, run_interpreted
from .._runner_helpers import greedy_generate, shuffled_blocks

PROMPT = [0, 17, 345, 12, 900, 77, 5, 613, 240, 31, 8, 1000, 64, 129, 3, 450]
MODULES = ("isthmus.engine.model.causal_lm.kernels_available", "isthmus.engine.kernels.norm.available",
           "isthmus.engine.kernels.act.available", "isthmus.engine.kernels.rope.available")


def tokens(path: str, device: str = "cpu") -> list[int]:
    runner = ModelRunner(EngineOptions(model=path, device=device, dtype="float32", block_size=4,
                                       num_kv_blocks=32, max_model_len=128, use_cuda_graphs=False))
    return greedy_generate(runner, PROMPT, 8, chunk=5, blocks=shuffled_blocks(32, 8, seed=2))


def set_dispatch(value: bool, monkeypatch: pytest.MonkeyPatch | None = None) -> None:
    import importlib

    for dotted in MODULES:
        module_name, attr = dotted.rsplit(".", 1)
        module = importlib.import_module(module_name)
        if monkeypatch is None:
            setattr(module, attr, lambda device, v=value: v)
        else:
            monkeypatch.setattr(module, attr, lambda device, v=value: v)


_INTERPRETED = """
import sys
from tests.engine.model.test_model_kernels import set_dispatch, tokens

for path in sys.argv[1:]:
    portable = tokens(path)
    set_dispatch(True)
    fused = tokens(path)
    set_dispatch(False)
    assert fused == portable, (path, fused, portable)
print("ok")
"""


@needs_triton
def test_fused_elementwise_kernels_match_portable_in_interpreter(tiny_llama: Path, tiny_qwen2: Path) -> None:
    """GQA LLaMA and Qwen2 (qkv bias, tied embeddings), float32, head_dim 16."""
    run_interpreted(_INTERPRETED, str(tiny_llama), str(tiny_qwen2))


@needs_cuda
def test_fused_elementwise_kernels_match_portable_on_gpu(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert torch.cuda.is_available()
    fused = tokens(str(tiny_llama), "cuda")
    set_dispatch(False, monkeypatch)
    assert tokens(str(tiny_llama), "cuda") == fused
