"""Rotary embeddings applied to q and k in place, in Triton with a portable fallback.

The scaling variants (default, linear, llama3: `engine/model/rope.py`) differ only in the cos/sin
table, so the kernel takes the table: `cos_sin` [2, max_positions, head_dim] float32, as
`RotaryEmbedding.cos_sin`, whose two halves along head_dim are equal (the rotate-half layout's
`cat((freqs, freqs))`); the kernel reads the first half. Rounding follows the reference in the
activation dtype: cos and sin cast to it, each product and the sum rounded as torch would.
"""

from __future__ import annotations

import torch
from isthmus.engine.kernels._triton import (
    available,
    cast,
    next_pow2,
    on_device,
    require_triton,
    round_to,
    tl,
    triton,
)

if triton is not None:

    @triton.jit
    def _rotate(x_ptr, base, stride_h, n_heads, c, s, HEADS_PAD: tl.constexpr, HALF: tl.constexpr):
        h = tl.arange(0, HEADS_PAD)
        j = tl.arange(0, HALF)
        off = base + h[:, None] * stride_h + j[None, :]
        mask = (h < n_heads)[:, None]
        x1 = tl.load(x_ptr + off, mask=mask, other=0.0)
        x2 = tl.load(x_ptr + off + HALF, mask=mask, other=0.0)
        dt = x1.dtype
        cb = round_to(c, dt)[None, :]
        sb = round_to(s, dt)[None, :]
        a1, a2 = x1.to(tl.float32), x2.to(tl.float32)
        # out = x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1)
        o1 = round_to(a1 * cb, dt) + round_to(-a2 * sb, dt)
        o2 = round_to(a2 * cb, dt) + round_to(a1 * sb, dt)
        tl.store(x_ptr + off, cast(o1, dt), mask=mask)
        tl.store(x_ptr + off + HALF, cast(o2, dt), mask=mask)

    @triton.jit
    def _rope_kernel(
        q_ptr, k_ptr, table_ptr, pos_ptr, num_q_heads, num_k_heads,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_tab,
        QH_PAD: tl.constexpr, KH_PAD: tl.constexpr, HALF: tl.constexpr,
    ):
        tok = tl.program_id(0).to(tl.int64)
        pos = tl.load(pos_ptr + tok).to(tl.int64)
        j = tl.arange(0, HALF)
        c = tl.load(table_ptr + pos * 2 * HALF + j)
        s = tl.load(table_ptr + stride_tab + pos * 2 * HALF + j)
        _rotate(q_ptr, tok * stride_qt, stride_qh, num_q_heads, c, s, QH_PAD, HALF)
        _rotate(k_ptr, tok * stride_kt, stride_kh, num_k_heads, c, s, KH_PAD, HALF)


def portable_rope(
    q: torch.Tensor, k: torch.Tensor, cos_sin: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference, `RotaryEmbedding.forward`: new (q, k)."""
    cos = cos_sin[0, positions].to(q.dtype).unsqueeze(1)  # [num_tokens, 1, head_dim]
    sin = cos_sin[1, positions].to(q.dtype).unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _check(q: torch.Tensor, k: torch.Tensor, cos_sin: torch.Tensor, positions: torch.Tensor) -> None:
    head_dim = q.shape[-1]
    if q.dim() != 3 or k.dim() != 3 or k.shape[-1] != head_dim or k.shape[0] != q.shape[0]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must be [num_tokens, heads, head_dim]")
    if cos_sin.shape[0] != 2 or cos_sin.shape[-1] != head_dim or positions.shape != (q.shape[0],):
        raise ValueError(f"cos_sin {tuple(cos_sin.shape)} / positions {tuple(positions.shape)} do not fit q")


def triton_rope_(q: torch.Tensor, k: torch.Tensor, cos_sin: torch.Tensor, positions: torch.Tensor) -> None:
    """Launch the kernel: rotate q [n, heads, d] and k [n, kv_heads, d] in place (any token and
    head strides, contiguous last dim: slices of a fused qkv output work)."""
    require_triton("rope")
    _check(q, k, cos_sin, positions)
    half = q.shape[-1] // 2
    if q.stride(-1) != 1 or k.stride(-1) != 1 or half & (half - 1) or not cos_sin.is_contiguous():
        raise ValueError("rope kernel needs contiguous head_dim (a power of two) and a contiguous table")
    if cos_sin.dtype != torch.float32:
        raise ValueError(f"cos_sin must be float32, got {cos_sin.dtype}")
    if q.shape[0] == 0:
        return
    with on_device(q):
        _rope_kernel[(q.shape[0],)](
            q, k, cos_sin, positions, q.shape[1], k.shape[1],
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos_sin.stride(0),
            QH_PAD=next_pow2(q.shape[1]), KH_PAD=next_pow2(k.shape[1]), HALF=half,
        )


def apply_rope_(q: torch.Tensor, k: torch.Tensor, cos_sin: torch.Tensor, positions: torch.Tensor) -> None:
    """Rotate q and k in place at `positions` [num_tokens] with the table `cos_sin`
    [2, max_positions, head_dim] (`RotaryEmbedding.cos_sin`): Triton on CUDA, torch elsewhere."""
    half = q.shape[-1] // 2
    pow2 = half > 0 and half & (half - 1) == 0
    if available(q.device) and pow2 and q.stride(-1) == 1 and k.stride(-1) == 1 and cos_sin.is_contiguous():
        triton_rope_(q, k, cos_sin, positions)
        return
    _check(q, k, cos_sin, positions)
    new_q, new_k = portable_rope(q, k, cos_sin, positions)
    q.copy_(new_q)
    k.copy_(new_k)
