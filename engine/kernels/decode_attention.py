"""Paged decode attention on CUDA: the dispatch to the split-K Triton kernel (`kernels.decode`).

The portable decode path (`attention._decode_batch`) gathers every block of a padded block table
and masks; that reads the whole padded width, and under a CUDA graph the width is fixed at
`max_model_len / block_size` blocks. The kernel instead reads each sequence's own live context,
split across programs when the batch alone would not fill the GPU ("flash-decoding"), and one
program serves all query heads of a KV head. It is capturable: no host syncs, no data-dependent
Python control flow.
"""

from __future__ import annotations

import torch
from isthmus.engine.kernels._triton import triton
from isthmus.engine.kernels.decode import TOKENS_PER_ITER, choose_num_splits, triton_paged_decode

__all__ = ["TOKENS_PER_ITER", "available", "choose_num_splits", "paged_decode", "supports", "supports_shape"]


def available(device: torch.device) -> bool:
    """True when the Triton kernel can run on `device` (a CUDA device with Triton installed)."""
    return triton is not None and device.type == "cuda"


def supports(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """True when `paged_decode` runs on q's device and handles these shapes."""
    return available(q.device) and _shapes_ok(q, k_cache)


def supports_shape(num_heads: int, num_kv_heads: int, head_dim: int) -> bool:
    """True when the kernel handles this head layout: GQA groups divide evenly and head_dim is a
    power of two (`tl.arange` extents must be)."""
    pow2 = head_dim > 0 and head_dim & (head_dim - 1) == 0
    return num_kv_heads > 0 and num_heads % num_kv_heads == 0 and pow2


def _shapes_ok(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    num_heads, head_dim = q.shape[-2:]
    return supports_shape(num_heads, k_cache.shape[-2], head_dim) and k_cache.is_contiguous()


def paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
) -> torch.Tensor:
    """q [num_seqs, num_heads, head_dim] -> out [num_seqs, num_heads, head_dim].

    k_cache/v_cache [num_blocks, block_size, num_kv_heads, head_dim] (contiguous); block_tables
    [num_seqs, >= ceil(context_len / block_size)] (entries past a sequence's context are never
    read); context_lens [num_seqs] >= 1. num_splits: None picks it from the batch and the
    table's width (see `kernels.decode.choose_num_splits`).
    """
    if triton is None:
        raise RuntimeError("paged_decode needs Triton")
    _, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    if not _shapes_ok(q, k_cache):
        raise ValueError(
            f"unsupported decode shape: heads {num_heads}/{num_kv_heads}, head_dim {head_dim}, "
            f"block_size {block_size}"
        )
    if v_cache.shape != k_cache.shape or v_cache.stride() != k_cache.stride():
        raise ValueError("v_cache must match k_cache in shape and strides (one offset reads both)")
    return triton_paged_decode(q, k_cache, v_cache, block_tables, context_lens, scale, num_splits)
