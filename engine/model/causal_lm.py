"""One plain decoder for the LLaMA and Qwen2 families (DeepSeek-LLM, -Coder, R1-Distill).

The model knows nothing of quantization or tensor parallelism: both are rewrites of its
`nn.Linear`s applied before the weights are loaded (see `engine/model/rewrite.py`). Module names match
the Hugging Face checkpoints (`model.layers.0.self_attn.o_proj.weight`, ...) except two packed
projections: `qkv_proj` holds q_proj, k_proj and v_proj's rows one after the other and
`gate_up_proj` holds gate_proj's and up_proj's, so a layer runs 4 GEMMs instead of 7; the loader
assembles them from the checkpoint's separate tensors (`engine/model/packed.py`, `packed_sizes`).
Inputs are a flattened ragged batch: no padding, no batch dimension.

On CUDA the elementwise work runs in fused Triton kernels (`engine/kernels/`): RMSNorm with the
residual add in one pass, RoPE applied to q and k in place (in the packed qkv output), SiLU(gate)
* up from the packed gate_up output. Elsewhere the same functions take the portable path, the
reference arithmetic. Layers pass (output, residual) along so each norm can absorb the add.
"""

from __future__ import annotations

import torch
from isthmus.engine.kernels._triton import available as kernels_available
from isthmus.engine.kernels.act import silu_mul
from isthmus.engine.kernels.norm import add_rms_norm, rms_norm
from isthmus.engine.kernels.rope import apply_rope_
from isthmus.engine.model.attention import AttentionMetadata, paged_attention, write_kv
from isthmus.engine.model.config import ModelConfig
from isthmus.engine.model.rope import RotaryEmbedding
from torch import nn

KVCaches = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (k_cache, v_cache)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As transformers: normalise in float32, cast back, then scale (kernels/norm.py).
        return rms_norm(x, self.weight, self.eps)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(self(x + residual), x + residual): one pass on CUDA."""
        return add_rms_norm(x, residual, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.scale = config.head_dim**-0.5
        q_size, kv_size = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, q_size + 2 * kv_size, bias=config.qkv_bias)
        self.packed_sizes = {"qkv_proj": (("q_proj", q_size), ("k_proj", kv_size), ("v_proj", kv_size))}
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=config.o_bias)
        self.rotary = [rotary]  # a list so the shared module is not registered once per layer

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionMetadata,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        n, hd = x.shape[0], self.head_dim
        # The per-rank head counts: a tensor-parallel rewrite sets them to this rank's slice, whose
        # packed shard holds its q heads, then its k heads, then its v heads.
        q_size, kv_size = self.num_heads * hd, self.num_kv_heads * hd
        q, k, v = self.qkv_proj(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(n, -1, hd)  # [num_tokens, num_heads, head_dim]
        k = k.view(n, -1, hd)  # [num_tokens, num_kv_heads, head_dim]
        v = v.view(n, -1, hd)
        if kernels_available(q.device):  # rotate in place inside the qkv output: no new q/k tensors
            apply_rope_(q, k, self.rotary[0].cos_sin, positions)
        else:
            q, k = self.rotary[0](positions, q, k)
        k_cache, v_cache = kv_cache
        write_kv(k, v, k_cache, v_cache, attn.slot_mapping)
        o = paged_attention(q, k_cache, v_cache, attn, self.scale)  # [num_tokens, num_heads, head_dim]
        return self.o_proj(o.reshape(n, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        ffn = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * ffn, bias=False)
        self.down_proj = nn.Linear(ffn, config.hidden_size, bias=False)
        self.packed_sizes = {"gate_up_proj": (("gate_proj", ffn), ("up_proj", ffn))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A TP shard holds [its gate; its up], as the whole model does.
        return self.down_proj(silu_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.self_attn = Attention(config, rotary)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionMetadata,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        residual: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mlp output, residual stream before it): the next norm adds the two."""
        if residual is None:  # the first layer: x is the embedding, the residual stream itself
            residual, h = x, self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm.add_forward(x, residual)
        h = self.self_attn(h, positions, attn, kv_cache)
        h, residual = self.post_attention_layernorm.add_forward(h, residual)
        return self.mlp(h), residual


class DecoderModel(nn.Module):
    """`model.*` in the checkpoint: embeddings, layers, final norm."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rotary_emb = RotaryEmbedding(config.rope, config.head_dim, config.max_position_embeddings)
        self.layers = nn.ModuleList(DecoderLayer(config, self.rotary_emb) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class CausalLM(nn.Module):
    """Decoder plus LM head. `forward` returns hidden states; `compute_logits` projects the few needed."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DecoderModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(
        self,
        input_ids: torch.Tensor,  # [num_tokens]
        positions: torch.Tensor,  # [num_tokens]
        attn: AttentionMetadata,
        kv_caches: KVCaches,
    ) -> torch.Tensor:
        x = self.model.embed_tokens(input_ids)  # [num_tokens, hidden]
        residual: torch.Tensor | None = None
        for layer, kv_cache in zip(self.model.layers, kv_caches, strict=True):
            x, residual = layer(x, positions, attn, kv_cache, residual)
        if residual is None:  # no layers
            return self.model.norm(x)
        return self.model.norm.add_forward(x, residual)[0]  # [num_tokens, hidden]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, hidden] -> [n, vocab]."""
        return self.lm_head(hidden)

    def tie_weights(self) -> None:
        """Share the embedding matrix with the LM head (Qwen2 small models)."""
        self.lm_head.weight = self.model.embed_tokens.weight
