"""The runner on CUDA (skipped without a GPU): bf16, nf4 and int8 runs agree with the CPU fp32 model.

The GPU runner captures its decode steps in CUDA graphs (the default), so `greedy_generate`'s
decode steps replay graphs and its prefill chunks run eagerly; its tokens are compared with an
eager GPU runner's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.runner.model_runner import ModelRunner

from .._runner_helpers import greedy_generate, logits_of, seq

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PROMPT = [0, 17, 345, 12, 900, 77, 5, 613, 240, 31, 8, 1000, 64, 129, 3, 450]


@pytest.mark.parametrize("quant", [None, "nf4", "int8"])
def test_cuda_runner_close_to_cpu_fp32(tiny_llama: Path, quant: str | None) -> None:
    cpu = ModelRunner(EngineOptions(model=str(tiny_llama), block_size=4, num_kv_blocks=16))
    gpu = ModelRunner(
        EngineOptions(
            model=str(tiny_llama), device="cuda", quantization=quant, block_size=4, num_kv_blocks=16
        )
    )
    assert gpu.dtype == torch.bfloat16
    assert gpu.graphs is not None, "decode-step capture failed (see the warning)"
    blocks = list(range(16))
    ref = logits_of(cpu, seq(1, PROMPT, 0, len(PROMPT), len(PROMPT), blocks))
    ours = logits_of(gpu, seq(1, PROMPT, 0, len(PROMPT), len(PROMPT), blocks)).cpu()
    err = (ours - ref).abs().mean().item()
    print(f"cuda bf16 {quant}: mean abs logit error vs CPU fp32 {err:.4f}")
    assert err < 0.25 * ref.abs().mean().item()
    out = greedy_generate(gpu, PROMPT, 8, chunk=5, blocks=blocks)
    assert len(out) == 8
    assert all(0 <= t < gpu.vocab_size for t in out)
    # The decode steps above replayed graphs; the same runner without them runs the same kernels
    # at batch 1 eagerly, so the greedy tokens agree (the first several, in case of a bf16 tie).
    eager = ModelRunner(
        EngineOptions(
            model=str(tiny_llama), device="cuda", quantization=quant, block_size=4, num_kv_blocks=16,
            use_cuda_graphs=False,
        )
    )
    assert eager.graphs is None
    assert greedy_generate(eager, PROMPT, 8, chunk=5, blocks=blocks)[:6] == out[:6]
