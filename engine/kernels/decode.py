"""Split-K paged decode attention ("flash-decoding") in Triton.

One program per (sequence, KV head, split): it handles every query head of that KV head (a GQA
group reads each K/V block once) over one contiguous slice of the sequence's live context, read
through the block table. With more than one split, each program writes its slice's normalised
partial output and log-sum-exp, and a small second kernel combines the splits (atomic-free).

The split count is chosen on the host from the batch, the KV heads and an upper bound on the
context (the block table's width), never from device data, so the launch is CUDA-graph
capturable; each program derives its slice from the context length in device memory, and slices
past the end do nothing. Online softmax and accumulation in float32; K/V read in the cache dtype.
"""

from __future__ import annotations

import functools

import torch
from isthmus.engine.kernels._triton import (
    cast,
    dot_precision,
    interpreting,
    mma,
    next_pow2,
    on_device,
    require_triton,
    tl,
    triton,
)

TOKENS_PER_ITER = 64  # keys per loop iteration of one program (any block size works)
MIN_SPLIT_TOKENS = 256  # a split below this many keys costs more in the combine than it saves
MAX_SPLITS = 32
DEFAULT_SMS = 132  # an H100/H200's SM count, used when no CUDA device is at hand


@functools.cache
def _sm_count(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_context: int, num_sms: int = DEFAULT_SMS) -> int:
    """Splits per (sequence, KV head): enough programs for two waves over the SMs, but no split
    shorter than MIN_SPLIT_TOKENS keys of the longest possible context."""
    programs = max(1, num_seqs * num_kv_heads)
    want = -(-2 * num_sms // programs)
    by_len = max(1, max_context // MIN_SPLIT_TOKENS)
    return max(1, min(want, by_len, MAX_SPLITS))


if triton is not None:

    # stride_ts is the padded width of the step's block tables, which changes from step to step
    # on the eager path; without do_not_specialize Triton would compile new variants mid-serving.
    @triton.jit(do_not_specialize=["stride_ts"])
    def _split_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, mid_o_ptr, mid_lse_ptr, tables_ptr, lens_ptr, scale,
        stride_qs, stride_qh, stride_kb, stride_kt, stride_kh, stride_ts, stride_os, stride_oh,
        NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
        BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, TOK: tl.constexpr,
        NUM_SPLITS: tl.constexpr, USE_DOT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        seq = tl.program_id(0)
        kv_head = tl.program_id(1)
        split = tl.program_id(2)
        ctx = tl.load(lens_ptr + seq).to(tl.int32)
        per = tl.cdiv(tl.cdiv(ctx, NUM_SPLITS), TOK) * TOK  # keys per split, a multiple of TOK
        lo = split * per
        hi = tl.minimum(lo + per, ctx)
        g = tl.arange(0, GROUP_PAD)
        d = tl.arange(0, HEAD_DIM)
        heads = kv_head * GROUP + g
        gmask = g < GROUP
        q_off = seq * stride_qs + heads[:, None] * stride_qh + d[None, :]
        q = tl.load(q_ptr + q_off, mask=gmask[:, None], other=0.0)
        m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        l_sum = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
        for start in range(lo, hi, TOK):
            t = start + tl.arange(0, TOK)
            valid = t < hi
            blk = tl.load(tables_ptr + seq * stride_ts + t // BLOCK_SIZE, mask=valid, other=0)
            row = blk.to(tl.int64) * stride_kb + (t % BLOCK_SIZE) * stride_kt + kv_head * stride_kh
            k = tl.load(k_ptr + row[:, None] + d[None, :], mask=valid[:, None], other=0.0)
            if USE_DOT:
                s = mma(q.to(k.dtype), tl.trans(k), PRECISION, UPCAST)
            else:
                s = tl.sum(q.to(tl.float32)[:, None, :] * k.to(tl.float32)[None, :, :], 2)
            s = tl.where(valid[None, :], s * scale, float("-inf"))  # [GROUP_PAD, TOK]
            m_new = tl.maximum(m, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m - m_new)
            v = tl.load(v_ptr + row[:, None] + d[None, :], mask=valid[:, None], other=0.0)
            l_sum = l_sum * alpha + tl.sum(p, 1)
            if USE_DOT:
                pv = mma(p.to(v.dtype), v, PRECISION, UPCAST)
            else:
                pv = tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], 1)
            acc = acc * alpha[:, None] + pv
            m = m_new
        nonempty = l_sum > 0
        o = acc / tl.where(nonempty, l_sum, 1.0)[:, None]
        if NUM_SPLITS == 1:
            out_off = seq * stride_os + heads[:, None] * stride_oh + d[None, :]
            tl.store(out_ptr + out_off, cast(o, out_ptr.dtype.element_ty), mask=gmask[:, None])
        else:
            mid = (seq * NUM_HEADS + heads) * NUM_SPLITS + split  # [GROUP_PAD]
            tl.store(mid_o_ptr + mid[:, None] * HEAD_DIM + d[None, :], o, mask=gmask[:, None])
            lse = tl.where(nonempty, m + tl.log(tl.where(nonempty, l_sum, 1.0)), float("-inf"))
            tl.store(mid_lse_ptr + mid, lse, mask=gmask)

    @triton.jit
    def _combine_kernel(
        mid_o_ptr, mid_lse_ptr, out_ptr, stride_os, stride_oh,
        NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr,
    ):
        seq = tl.program_id(0)
        head = tl.program_id(1)
        sp = tl.arange(0, SPLITS_PAD)
        d = tl.arange(0, HEAD_DIM)
        smask = sp < NUM_SPLITS
        base = (seq * NUM_HEADS + head) * NUM_SPLITS
        lse = tl.load(mid_lse_ptr + base + sp, mask=smask, other=float("-inf"))
        w = tl.exp(lse - tl.max(lse, 0))  # split 0 always holds keys, so the max is finite
        o = tl.load(mid_o_ptr + (base + sp)[:, None] * HEAD_DIM + d[None, :], mask=smask[:, None], other=0.0)
        out = tl.sum(w[:, None] * o, 0) / tl.sum(w, 0)
        tl.store(out_ptr + seq * stride_os + head * stride_oh + d, cast(out, out_ptr.dtype.element_ty))


def _num_warps(head_dim: int) -> int:
    # At head_dim 128 four warps spill registers (ptxas for sm_90: 255 registers plus stack, the
    # 64-bit gather pointers of a 64 x 128 tile); eight hold it (194-232 registers, no spill).
    return 8 if head_dim >= 128 else 4


def _tokens_per_iter(q: torch.Tensor, head_dim: int) -> int:
    # float32 K and V tiles of 64 x 128 would crowd shared memory once the loop is pipelined.
    return TOKENS_PER_ITER // 2 if q.element_size() > 2 and head_dim >= 128 else TOKENS_PER_ITER


def triton_paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
) -> torch.Tensor:
    """q [num_seqs, num_heads, head_dim] -> out of the same shape and dtype.

    k_cache/v_cache [num_blocks, block_size, num_kv_heads, head_dim] (contiguous, same strides);
    block_tables [num_seqs, >= ceil(context_len / block_size)] (entries past a row's context are
    never read); context_lens [num_seqs] >= 1. `num_splits` None: `choose_num_splits` from the
    table's width (the longest context it can describe).
    """
    require_triton("paged decode")
    num_seqs, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    q = q.contiguous()
    out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    if num_splits is None:
        sms = _sm_count(q.device.index or 0) if q.is_cuda else DEFAULT_SMS
        num_splits = choose_num_splits(num_seqs, num_kv_heads, block_tables.shape[1] * block_size, sms)
    # Groups of 2+ query heads go through tl.dot (rows padded to its minimum of 16); a single head
    # (MHA) reduces elementwise, where padding to 16 rows would waste registers; so do head_dims
    # below tl.dot's minimum of 16.
    use_dot = group > 1 and head_dim >= 16
    group_pad = max(16, next_pow2(group)) if use_dot else 1
    if num_splits > 1:
        mid_o = torch.empty(num_seqs, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        mid_lse = torch.empty(num_seqs, num_heads, num_splits, dtype=torch.float32, device=q.device)
    else:
        mid_o = mid_lse = out  # unused by the single-split variant
    with on_device(q):
        _split_kernel[(num_seqs, num_kv_heads, num_splits)](
            q, k_cache, v_cache, out, mid_o, mid_lse, block_tables, context_lens, scale,
            q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            block_tables.stride(0), out.stride(0), out.stride(1),
            NUM_HEADS=num_heads, GROUP=group, GROUP_PAD=group_pad, BLOCK_SIZE=block_size,
            HEAD_DIM=head_dim, TOK=_tokens_per_iter(q, head_dim), NUM_SPLITS=num_splits, USE_DOT=use_dot,
            PRECISION=dot_precision(q.dtype), UPCAST=interpreting(), num_warps=_num_warps(head_dim),
        )
        if num_splits > 1:
            _combine_kernel[(num_seqs, num_heads)](
                mid_o, mid_lse, out, out.stride(0), out.stride(1),
                NUM_HEADS=num_heads, HEAD_DIM=head_dim, NUM_SPLITS=num_splits,
                SPLITS_PAD=next_pow2(num_splits),
            )
    return out
