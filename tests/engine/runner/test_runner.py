"""ModelRunner: KV sizing, dtype choice, plan validation, sampling and prompt logprobs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.plan import SchedulePlan
from isthmus.engine.runner.kv_cache import kv_block_bytes
from isthmus.engine.runner.model_runner import ModelRunner, PlanError

from .._runner_helpers import seq, shuffled_blocks

PROMPT = [0, 17, 345, 12, 900, 77, 5, 613, 240, 31, 8, 1000, 64, 129, 3, 450, 22]


@pytest.fixture(scope="module")
def runner(tiny_llama: Path) -> ModelRunner:
    return ModelRunner(EngineOptions(model=str(tiny_llama), block_size=4, num_kv_blocks=48))


def test_kv_cache_shape_and_attributes(runner: ModelRunner) -> None:
    cfg = runner.config
    assert runner.num_kv_blocks == 48 and runner.block_size == 4
    assert runner.max_model_len == cfg.max_position_embeddings
    assert runner.dtype == torch.float32  # "auto" on CPU
    assert len(runner.kv_caches) == cfg.num_layers
    k, v = runner.kv_caches[0]
    assert k.shape == v.shape == (48, 4, cfg.num_kv_heads, cfg.head_dim)


def test_kv_sizing_by_bytes_and_by_fraction(tiny_llama: Path) -> None:
    opts = EngineOptions(model=str(tiny_llama), block_size=16, kv_cache_memory=1 << 20)
    r = ModelRunner(opts)
    per_block = kv_block_bytes(2, 2, 16, 16, torch.float32)
    assert r.num_kv_blocks == (1 << 20) // per_block
    assert r.kv_cache_bytes <= 1 << 20
    # A fraction of host RAM, capped at what max_num_seqs full-length sequences could ever use.
    r = ModelRunner(EngineOptions(model=str(tiny_llama), max_num_seqs=3, max_model_len=100))
    assert r.num_kv_blocks == 3 * math.ceil(100 / 16)
    with pytest.raises(ValueError, match="max_model_len"):
        ModelRunner(EngineOptions(model=str(tiny_llama), max_model_len=10**6))
    with pytest.raises(ValueError, match="KV cache too small"):
        ModelRunner(EngineOptions(model=str(tiny_llama), kv_cache_memory=10))


def test_bad_device_and_dtype_are_clear_errors(tiny_llama: Path) -> None:
    with pytest.raises(ValueError, match="dtype"):
        ModelRunner(EngineOptions(model=str(tiny_llama), dtype="float8"))
    with pytest.raises(ValueError, match="device"):
        ModelRunner(EngineOptions(model=str(tiny_llama), device="tpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            ModelRunner(EngineOptions(model=str(tiny_llama), device="cuda"))


def test_bf16_runner_on_cpu(tiny_llama: Path) -> None:
    r = ModelRunner(EngineOptions(model=str(tiny_llama), dtype="bfloat16", block_size=4, num_kv_blocks=16))
    assert r.kv_caches[0][0].dtype == torch.bfloat16
    out = r.run(SchedulePlan([seq(1, PROMPT, 0, len(PROMPT), len(PROMPT), list(range(16)))]))
    assert 0 <= out.sampled[1].token_id < r.vocab_size


def test_batch_of_prefills_and_decodes_samples_each(runner: ModelRunner) -> None:
    blocks = shuffled_blocks(48, 48, seed=7)
    a, b, c = blocks[:10], blocks[10:20], blocks[20:30]
    hist_b = PROMPT[3:]
    runner.run(SchedulePlan([seq(2, hist_b, 0, len(hist_b), len(hist_b), b)]))  # b prefilled earlier
    hist_b = [*hist_b, 5]
    plan = SchedulePlan(
        [
            seq(1, PROMPT, 0, 8, len(PROMPT), a),  # first chunk: no sample
            seq(2, hist_b, len(hist_b) - 1, len(hist_b), len(hist_b) - 1, b),  # decode
            seq(
                3, PROMPT[:9], 0, 9, 9, c, params=SamplingParams(temperature=0.0, logprobs=2)
            ),  # whole prompt
        ]
    )
    out = runner.run(plan)
    assert set(out.sampled) == {2, 3}
    tok = out.sampled[3]
    assert tok.top_logprobs is not None and tok.top_logprobs[0][0] == tok.token_id
    assert tok.logprob <= 0 and tok.entropy >= 0


def test_prompt_logprobs_across_chunks_match_full_forward(runner: ModelRunner, tiny_llama: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    with torch.no_grad():
        logp = torch.log_softmax(hf(torch.tensor([PROMPT])).logits[0].float(), -1)
    expected = sum(logp[i, PROMPT[i + 1]].item() for i in range(len(PROMPT) - 1))
    blocks = shuffled_blocks(48, 5, seed=8)
    total, count = 0.0, 0
    for start, end in [(0, 6), (6, 11), (11, len(PROMPT))]:
        s = seq(1, PROMPT, start, end, len(PROMPT), blocks, want_prompt_logprobs=True)
        lp_sum, lp_count = runner.run(SchedulePlan([s])).prompt_logprobs[1]
        total, count = total + lp_sum, count + lp_count
    assert count == len(PROMPT) - 1
    assert total == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"block_table": []}, "block table"),
        ({"block_table": [0, 1, 2, 999, 4]}, "block id"),
        ({"token_ids": [5, 10**6]}, "token id"),
        ({"token_ids": []}, "empty"),
        ({"start_pos": 2047}, "max_model_len"),
    ],
)
def test_bad_plans_are_refused(runner: ModelRunner, edit: dict, match: str) -> None:
    s = seq(1, PROMPT, 0, len(PROMPT), len(PROMPT), list(range(5)))
    for key, value in edit.items():
        setattr(s, key, value)
    with pytest.raises(PlanError, match=match):
        runner.run(SchedulePlan([s]))
