"""Paged attention over a block-structured KV cache.

Layout: per layer, K and V caches of shape [num_blocks, block_size, num_kv_heads, head_dim]. A token
at absolute position p of a sequence lives in slot `block_table[p // block_size] * block_size +
p % block_size`. Each step first writes the new tokens' K/V into their slots, then every query
attends over its sequence's cached keys at positions <= its own (causal within a prefill chunk,
everything before it from earlier chunks and decodes).

Tokens are laid out prefill chunks first, then single-token decodes (the runner orders them), so
decodes can be attended in one batched call.

On CUDA both halves are one Triton launch per layer: every prefill chunk at once
(`kernels.prefill`) and the decodes split-K (`decode_attention`). The per-sequence loop
(`_prefill_one`) and the gather-and-mask decode are the portable fallback (CPU, odd head sizes).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from isthmus.engine.kernels import decode_attention
from isthmus.engine.kernels import prefill as prefill_kernel
from isthmus.engine.kernels._triton import available as triton_available


@dataclass(frozen=True, slots=True)
class PrefillTensors:
    """Device metadata of the step's prefill chunks for the batched kernel (cu_seqlens style)."""

    query_start: torch.Tensor  # [num_prefills + 1] int32 token offsets of each chunk
    start_pos: torch.Tensor  # [num_prefills] int32 absolute position of each chunk's first token
    block_tables: torch.Tensor  # [num_prefills, max_blocks] int64, rows padded with block 0
    max_query_len: int  # longest chunk (host int: sizes the launch grid)


@dataclass(slots=True)
class AttentionMetadata:
    """Where the step's tokens go in the KV cache and what each sequence attends to.

    Device tensors feed the kernels; the `*_cpu` lists drive the per-sequence prefill loop
    without device syncs.
    """

    slot_mapping: torch.Tensor  # [num_tokens] int64: flat KV slot of each new token
    num_prefills: int  # sequences (first in the batch) fed a multi-token chunk
    num_prefill_tokens: int  # tokens of those sequences, [0, num_prefill_tokens)
    prefill_query_start_cpu: list[int]  # [num_prefills + 1] token offsets of each prefill chunk
    prefill_start_pos_cpu: list[int]  # [num_prefills] absolute position of each chunk's first token
    prefill_block_ids: list[torch.Tensor]  # [num_prefills] of [ceil(ctx_len / block_size)] int64
    decode_block_tables: torch.Tensor  # [num_decodes, max_blocks] int64 (padded with any valid id)
    decode_context_lens: torch.Tensor  # [num_decodes] int64: cached length including this token
    block_size: int
    # (start, stop, num_blocks) row ranges of decodes of similar length (the runner sorts decodes
    # by length), so the portable decode pads each range to its own longest table, not the step's.
    # Empty: one range over every decode. The Triton kernel reads live blocks only and ignores it.
    decode_groups_cpu: list[tuple[int, int, int]] = field(default_factory=list)
    # Built from the fields above on first use by the batched prefill kernel (once per step, then
    # shared by every layer); a runner may also fill it from its own single host-to-device copy.
    prefill_tensors: PrefillTensors | None = None

    @property
    def num_decodes(self) -> int:
        return int(self.decode_block_tables.shape[0])


def write_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> None:
    """Store new keys/values ([num_tokens, num_kv_heads, head_dim]) at their flat slots."""
    num_kv_heads, head_dim = k_cache.shape[-2:]
    # index_copy_ (not fancy-index assignment) so the write is capturable in a CUDA graph.
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, k.to(k_cache.dtype))
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, v.to(v_cache.dtype))


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    attn: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """q [num_tokens, num_heads, head_dim] -> out [num_tokens, num_heads, head_dim].

    The new tokens' K/V must already be in the cache (`write_kv`).
    """
    out = torch.empty_like(q)
    if attn.num_prefills and prefill_supported(q, k_cache):
        t = prefill_tensors(attn, q.device)
        n = attn.num_prefill_tokens
        prefill_kernel.triton_varlen_prefill(
            q[:n], k_cache, v_cache, out[:n], t.query_start, t.start_pos, t.block_tables, t.max_query_len,
            scale,
        )
    else:
        for i in range(attn.num_prefills):
            lo, hi = attn.prefill_query_start_cpu[i], attn.prefill_query_start_cpu[i + 1]
            out[lo:hi] = _prefill_one(
                q[lo:hi], k_cache, v_cache, attn.prefill_block_ids[i], attn.prefill_start_pos_cpu[i], scale
            )
    if attn.num_decodes:
        lo = attn.num_prefill_tokens
        # On CUDA a Triton kernel reads only the live blocks (and is CUDA-graph capturable).
        tables, lens = attn.decode_block_tables, attn.decode_context_lens
        if decode_attention.supports(q, k_cache):
            out[lo:] = decode_attention.paged_decode(q[lo:], k_cache, v_cache, tables, lens, scale)
        else:
            for a, b, num_blocks in attn.decode_groups_cpu or [(0, attn.num_decodes, tables.shape[1])]:
                out[lo + a : lo + b] = _decode_batch(
                    q[lo + a : lo + b], k_cache, v_cache, tables[a:b, :num_blocks], lens[a:b], scale
                )
    return out


def prefill_supported(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """True when the batched Triton prefill runs on q's device and handles these shapes."""
    num_heads, head_dim = q.shape[-2:]
    return (
        triton_available(q.device)
        and prefill_kernel.supports_shape(num_heads, k_cache.shape[-2], head_dim)
        and k_cache.is_contiguous()
    )


def prefill_tensors(attn: AttentionMetadata, device: torch.device) -> PrefillTensors:
    """The batched prefill's device metadata, built once per step and cached on `attn`."""
    if attn.prefill_tensors is None:
        starts = attn.prefill_query_start_cpu
        host = torch.tensor([*starts, *attn.prefill_start_pos_cpu], dtype=torch.int32)
        dev = host.to(device, non_blocking=True)
        tables = torch.nn.utils.rnn.pad_sequence(attn.prefill_block_ids, batch_first=True, padding_value=0)
        attn.prefill_tensors = PrefillTensors(
            query_start=dev[: len(starts)],
            start_pos=dev[len(starts) :],
            block_tables=tables.to(device),
            max_query_len=max(b - a for a, b in itertools.pairwise(starts)),
        )
    return attn.prefill_tensors


def _gather(cache: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    # [..., num_blocks] block ids -> [..., num_blocks * block_size, num_kv_heads, head_dim]
    blocks = cache[block_ids]  # [..., n, block_size, num_kv_heads, head_dim]
    return blocks.flatten(-4, -3)


def _prefill_one(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    ids: torch.Tensor,
    start_pos: int,
    scale: float,
) -> torch.Tensor:
    """Causal attention of one chunk (positions start_pos..) over the sequence's cached keys.

    ``ids``: the device block ids covering positions [0, start_pos + num_q).
    """
    num_q = q.shape[0]
    ctx_len = start_pos + num_q
    k = _gather(k_cache, ids)[:ctx_len].transpose(0, 1)  # [num_kv_heads, ctx_len, head_dim]
    v = _gather(v_cache, ids)[:ctx_len].transpose(0, 1)
    qt = q.transpose(0, 1)  # [num_heads, num_q, head_dim]
    if start_pos == 0:
        o = F.scaled_dot_product_attention(
            qt, k.to(q.dtype), v.to(q.dtype), is_causal=True, scale=scale, enable_gqa=True
        )
    else:
        q_pos = torch.arange(start_pos, ctx_len, device=q.device)
        mask = torch.arange(ctx_len, device=q.device)[None, :] <= q_pos[:, None]  # [num_q, ctx_len]
        o = F.scaled_dot_product_attention(
            qt, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, scale=scale, enable_gqa=True
        )
    return o.transpose(0, 1)  # [num_q, num_heads, head_dim]


def _decode_batch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One query per sequence over its cached keys; padded to the longest block table.

    The query heads sharing a KV head attend as that KV head's queries (a group of G rows), so
    the keys are used as they are, never repeated per query head.
    """
    num, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    k = _gather(k_cache, block_tables).transpose(1, 2)  # [num_decodes, num_kv_heads, max_len, head_dim]
    v = _gather(v_cache, block_tables).transpose(1, 2)
    max_len = k.shape[2]
    mask = torch.arange(max_len, device=q.device)[None, :] < context_lens[:, None]  # [num_decodes, max_len]
    qg = q.view(num, num_kv_heads, num_heads // num_kv_heads, head_dim)  # [num_decodes, kv_heads, G, d]
    o = F.scaled_dot_product_attention(
        qg, k.to(q.dtype), v.to(q.dtype), attn_mask=mask[:, None, None, :], scale=scale
    )
    return o.reshape(num, num_heads, head_dim)
