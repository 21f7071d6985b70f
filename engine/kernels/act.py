"""SiLU(gate) * up, in Triton with a portable fallback.

Takes either the fused projection's output [..., 2 * ffn] (gate in the first half, up in the
second, the order of a gate_up weight made by concatenating gate_proj then up_proj) or gate and up
separately. Rounding follows `F.silu(gate) * up` in the activation dtype: SiLU in float32 rounded
to the dtype, then the product rounded again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from isthmus.engine.kernels._triton import available, cast, on_device, require_triton, round_to, tl, triton

BLOCK = 1024  # columns per program


if triton is not None:

    @triton.jit
    def _silu_mul_kernel(g_ptr, u_ptr, out_ptr, ffn, stride_g, stride_u, stride_o, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = c < ffn
        g = tl.load(g_ptr + row * stride_g + c, mask=mask, other=0.0)
        u = tl.load(u_ptr + row * stride_u + c, mask=mask, other=0.0)
        g32 = g.to(tl.float32)
        s = round_to(g32 / (1.0 + tl.exp(-g32)), g.dtype)
        out = cast(s * u.to(tl.float32), out_ptr.dtype.element_ty)
        tl.store(out_ptr + row * stride_o + c, out, mask=mask)


def _split(x: torch.Tensor, up: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if up is not None:
        if up.shape != x.shape:
            raise ValueError(f"gate {tuple(x.shape)} and up {tuple(up.shape)} differ in shape")
        return x, up
    if x.shape[-1] % 2:
        raise ValueError(f"fused gate_up input needs an even last dim, got {tuple(x.shape)}")
    ffn = x.shape[-1] // 2
    return x[..., :ffn], x[..., ffn:]


def portable_silu_mul(x: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
    """The reference: `F.silu(gate) * up`."""
    gate, up = _split(x, up)
    return F.silu(gate) * up


def triton_silu_mul(x: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the kernel. x: gate [..., ffn] with `up` of the same shape, or fused [..., 2 * ffn]."""
    require_triton("silu_mul")
    gate, up = _split(x, up)
    if gate.stride(-1) != 1 or up.stride(-1) != 1:
        raise ValueError("silu_mul needs a contiguous last dim")
    ffn = gate.shape[-1]
    g2, u2 = gate.reshape(-1, ffn), up.reshape(-1, ffn)
    out = torch.empty(g2.shape, dtype=torch.result_type(gate, up), device=x.device)
    if g2.shape[0] and ffn:
        with on_device(x):
            _silu_mul_kernel[(g2.shape[0], triton.cdiv(ffn, BLOCK))](
                g2, u2, out, ffn, g2.stride(0), u2.stride(0), out.stride(0), BLOCK=BLOCK
            )
    return out.view(*gate.shape)


def silu_mul(x: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
    """SiLU(gate) * up: the Triton kernel on CUDA, `portable_silu_mul` elsewhere.

    `silu_mul(gate_up)` for a fused [..., 2 * ffn] input (gate first), `silu_mul(gate, up)` otherwise.
    """
    if available(x.device) and x.stride(-1) == 1 and (up is None or up.stride(-1) == 1):
        return triton_silu_mul(x, up)
    return portable_silu_mul(x, up)
