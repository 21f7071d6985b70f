"""RMSNorm, optionally fused with the residual add, in Triton with a portable fallback.

Numerics follow transformers' LlamaRMSNorm (and `model.RMSNorm`): the residual add rounds to the
activation dtype, the normalisation runs in float32 and is cast back to the activation dtype,
then it is multiplied by the weight (rounding once to the product's dtype). One program per row.
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

MAX_HIDDEN = 65536  # one program holds a whole row in registers


if triton is not None:

    @triton.jit
    def _rms_kernel(
        x_ptr, r_ptr, w_ptr, out_ptr, sum_ptr, eps, hidden,
        stride_x, stride_r, stride_o, stride_s,
        HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        c = tl.arange(0, BLOCK)
        mask = c < hidden
        x = tl.load(x_ptr + row * stride_x + c, mask=mask, other=0.0)
        if HAS_RESIDUAL:
            r = tl.load(r_ptr + row * stride_r + c, mask=mask, other=0.0)
            x = cast(x.to(tl.float32) + r.to(tl.float32), x.dtype)  # rounds as a torch add would
            tl.store(sum_ptr + row * stride_s + c, x, mask=mask)
        x32 = x.to(tl.float32)
        inv = 1.0 / tl.sqrt(tl.sum(x32 * x32, 0) / hidden + eps)
        y = round_to(x32 * inv, x.dtype)
        w = tl.load(w_ptr + c, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * stride_o + c, cast(w * y, out_ptr.dtype.element_ty), mask=mask)


def portable_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The reference: exactly `model.RMSNorm.forward`."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def triton_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernel: (norm(x [+ residual]) * weight, x [+ residual]).

    x/residual [..., hidden] with a contiguous last dim; weight [hidden]. Without a residual the
    second element is x itself.
    """
    require_triton("rms_norm")
    hidden = x.shape[-1]
    if hidden > MAX_HIDDEN or weight.shape != (hidden,) or x.stride(-1) != 1:
        raise ValueError(f"unsupported rms_norm shape {tuple(x.shape)} / weight {tuple(weight.shape)}")
    if residual is not None and (residual.shape != x.shape or residual.stride(-1) != 1):
        raise ValueError(f"residual shape {tuple(residual.shape)} must equal x's {tuple(x.shape)}")
    x2 = x.reshape(-1, hidden)
    r2 = residual.reshape(-1, hidden) if residual is not None else x2
    out = torch.empty(x2.shape, dtype=torch.result_type(weight, x), device=x.device)
    total = torch.empty_like(x2) if residual is not None else x2
    if x2.shape[0]:
        with on_device(x):
            _rms_kernel[(x2.shape[0],)](
                x2, r2, weight, out, total, eps, hidden,
                x2.stride(0), r2.stride(0), out.stride(0), total.stride(0),
                HAS_RESIDUAL=residual is not None, BLOCK=next_pow2(hidden),
                num_warps=8 if hidden >= 2048 else 4,
            )
    return out.view(*x.shape[:-1], hidden), total.view(x.shape) if residual is not None else x


def _use_triton(x: torch.Tensor) -> bool:
    return available(x.device) and x.shape[-1] <= MAX_HIDDEN and x.stride(-1) == 1


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm(x) * weight: the Triton kernel on CUDA, `portable_rms_norm` elsewhere."""
    if _use_triton(x):
        return triton_rms_norm(x, weight, eps)[0]
    return portable_rms_norm(x, weight, eps)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(x + residual) * weight, x + residual) in one pass over the row on CUDA.

    In a decoder layer: `normed, h = add_rms_norm(attn_out, h, w, eps)` replaces
    `h = h + attn_out; normed = norm(h)` (the sum is the same either way round).
    """
    if _use_triton(x) and residual.stride(-1) == 1:
        return triton_rms_norm(x, weight, eps, residual)
    total = x + residual
    return portable_rms_norm(total, weight, eps), total
