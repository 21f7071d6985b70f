"""Triton import shared by the kernels: CPU-only installs may lack it."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

try:  # Triton ships with CUDA builds of torch.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None  # type: ignore[assignment, unused-ignore]
    tl = None  # type: ignore[assignment, unused-ignore]

__all__ = [
    "available", "cast", "dot_precision", "interpreting", "mma", "next_pow2", "on_device", "require_triton",
    "round_to", "tl", "triton",
]


def available(device: torch.device) -> bool:
    """True when Triton kernels can run on `device` (a CUDA device with Triton installed)."""
    return triton is not None and device.type == "cuda"


def require_triton(what: str) -> None:
    """Raise a clear error when Triton is missing."""
    if triton is None:
        raise RuntimeError(f"{what} needs Triton")


def on_device(t: torch.Tensor) -> Any:
    """Context making t's CUDA device current: Triton launches on the *current* device, so with
    tensors on cuda:1 and device 0 current a kernel would run on GPU 0 against GPU 1's memory."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (>= 1)."""
    return 1 << max(0, (n - 1).bit_length())


def interpreting() -> bool:
    """True under Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: exact products for float32 inputs (no TF32 rounding)."""
    return "ieee" if dtype == torch.float32 else "tf32"


if triton is not None:

    @triton.jit
    def mma(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """tl.dot(a, b) with float32 accumulation. UPCAST (set under the interpreter, whose bf16
        dot multiplies the raw uint16 storage) multiplies in float32 instead: bf16 x bf16
        products are exact in float32, so the result is the same."""
        if UPCAST:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            return tl.dot(a, b, input_precision=PRECISION)

    @triton.jit
    def round_to(x, DT: tl.constexpr):
        """float32 x rounded to dtype DT (nearest even), returned as float32, so `.to(DT)` after
        it is exact. Needed for bf16 because the interpreter's float32 -> bf16 cast truncates
        where the GPU rounds; the integer form gives the GPU's answer on both."""
        if DT == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = bits + 0x7FFF + ((bits >> 16) & 1)
            return ((bits >> 16) << 16).to(tl.float32, bitcast=True)
        else:
            return x.to(DT).to(tl.float32)

    @triton.jit
    def cast(x, DT: tl.constexpr):
        """float32 x -> dtype DT, rounding to nearest even on the GPU and in the interpreter."""
        return round_to(x, DT).to(DT)
