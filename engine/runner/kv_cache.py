"""Sizing and allocating the paged KV cache.

Per layer one K and one V tensor of shape [num_blocks, block_size, num_kv_heads, head_dim]. The
block ids the scheduler hands out index dimension 0 directly.
"""

from __future__ import annotations

import torch
from isthmus.engine.model.causal_lm import KVCaches
from isthmus.engine.runner.device import free_memory


def kv_block_bytes(
    num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
) -> int:
    """Bytes one block takes across all layers (K and V)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * block_size * num_kv_heads * head_dim * itemsize


def choose_num_blocks(
    *,
    block_bytes: int,
    device: torch.device,
    num_kv_blocks: int | None,
    kv_cache_memory: int | None,
    kv_memory_fraction: float,
    max_useful_blocks: int,
) -> int:
    """How many blocks to allocate, from the options in order of precedence.

    With a memory fraction the count is also capped at `max_useful_blocks` (every running
    sequence at full length): more could never be used.
    """
    if num_kv_blocks is not None:
        count = num_kv_blocks
    elif kv_cache_memory is not None:
        count = kv_cache_memory // block_bytes
    else:
        if not 0 < kv_memory_fraction <= 1:
            raise ValueError(f"kv_memory_fraction must be in (0, 1], got {kv_memory_fraction}")
        count = min(int(free_memory(device) * kv_memory_fraction) // block_bytes, max_useful_blocks)
    if count < 1:
        raise ValueError(f"KV cache too small: {count} blocks of {block_bytes} bytes")
    return int(count)


def allocate_kv_cache(
    num_layers: int,
    num_blocks: int,
    block_size: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device,
) -> KVCaches:
    """Zeroed (k_cache, v_cache) per layer, each [num_blocks, block_size, num_kv_heads, head_dim]."""
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    return [
        (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
        for _ in range(num_layers)
    ]
