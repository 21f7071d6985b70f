"""Greedy tokens through the whole runner with the Triton attention kernels equal the portable
path's: batched steps mixing fresh prefills, a chunked prefill over its cached prefix, and decodes.

On CPU the kernels run in Triton's interpreter (attention.py's dispatch forced onto them); on a
GPU the runner takes them by itself and is compared with the portable path forced on.
"""

from __future__ import annotations

from pathlib import Path

import torch
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.plan import SchedulePlan
from isthmus.engine.kernels import decode_attention
from isthmus.engine.model import attention
from isthmus.engine.runner.model_runner import ModelRunner

from .._interpret import needs_cuda, needs_triton, run_interpreted
from .._runner_helpers import seq, shuffled_blocks

PROMPTS = {
    1: [0, 17, 345, 12, 900, 77, 5, 613, 240, 31, 8, 1000, 64],
    2: [3, 44, 512, 9, 87, 250, 11],
    3: [7, 1, 2, 300, 301, 302, 5, 66, 770, 42, 19, 23, 900, 4, 8, 15, 16, 23, 42, 99, 100, 101],
}
CHUNKS = {1: 8, 2: 7, 3: 10}  # prefill chunk per step: 1 and 3 are chunked, 2 fits in one
STEPS = 6
BLOCK = 4


def generate(runner: ModelRunner) -> dict[int, list[int]]:
    """Run every sequence together, step by step; each step feeds each sequence its next prefill
    chunk or its last token. Returns the generated tokens per sequence."""
    blocks = shuffled_blocks(runner_blocks(runner), 30, seed=3)
    tables = {i: blocks[10 * (i - 1) : 10 * i] for i in PROMPTS}
    history = {i: list(p) for i, p in PROMPTS.items()}
    fed = dict.fromkeys(PROMPTS, 0)
    for _ in range(STEPS):
        plan = []
        for i, prompt in PROMPTS.items():
            start = fed[i] if fed[i] < len(prompt) else len(history[i]) - 1
            end = min(len(prompt), start + CHUNKS[i]) if fed[i] < len(prompt) else len(history[i])
            plan.append(seq(i, history[i], start, end, len(prompt), tables[i], block_size=BLOCK))
            fed[i] = end
        out = runner.run(SchedulePlan(plan))
        for i in PROMPTS:
            if i in out.sampled:
                history[i].append(out.sampled[i].token_id)
    return {i: history[i][len(p) :] for i, p in PROMPTS.items()}


def runner_blocks(runner: ModelRunner) -> int:
    return int(runner.kv_caches[0][0].shape[0])


def make_runner(path: str, device: str = "cpu") -> ModelRunner:
    """float32 everywhere (bf16 rounding could flip a near-tie between two correct paths); no
    CUDA graphs, so every decode step goes through attention.py's dispatch."""
    return ModelRunner(
        EngineOptions(
            model=path, block_size=BLOCK, num_kv_blocks=64, max_model_len=128, device=device,
            dtype="float32", use_cuda_graphs=False,
        )
    )


_INTERPRETED = """
import sys
from isthmus.engine.kernels import decode_attention
from isthmus.engine.model import attention
from tests.engine.runner.test_kernels_runner import generate, make_runner

for path in sys.argv[1:]:
    portable = generate(make_runner(path))
    assert all(len(t) >= 3 for t in portable.values()), portable
    attention.prefill_supported = lambda q, k_cache: True  # attention.py's dispatch takes the kernels
    decode_attention.supports = lambda q, k_cache: True
    kernels = generate(make_runner(path))
    assert kernels == portable, (path, kernels, portable)
    attention.prefill_supported = lambda q, k_cache: False
    decode_attention.supports = lambda q, k_cache: False
print("ok")
"""


@needs_triton
def test_runner_tokens_with_kernels_in_triton_interpreter(tiny_llama: Path, tiny_llama_mha: Path) -> None:
    """GQA 4/2 and MHA 4/4 tiny models (head_dim 16, fp32)."""
    run_interpreted(_INTERPRETED, str(tiny_llama), str(tiny_llama_mha))


@needs_cuda
def test_runner_tokens_with_kernels_on_gpu(tiny_llama: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    q, k_cache = torch.zeros(1, 4, 16, device="cuda"), torch.zeros(1, 4, 2, 16, device="cuda")
    assert attention.prefill_supported(q, k_cache) and decode_attention.supports(q, k_cache)
    kernels = generate(make_runner(str(tiny_llama), "cuda"))
    monkeypatch.setattr(attention, "prefill_supported", lambda q, k_cache: False)
    monkeypatch.setattr(decode_attention, "supports", lambda q, k_cache: False)
    assert generate(make_runner(str(tiny_llama), "cuda")) == kernels
