"""Batched variable-length causal prefill attention over the paged KV cache, in Triton.

One launch per layer covers every prefill chunk of the step. Metadata is cu_seqlens-style:
`query_start` [num_prefills + 1] token offsets of each chunk in q, `start_pos` [num_prefills] the
absolute position of each chunk's first token (the already-cached prefix of a chunked prefill or
of a prefix-cache hit), and `block_tables` [num_prefills, >= ceil((start_pos + chunk) / bs)].
The chunk's own K/V must already be in the cache. Query i of a chunk (absolute position
start_pos + i) attends to keys 0..start_pos + i.

Grid: (prefill, query head, block of BLOCK_M queries). Each program streams the keys it may see
in BLOCK_N tiles through the block table, tl.dot in the input dtype (bf16) with float32
accumulation and an online softmax; the causal mask only bites in the last tiles.
"""

from __future__ import annotations

import torch
from isthmus.engine.kernels._triton import (
    cast,
    dot_precision,
    interpreting,
    mma,
    on_device,
    require_triton,
    tl,
    triton,
)

BLOCK_M = 64  # queries per program
BLOCK_N = 64  # keys per loop iteration


if triton is not None:

    @triton.jit(do_not_specialize=["stride_ts"])
    def _prefill_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, q_start_ptr, start_pos_ptr, tables_ptr, scale,
        stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_ts, stride_ot, stride_oh,
        GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        seq = tl.program_id(0)
        head = tl.program_id(1)
        mb = tl.program_id(2)
        kv_head = head // GROUP
        q0 = tl.load(q_start_ptr + seq).to(tl.int32)
        n_q = tl.load(q_start_ptr + seq + 1).to(tl.int32) - q0
        start = tl.load(start_pos_ptr + seq).to(tl.int32)
        i = mb * BM + tl.arange(0, BM)
        qmask = i < n_q
        qpos = start + i
        d = tl.arange(0, HEAD_DIM)
        q_off = (q0 + i).to(tl.int64)[:, None] * stride_qt + head * stride_qh + d[None, :]
        q = tl.load(q_ptr + q_off, mask=qmask[:, None], other=0.0)
        # Keys this block of queries may see; none when the block lies past the chunk's end.
        end = tl.where(mb * BM < n_q, start + tl.minimum(n_q, (mb + 1) * BM), 0)
        m = tl.full([BM], float("-inf"), tl.float32)
        l_sum = tl.zeros([BM], tl.float32)
        acc = tl.zeros([BM, HEAD_DIM], tl.float32)
        for kstart in range(0, end, BN):
            t = kstart + tl.arange(0, BN)
            kvalid = t < end
            blk = tl.load(tables_ptr + seq * stride_ts + t // BLOCK_SIZE, mask=kvalid, other=0)
            row = blk.to(tl.int64) * stride_kb + (t % BLOCK_SIZE) * stride_kt + kv_head * stride_kh
            k = tl.load(k_ptr + row[:, None] + d[None, :], mask=kvalid[:, None], other=0.0)
            s = mma(q.to(k.dtype), tl.trans(k), PRECISION, UPCAST) * scale  # [BM, BN]
            # Key 0 is visible to every row, so each row's max is finite after the first tile.
            s = tl.where((t[None, :] <= qpos[:, None]) & kvalid[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m - m_new)
            v = tl.load(v_ptr + row[:, None] + d[None, :], mask=kvalid[:, None], other=0.0)
            l_sum = l_sum * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, PRECISION, UPCAST)
            m = m_new
        o = acc / tl.where(l_sum > 0, l_sum, 1.0)[:, None]
        o_off = (q0 + i).to(tl.int64)[:, None] * stride_ot + head * stride_oh + d[None, :]
        tl.store(out_ptr + o_off, cast(o, out_ptr.dtype.element_ty), mask=qmask[:, None])


def supports_shape(num_heads: int, num_kv_heads: int, head_dim: int) -> bool:
    """GQA groups divide evenly and head_dim is a power of two >= 16 (tl.dot's minimum)."""
    pow2 = head_dim >= 16 and head_dim & (head_dim - 1) == 0
    return num_kv_heads > 0 and num_heads % num_kv_heads == 0 and pow2


def triton_varlen_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    query_start: torch.Tensor,
    start_pos: torch.Tensor,
    block_tables: torch.Tensor,
    max_query_len: int,
    scale: float,
) -> torch.Tensor:
    """Causal attention of every prefill chunk; writes and returns `out`.

    q/out [num_tokens, num_heads, head_dim] (last dim contiguous; out may be a slice of a larger
    buffer); k_cache/v_cache [num_blocks, block_size, num_kv_heads, head_dim] with equal strides;
    query_start [P + 1], start_pos [P] and block_tables [P, width] integer device tensors;
    max_query_len: the longest chunk (a host int, sizes the grid).
    """
    require_triton("varlen prefill")
    num_heads, head_dim = q.shape[1:]
    _, block_size, num_kv_heads, _ = k_cache.shape
    if not supports_shape(num_heads, num_kv_heads, head_dim) or q.stride(2) != 1 or out.stride(2) != 1:
        raise ValueError(f"unsupported prefill shape: heads {num_heads}/{num_kv_heads}, head_dim {head_dim}")
    if v_cache.shape != k_cache.shape or v_cache.stride() != k_cache.stride() or k_cache.stride(3) != 1:
        raise ValueError("k_cache and v_cache must share shape and strides, head_dim contiguous")
    num_prefills = int(start_pos.shape[0])
    if num_prefills == 0 or max_query_len == 0:
        return out
    # float32 tiles at head_dim 128 would overflow shared memory at the bf16 tile sizes.
    bm, bn = (BLOCK_M // 2, BLOCK_N // 2) if q.element_size() > 2 and head_dim >= 128 else (BLOCK_M, BLOCK_N)
    grid = (num_prefills, num_heads, triton.cdiv(max_query_len, bm))
    with on_device(q):
        _prefill_kernel[grid](
            q, k_cache, v_cache, out, query_start, start_pos, block_tables, scale,
            q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            block_tables.stride(0), out.stride(0), out.stride(1),
            GROUP=num_heads // num_kv_heads, BLOCK_SIZE=block_size, HEAD_DIM=head_dim,
            BM=bm, BN=bn, PRECISION=dot_precision(q.dtype), UPCAST=interpreting(),
            # Four warps spill at head_dim 128 (ptxas, sm_90: 255 registers + 496 bytes of stack);
            # eight do not.
            num_warps=8 if head_dim >= 128 else 4,
        )
    return out
