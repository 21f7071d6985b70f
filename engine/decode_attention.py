"""Paged decode attention on CUDA: one Triton kernel that reads only each sequence's live KV blocks.

The portable decode path (`attention._decode_batch`) gathers every block of a padded block table
and masks; that reads the whole padded width, and under a CUDA graph the width is fixed at
`max_model_len / block_size` blocks. This kernel instead loops, per (sequence, head), over the
sequence's own context length read from device memory, so it is capturable (no host syncs, no
data-dependent Python control flow) and its cost follows the live context, not the padding.

Online softmax in float32; K/V read in the cache dtype. GQA: query head h reads KV head
h // (num_heads // num_kv_heads).
"""

from __future__ import annotations

import contextlib

import torch

try:  # Triton ships with CUDA builds of torch; CPU-only installs may lack it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]

TOKENS_PER_ITER = 64  # keys handled per loop iteration of one program (any block size works)


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


if triton is not None:

    # stride_ts is the padded width of the step's block tables, which changes from step to step
    # on the eager path; Triton specializes integer arguments on == 1 and % 16 == 0, so without
    # this it would JIT-compile new kernel variants in the middle of serving.
    @triton.jit(do_not_specialize=["stride_ts"])
    def _paged_decode_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        out_ptr,
        tables_ptr,
        lens_ptr,
        scale,
        stride_qs,
        stride_qh,
        stride_kb,
        stride_kt,
        stride_kh,
        stride_ts,
        stride_os,
        stride_oh,
        GROUP: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        TOK: tl.constexpr,
    ):
        seq = tl.program_id(0)
        head = tl.program_id(1)
        kv_head = head // GROUP
        ctx = tl.load(lens_ptr + seq).to(tl.int32)
        d = tl.arange(0, HEAD_DIM)
        q = tl.load(q_ptr + seq * stride_qs + head * stride_qh + d).to(tl.float32)  # [HEAD_DIM]
        m = tl.max(tl.full([TOK], float("-inf"), tl.float32), 0)
        l_sum = tl.sum(tl.zeros([TOK], tl.float32), 0)
        acc = tl.zeros([HEAD_DIM], tl.float32)
        for start in range(0, ctx, TOK):
            t = start + tl.arange(0, TOK)  # [TOK] token positions
            valid = t < ctx
            blk = tl.load(tables_ptr + seq * stride_ts + t // BLOCK_SIZE, mask=valid, other=0)
            row = blk.to(tl.int64) * stride_kb + (t % BLOCK_SIZE) * stride_kt + kv_head * stride_kh
            k = tl.load(k_ptr + row[:, None] + d[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
            s = tl.sum(k * q[None, :], 1) * scale  # [TOK]
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 0))
            p = tl.exp(s - m_new)
            alpha = tl.exp(m - m_new)
            v = tl.load(v_ptr + row[:, None] + d[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
            l_sum = l_sum * alpha + tl.sum(p, 0)
            acc = acc * alpha + tl.sum(p[:, None] * v, 0)
            m = m_new
        out = acc / l_sum
        tl.store(out_ptr + seq * stride_os + head * stride_oh + d, out.to(out_ptr.dtype.element_ty))


def paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q [num_seqs, num_heads, head_dim] -> out [num_seqs, num_heads, head_dim].

    k_cache/v_cache [num_blocks, block_size, num_kv_heads, head_dim] (contiguous); block_tables
    [num_seqs, >= ceil(context_len / block_size)] (entries past a sequence's context are never
    read); context_lens [num_seqs] >= 1.
    """
    if triton is None:
        raise RuntimeError("paged_decode needs Triton")
    num_seqs, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    if not _shapes_ok(q, k_cache):
        raise ValueError(
            f"unsupported decode shape: heads {num_heads}/{num_kv_heads}, head_dim {head_dim}, "
            f"block_size {block_size}"
        )
    if v_cache.shape != k_cache.shape or v_cache.stride() != k_cache.stride():
        raise ValueError("v_cache must match k_cache in shape and strides (one offset reads both)")
    q = q.contiguous()
    out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    # Triton launches on the *current* CUDA device, not the tensors' one: with device="cuda:1"
    # and device 0 current the kernel would run on GPU 0 against GPU 1's memory.
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        _paged_decode_kernel[(num_seqs, num_heads)](
            q,
            k_cache,
            v_cache,
            out,
            block_tables,
            context_lens,
            scale,
            q.stride(0),
            q.stride(1),
            k_cache.stride(0),
            k_cache.stride(1),
            k_cache.stride(2),
            block_tables.stride(0),
            out.stride(0),
            out.stride(1),
            GROUP=num_heads // num_kv_heads,
            BLOCK_SIZE=block_size,
            HEAD_DIM=head_dim,
            TOK=TOKENS_PER_ITER,
        )
    return out
