"""Our model vs transformers on every tiny checkpoint variant (fp32, CPU)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.plan import SchedulePlan
from isthmus.engine.model.config import RopeConfig
from isthmus.engine.model.rope import inverse_frequencies
from isthmus.engine.runner.model_runner import ModelRunner

from .._runner_helpers import greedy_generate, logits_of, seq, shuffled_blocks

transformers = pytest.importorskip("transformers")

VARIANTS = ["tiny_llama", "tiny_llama_mha", "tiny_llama_linear_rope", "tiny_llama3_rope", "tiny_qwen2"]
PROMPT = [0, 17, 345, 12, 900, 77, 5, 613, 240, 31, 8, 1000, 64, 129, 3, 450, 22, 719, 56]  # 19 tokens
BLOCK_SIZE = 4
NUM_BLOCKS = 32
TOL = 1e-4

_cache: dict[str, tuple[ModelRunner, object]] = {}


def _pair(request: pytest.FixtureRequest, name: str) -> tuple[ModelRunner, object]:
    if name not in _cache:
        path: Path = request.getfixturevalue(name)
        runner = ModelRunner(EngineOptions(model=str(path), block_size=BLOCK_SIZE, num_kv_blocks=NUM_BLOCKS))
        hf, info = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, output_loading_info=True
        )
        assert not any(info.values()), f"transformers loading info for {name}: {info}"
        _cache[name] = (runner, hf.eval())
    return _cache[name]


@pytest.mark.parametrize("name", VARIANTS)
def test_single_prefill_matches_transformers(request: pytest.FixtureRequest, name: str) -> None:
    runner, hf = _pair(request, name)
    blocks = shuffled_blocks(NUM_BLOCKS, 8, seed=1)
    ours = logits_of(runner, seq(1, PROMPT, 0, len(PROMPT), len(PROMPT), blocks))
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT])).logits[0].float()
    diff = (ours - ref).abs().max().item()
    print(f"{name}: one-prefill max abs logit diff {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize("name", VARIANTS)
def test_chunked_prefill_and_decode_match_transformers(request: pytest.FixtureRequest, name: str) -> None:
    runner, hf = _pair(request, name)
    blocks = shuffled_blocks(NUM_BLOCKS, 10, seed=2)
    history = [*PROMPT, 5, 900, 41, 7, 300, 2]  # prompt then six "generated" tokens
    pieces = []
    # Chunks 3, 5 (crosses a block), 11 (rest of prompt), then single-token decodes.
    bounds = [0, 3, 8, len(PROMPT), *range(len(PROMPT) + 1, len(history) + 1)]
    for start, end in itertools.pairwise(bounds):
        pieces.append(logits_of(runner, seq(1, history, start, end, len(PROMPT), blocks)))
    ours = torch.cat(pieces)
    with torch.no_grad():
        ref = hf(torch.tensor([history])).logits[0].float()
    diff = (ours - ref).abs().max().item()
    print(f"{name}: chunked prefill + decode max abs logit diff {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize("name", VARIANTS)
def test_greedy_generation_matches_transformers(request: pytest.FixtureRequest, name: str) -> None:
    runner, hf = _pair(request, name)
    num_new = 20
    ours = greedy_generate(runner, PROMPT, num_new, chunk=7, blocks=shuffled_blocks(NUM_BLOCKS, 12, seed=3))
    with torch.no_grad():
        ref = hf.generate(torch.tensor([PROMPT]), max_new_tokens=num_new, do_sample=False)[0, len(PROMPT) :]
    ref_ids = ref.tolist()
    # transformers stops at eos; up to there the outputs must be identical.
    assert ours[: len(ref_ids)] == ref_ids
    assert len(set(ours)) > 1, "greedy output is a single repeated token: degenerate tiny model"


@pytest.mark.parametrize("name", VARIANTS)
def test_rope_frequencies_match_transformers(request: pytest.FixtureRequest, name: str) -> None:
    """The scaled variants really are scaled, exactly as transformers scales them."""
    runner, hf = _pair(request, name)
    ours = inverse_frequencies(runner.config.rope, runner.config.head_dim)
    torch.testing.assert_close(ours, hf.model.rotary_emb.inv_freq.float(), rtol=1e-6, atol=0)
    default = inverse_frequencies(RopeConfig(theta=runner.config.rope.theta), runner.config.head_dim)
    expect_scaled = name in ("tiny_llama_linear_rope", "tiny_llama3_rope")
    assert (not torch.equal(ours, default)) == expect_scaled


def test_mixed_batch_equals_separate_runs(request: pytest.FixtureRequest) -> None:
    """A prefill chunk and decodes of other sequences in one step give the same logits as alone."""
    runner, hf = _pair(request, "tiny_llama")
    a_hist = PROMPT[:12]
    b_hist = [*PROMPT[5:], 33, 44]
    c_hist = [0, 9, 8, 7, 6, 5]
    ids = shuffled_blocks(NUM_BLOCKS, 30, seed=4)
    blocks_a, blocks_b, blocks_c = ids[0:10], ids[10:20], ids[20:30]
    # b and c prefilled alone first; then one mixed step: a's first chunk + b and c decodes.
    logits_of(runner, seq(2, b_hist, 0, len(b_hist) - 1, len(b_hist) - 2, blocks_b))
    logits_of(runner, seq(3, c_hist, 0, len(c_hist) - 1, len(c_hist) - 1, blocks_c))
    plan = SchedulePlan(
        [
            seq(2, b_hist, len(b_hist) - 1, len(b_hist), len(b_hist) - 2, blocks_b),
            seq(1, a_hist, 0, 9, len(a_hist), blocks_a),
            seq(3, c_hist, len(c_hist) - 1, len(c_hist), len(c_hist) - 1, blocks_c),
        ]
    )
    batch = runner._prepare(plan)
    with torch.inference_mode():
        hidden = runner.model(batch.input_ids, batch.positions, batch.attn, runner.kv_caches)
        logits = runner.model.compute_logits(hidden).float()
    # prefill chunks first, then decodes shortest context first (c's 6 tokens before b's)
    assert [s.seq_id for s in batch.seqs] == [1, 3, 2]
    with torch.no_grad():
        ref_a = hf(torch.tensor([a_hist[:9]])).logits[0]
        ref_b = hf(torch.tensor([b_hist])).logits[0, -1]
        ref_c = hf(torch.tensor([c_hist])).logits[0, -1]
    assert (logits[:9] - ref_a).abs().max().item() <= TOL
    assert (logits[10] - ref_b).abs().max().item() <= TOL
    assert (logits[9] - ref_c).abs().max().item() <= TOL
