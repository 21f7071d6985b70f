"""Triton GEMV / small-batch GEMM over bitsandbytes' packed nf4 weights, dequantized in registers.

Reads a `bitsandbytes.nn.Params4bit` as bitsandbytes stores it (checkpoints and quantize-on-load
stay its format): `weight` uint8 [out * in / 2, 1], element e of the row-major [out, in] matrix in
byte e // 2, the high nibble first; `quant_state.code` the 16 nf4 levels; `quant_state.absmax` one
scale per `blocksize` consecutive elements, either float32 or (nested / double quantization,
`compress_statistics=True`) uint8 codes into `state2.code` scaled by `state2.absmax` per
`state2.blocksize` codes, plus `offset`. So w[e] = code[nibble(e)] * absmax[e // blocksize].

Each program computes BLOCK_N outputs for every row of x (at most MAX_ROWS rows): it streams its
weight rows' bytes once, dequantizes to x's dtype (rounding as bitsandbytes' dequantize does) and
accumulates in float32. Larger batches are compute-bound and go to bitsandbytes' kernels, as does
everything off CUDA; bitsandbytes is also the tests' reference.
"""

from __future__ import annotations

from typing import Any

import torch
from isthmus.engine.kernels._triton import (
    available,
    cast,
    dot_precision,
    interpreting,
    mma,
    on_device,
    require_triton,
    round_to,
    tl,
    triton,
)

MAX_ROWS = 8  # batch rows the Triton path takes; bitsandbytes beyond
BLOCK_K = 128  # input features per loop iteration (64 packed bytes per weight row)


if triton is not None:

    @triton.jit
    def _scales(
        absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, blk, mask, BS2: tl.constexpr, NESTED: tl.constexpr
    ):
        """absmax of block ids `blk`, decoding the nested (double-quantized) form."""
        if NESTED:
            q = tl.load(absmax_ptr + blk, mask=mask, other=0).to(tl.int32)
            outer = tl.load(absmax2_ptr + blk // BS2, mask=mask, other=0.0)
            return tl.load(code2_ptr + q) * outer + tl.load(offset_ptr)
        else:
            return tl.load(absmax_ptr + blk, mask=mask, other=0.0)

    @triton.jit
    def _nf4_kernel(
        x_ptr, w_ptr, code_ptr, absmax_ptr, absmax2_ptr, code2_ptr, bias_ptr, out_ptr, offset_ptr,
        M, N, K, stride_xm, stride_om,
        BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr, NESTED: tl.constexpr, HAS_BIAS: tl.constexpr,
        M_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BK: tl.constexpr, USE_DOT: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = n < N
        rows = tl.arange(0, M_PAD)
        mmask = rows < M
        j = tl.arange(0, BK // 2)
        acc = tl.zeros([M_PAD, BLOCK_N], tl.float32)
        dt = x_ptr.dtype.element_ty
        for k0 in range(0, K, BK):
            k_even = k0 + 2 * j  # [BK // 2]: the high nibbles' columns; k_even + 1 the low ones'
            kmask = k_even < K
            wmask = nmask[:, None] & kmask[None, :]
            elem = n.to(tl.int64)[:, None] * K + k_even[None, :]  # [BLOCK_N, BK // 2]
            packed = tl.load(w_ptr + elem // 2, mask=wmask, other=0).to(tl.int32)
            blk = elem // BLOCKSIZE  # both nibbles of a byte share a block (blocksize is even)
            scale = _scales(absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, blk, wmask, BLOCKSIZE2, NESTED)
            w_hi = round_to(tl.load(code_ptr + (packed >> 4)) * scale, dt)
            w_lo = round_to(tl.load(code_ptr + (packed & 15)) * scale, dt)
            xmask = mmask[:, None] & kmask[None, :]
            x_off = rows[:, None] * stride_xm + k_even[None, :]
            x_even = tl.load(x_ptr + x_off, mask=xmask, other=0.0)
            x_odd = tl.load(x_ptr + x_off + 1, mask=xmask, other=0.0)
            if USE_DOT:
                acc += mma(x_even, tl.trans(w_hi.to(dt)), PRECISION, UPCAST)
                acc += mma(x_odd, tl.trans(w_lo.to(dt)), PRECISION, UPCAST)
            else:  # one row: a reduction, no tensor cores
                xe = x_even.to(tl.float32)  # [1, BK // 2]
                xo = x_odd.to(tl.float32)
                acc += tl.sum(w_hi * xe + w_lo * xo, 1)[None, :]
        if HAS_BIAS:
            acc += tl.load(bias_ptr + n, mask=nmask, other=0.0).to(tl.float32)[None, :]
        o_off = rows[:, None] * stride_om + n[None, :]
        tl.store(out_ptr + o_off, cast(acc, out_ptr.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])


def _state(weight: Any) -> Any:
    qs = getattr(weight, "quant_state", None)
    if qs is None or qs.quant_type != "nf4":
        raise ValueError("expected a bitsandbytes Params4bit quantized as nf4")
    if getattr(qs, "packing_format_for_cpu", False):
        raise ValueError("weight is in bitsandbytes' CPU-repacked layout, not the standard nf4 packing")
    return qs


def _offset_tensor(qs: Any, device: torch.device) -> torch.Tensor:
    """The nested absmax offset as a float32 tensor on `device`, made once and kept on the state."""
    cached = getattr(qs, "_isthmus_offset", None)
    if cached is None or cached.device != device:
        cached = torch.as_tensor(qs.offset, dtype=torch.float32).reshape(1).to(device)
        qs._isthmus_offset = cached
    return cached


def supports(x: torch.Tensor, weight: Any) -> bool:
    """True when the Triton path takes this call: CUDA, at most MAX_ROWS rows, an even input size,
    the standard nf4 packing."""
    qs = getattr(weight, "quant_state", None)
    if qs is None or qs.quant_type != "nf4" or getattr(qs, "packing_format_for_cpu", False):
        return False
    rows = x.numel() // max(1, x.shape[-1])
    return available(x.device) and rows <= MAX_ROWS and qs.shape[1] % 2 == 0 and qs.blocksize % 2 == 0


def triton_nf4_linear(x: torch.Tensor, weight: Any, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] @ dequant(weight).T (+ bias) -> [..., out] in x's dtype, by the Triton kernel."""
    require_triton("nf4 linear")
    qs = _state(weight)
    n_out, k_in = (int(s) for s in qs.shape)
    if x.shape[-1] != k_in or k_in % 2 or qs.blocksize % 2:
        raise ValueError(f"x {tuple(x.shape)} does not fit an nf4 weight of shape {(n_out, k_in)}")
    x2 = x.reshape(-1, k_in)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    if m > MAX_ROWS:
        raise ValueError(f"the nf4 kernel takes at most {MAX_ROWS} rows, got {m}")
    out = torch.empty(m, n_out, dtype=x.dtype, device=x.device)
    if m == 0:
        return out.view(*x.shape[:-1], n_out)
    nested = bool(qs.nested)
    absmax2 = qs.state2.absmax if nested else qs.absmax
    code2 = qs.state2.code if nested else qs.code
    # The offset stays a device tensor read by the kernel: float() would sync with the host,
    # which a CUDA-graph capture forbids.
    offset = _offset_tensor(qs, x.device) if nested else qs.code
    block_n = 16 if n_out <= 8192 else 32
    with on_device(x):
        _nf4_kernel[(triton.cdiv(n_out, block_n),)](
            x2, weight.data, qs.code, qs.absmax, absmax2, code2, bias if bias is not None else out,
            out, offset, m, n_out, k_in, x2.stride(0), out.stride(0),
            BLOCKSIZE=int(qs.blocksize), BLOCKSIZE2=int(qs.state2.blocksize) if nested else 1,
            NESTED=nested, HAS_BIAS=bias is not None, M_PAD=16 if m > 1 else 1, BLOCK_N=block_n,
            BK=BLOCK_K, USE_DOT=m > 1, PRECISION=dot_precision(x.dtype), UPCAST=interpreting(),
        )
    return out.view(*x.shape[:-1], n_out)


def nf4_linear(x: torch.Tensor, weight: Any, bias: torch.Tensor | None = None) -> torch.Tensor:
    """nf4 linear: the Triton kernel for <= MAX_ROWS rows on CUDA, bitsandbytes otherwise.

    `weight` is the Params4bit of a `bnb.nn.Linear4bit` (`module.weight`), used as stored.
    """
    if supports(x, weight):
        return triton_nf4_linear(x, weight, bias)
    import bitsandbytes as bnb

    return bnb.matmul_4bit(x, weight, bias=bias, quant_state=weight.quant_state)
