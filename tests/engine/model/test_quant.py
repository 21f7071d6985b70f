"""bitsandbytes nf4 / int8 rewrites on CPU: what is quantized, and how far logits move."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.plan import SchedulePlan
from isthmus.engine.model.quant import UnsupportedQuantizationError, quantization_factory
from isthmus.engine.runner.model_runner import ModelRunner
from torch import nn

from .._runner_helpers import greedy_generate, logits_of, seq, shuffled_blocks

bnb = pytest.importorskip("bitsandbytes")

PROMPT = [0, 17, 345, 12, 900, 77, 5, 613, 240, 31, 8, 1000, 64, 129, 3, 450]
MODULE_TYPES = {"nf4": "Linear4bit", "int8": "Linear8bitLt"}


def _runner(path: Path, quant: str | None) -> ModelRunner:
    return ModelRunner(EngineOptions(model=str(path), quantization=quant, block_size=4, num_kv_blocks=16))


@pytest.fixture(scope="module")
def fp32_logits(tiny_llama: Path) -> torch.Tensor:
    runner = _runner(tiny_llama, None)
    return logits_of(runner, seq(1, PROMPT, 0, len(PROMPT), len(PROMPT), list(range(16))))


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_quantized_model_runs_close_to_fp32(tiny_llama: Path, fp32_logits: torch.Tensor, quant: str) -> None:
    runner = _runner(tiny_llama, quant)
    model = runner.model
    layer = model.model.layers[0]
    for linear in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.down_proj):
        assert any(c.__name__ == MODULE_TYPES[quant] for c in type(linear).__mro__)
        assert not linear.training
    # Embeddings, norms and the LM head stay in full precision.
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight.dtype == torch.float32
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert layer.input_layernorm.weight.dtype == torch.float32
    weight = layer.mlp.gate_up_proj.weight
    assert weight.dtype == (torch.uint8 if quant == "nf4" else torch.int8)

    ours = logits_of(runner, seq(1, PROMPT, 0, len(PROMPT), len(PROMPT), list(range(16))))
    err = (ours - fp32_logits).abs().mean().item()
    scale = fp32_logits.abs().mean().item()
    agree = (ours.argmax(-1) == fp32_logits.argmax(-1)).float().mean().item()
    print(
        f"{quant}: mean abs logit error vs fp32 {err:.4f} (mean |logit| {scale:.3f}), "
        f"argmax agreement {agree:.0%}"
    )
    assert torch.isfinite(ours).all()
    assert err < 0.25 * scale
    assert agree >= 0.5


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_quantized_qwen2_with_bias_generates(tiny_qwen2: Path, quant: str) -> None:
    runner = _runner(tiny_qwen2, quant)
    assert runner.model.model.layers[1].self_attn.qkv_proj.bias is not None
    out = greedy_generate(runner, PROMPT, 6, chunk=5, blocks=shuffled_blocks(16, 8))
    assert len(out) == 6 and all(0 <= t < runner.vocab_size for t in out)


def test_unknown_quantization_is_refused(tiny_llama: Path) -> None:
    with pytest.raises(UnsupportedQuantizationError, match="gptq"):
        quantization_factory("gptq", torch.float32)
    with pytest.raises(UnsupportedQuantizationError, match="fp8"):
        _runner(tiny_llama, "fp8")


def test_empty_plan_is_a_no_op(tiny_llama: Path) -> None:
    runner = _runner(tiny_llama, "nf4")
    out = runner.run(SchedulePlan())
    assert out.sampled == {} and out.prompt_logprobs == {}
