"""The kernels' dispatchers off CUDA (portable paths, equal to the model's own math), the split
choice, and the typed errors on shapes the kernels do not take. No interpreter: fast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from isthmus.engine.kernels import act, norm, rope
from isthmus.engine.kernels.decode import MAX_SPLITS, choose_num_splits
from isthmus.engine.model.config import RopeConfig
from isthmus.engine.model.rope import RotaryEmbedding


def test_split_choice_fills_the_gpu_only_when_the_batch_does_not() -> None:
    # b1, the 7B's 32 KV heads, 2,048 tokens: 32 programs alone would leave most of 132 SMs idle.
    assert choose_num_splits(1, 32, 2048) * 32 >= 132
    assert choose_num_splits(1, 32, 128) == 1  # too short to be worth a combine
    assert choose_num_splits(64, 32, 4096) == 1  # 2,048 programs already
    assert choose_num_splits(1, 8, 2048) == 8  # GQA: fewer KV-head programs, more splits
    assert choose_num_splits(1, 1, 10**6, num_sms=1000) == MAX_SPLITS
    assert choose_num_splits(0, 32, 2048) >= 1


def test_rms_norm_dispatch_on_cpu_is_the_models_math() -> None:
    from isthmus.engine.model.causal_lm import RMSNorm

    layer = RMSNorm(64, 1e-6)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(64))
    x, r = torch.randn(3, 64), torch.randn(3, 64)
    assert torch.equal(norm.rms_norm(x, layer.weight, 1e-6), layer(x))
    out, total = norm.add_rms_norm(x, r, layer.weight, 1e-6)
    assert torch.equal(total, x + r) and torch.equal(out, layer(x + r))


def test_silu_mul_dispatch_on_cpu_fused_and_separate() -> None:
    gate, up = torch.randn(5, 24), torch.randn(5, 24)
    assert torch.equal(act.silu_mul(gate, up), F.silu(gate) * up)
    # torch's own SiLU may vectorize a strided half differently: equal up to float32 rounding.
    torch.testing.assert_close(act.silu_mul(torch.cat([gate, up], dim=-1)), F.silu(gate) * up)
    with pytest.raises(ValueError, match="even last dim"):
        act.silu_mul(torch.randn(2, 7))
    with pytest.raises(ValueError, match="differ in shape"):
        act.silu_mul(gate, up[:, :5])


@pytest.mark.parametrize(
    "cfg", [RopeConfig(), RopeConfig(type="linear", factor=2.0), RopeConfig(type="llama3", factor=8.0)]
)
def test_rope_dispatch_on_cpu_rotates_in_place_like_the_module(cfg: RopeConfig) -> None:
    emb = RotaryEmbedding(cfg, 16, 64)
    qkv = torch.randn(6, (4 + 2 * 2) * 16)
    q, k = qkv[:, :64].view(6, 4, 16), qkv[:, 64:96].view(6, 2, 16)  # views of a fused qkv output
    pos = torch.tensor([0, 1, 5, 17, 40, 63])
    ref_q, ref_k = emb(pos, q.clone(), k.clone())
    rope.apply_rope_(q, k, emb.cos_sin, pos)
    assert torch.equal(qkv[:, :64].view(6, 4, 16), ref_q) and torch.equal(qkv[:, 64:96].view(6, 2, 16), ref_k)
    with pytest.raises(ValueError, match="positions"):
        rope.apply_rope_(q, k, emb.cos_sin, pos[:3])


def test_kernel_launchers_refuse_bad_shapes_with_typed_errors() -> None:
    from isthmus.engine.kernels.nf4 import nf4_linear, supports, triton_nf4_linear
    from isthmus.engine.kernels.prefill import supports_shape, triton_varlen_prefill

    with pytest.raises(ValueError, match="weight"):
        norm.triton_rms_norm(torch.randn(2, 8), torch.ones(4), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        norm.triton_rms_norm(torch.randn(2, 8), torch.ones(8), 1e-6, torch.randn(3, 8))
    assert supports_shape(32, 8, 128) and not supports_shape(6, 4, 64) and not supports_shape(4, 2, 8)
    q = torch.randn(3, 6, 64)
    cache = torch.randn(4, 4, 4, 64)
    with pytest.raises(ValueError, match="unsupported prefill shape"):
        triton_varlen_prefill(q, cache, cache, q, torch.zeros(2), torch.zeros(1), torch.zeros(1, 1), 3, 1.0)
    plain = torch.nn.Parameter(torch.randn(4, 4))
    assert not supports(torch.randn(1, 4), plain)
    with pytest.raises(ValueError, match="nf4"):
        triton_nf4_linear(torch.randn(1, 4), plain)
    assert callable(nf4_linear)
