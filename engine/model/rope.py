"""Rotary position embeddings: default, linear and llama3 scaling, with Hugging Face's math.

The cos/sin table is computed once in float32 for every position up to the model's limit and
indexed by absolute position, so chunked prefill and decode see exactly the values a full
forward pass would.
"""

from __future__ import annotations

import math

import torch
from isthmus.engine.model.config import RopeConfig
from torch import nn


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    """[head_dim // 2] float32 inverse frequencies, as transformers' rope init functions compute."""
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if rope.type == "linear":
        # transformers divides positions by the factor; dividing frequencies is the same product.
        return inv_freq / rope.factor
    if rope.type == "llama3":
        old_len = rope.original_max_position_embeddings
        low_freq_wavelen = old_len / rope.low_freq_factor
        high_freq_wavelen = old_len / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(is_medium, smoothed, scaled)
    return inv_freq


class RotaryEmbedding(nn.Module):
    """Applies rotary embeddings to q and k at given absolute positions (rotate-half layout)."""

    def __init__(self, rope: RopeConfig, head_dim: int, max_positions: int) -> None:
        super().__init__()
        self.rope = rope
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.register_buffer("cos_sin", self._table(), persistent=False)

    def _table(self) -> torch.Tensor:
        inv_freq = inverse_frequencies(self.rope, self.head_dim)
        positions = torch.arange(self.max_positions, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)  # [max_positions, head_dim // 2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [max_positions, head_dim]
        return torch.stack((emb.cos(), emb.sin()))  # [2, max_positions, head_dim] float32

    def materialize(self, device: torch.device | str) -> None:
        """Recompute the table on `device` (the model is built on `meta`, where buffers are empty)."""
        with torch.device("cpu"):
            table = self._table()
        self.cos_sin = table.to(device)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # positions [num_tokens]; q [num_tokens, num_heads, head_dim]; k [num_tokens, num_kv_heads, head_dim]
        cos = self.cos_sin[0, positions].to(q.dtype).unsqueeze(1)  # [num_tokens, 1, head_dim]
        sin = self.cos_sin[1, positions].to(q.dtype).unsqueeze(1)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
