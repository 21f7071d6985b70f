"""Every kernel, as its launcher really launches it, compiles for an H100/H200 (sm_90) on CPU.

The interpreter checks the kernels' arithmetic but not what only the GPU backend rejects (types
it cannot lower, shared memory, constexpr handling). Triton compiles ahead of time without a GPU
(its wheel ships ptxas), so each launcher runs here on CPU tensors with the kernel swapped for a
recorder; the recorded arguments and constexprs are then compiled for sm_90.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import pytest
import torch

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"), reason="interpreted"),
]

_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int64: "i64",
          torch.int32: "i32", torch.uint8: "u8"}
_OPTIONS = ("num_warps", "num_stages")


class _Recorder:
    """Stands in for a JIT kernel: `kernel[grid](*args, **kwargs)` records the call."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __getitem__(self, grid: Any) -> Any:
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


def _compile(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature: dict[str, str] = {}
    for name, value in zip(fn.arg_names, args, strict=False):
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _TYPES[value.dtype]
        else:
            signature[name] = "fp32" if isinstance(value, float) else "i32"
    constexprs = {k: v for k, v in kwargs.items() if k not in _OPTIONS}
    signature.update(dict.fromkeys(constexprs, "constexpr"))
    options = {k: v for k, v in kwargs.items() if k in _OPTIONS}
    source = ASTSource(fn, signature, constexprs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def _record(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> _Recorder:
    rec = _Recorder(getattr(module, name))
    monkeypatch.setattr(module, name, rec)
    return rec


def _compile_all(rec: _Recorder) -> None:
    assert rec.calls
    for args, kwargs in rec.calls:
        assert _compile(rec.fn, args, kwargs).asm["cubin"]


def test_attention_kernels_compile_for_sm90(monkeypatch: pytest.MonkeyPatch) -> None:
    from isthmus.engine.kernels import decode, prefill

    split = _record(monkeypatch, decode, "_split_kernel")
    combine = _record(monkeypatch, decode, "_combine_kernel")
    pf = _record(monkeypatch, prefill, "_prefill_kernel")
    cache = torch.zeros(8, 16, 8, 128, dtype=torch.bfloat16)
    tables, lens = torch.zeros(2, 8, dtype=torch.long), torch.ones(2, dtype=torch.long)
    for heads in (8, 32):  # MHA (elementwise), GQA groups of 4 (tl.dot)
        q = torch.zeros(2, heads, 128, dtype=torch.bfloat16)
        decode.triton_paged_decode(q, cache, cache, tables, lens, 0.1, num_splits=4)
    q = torch.zeros(5, 32, 128, dtype=torch.bfloat16)
    prefill.triton_varlen_prefill(
        q, cache, cache, torch.zeros_like(q),
        torch.tensor([0, 5], dtype=torch.int32), torch.tensor([3], dtype=torch.int32), tables[:1], 5, 0.1,
    )
    for rec in (split, combine, pf):
        _compile_all(rec)


def test_elementwise_and_nf4_kernels_compile_for_sm90(monkeypatch: pytest.MonkeyPatch) -> None:
    import bitsandbytes as bnb
    from isthmus.engine.kernels import act, nf4, norm, rope

    recs = [_record(monkeypatch, norm, "_rms_kernel"), _record(monkeypatch, act, "_silu_mul_kernel"),
            _record(monkeypatch, rope, "_rope_kernel"), _record(monkeypatch, nf4, "_nf4_kernel")]
    x = torch.zeros(2, 4096, dtype=torch.bfloat16)
    norm.triton_rms_norm(x, torch.ones(4096, dtype=torch.bfloat16), 1e-6, x)
    act.triton_silu_mul(torch.zeros(2, 2 * 11008, dtype=torch.bfloat16))
    qkv = torch.zeros(3, 48 * 128, dtype=torch.bfloat16)
    rope.triton_rope_(
        qkv[:, : 32 * 128].view(3, 32, 128), qkv[:, 32 * 128 : 40 * 128].view(3, 8, 128),
        torch.zeros(2, 64, 128), torch.zeros(3, dtype=torch.long),
    )
    weight = bnb.nn.Params4bit(torch.randn(32, 256).to(torch.bfloat16), requires_grad=False, quant_type="nf4")
    weight = weight.to("cpu")
    for rows in (1, 8):  # the GEMV (a reduction) and the small GEMM (tl.dot)
        nf4.triton_nf4_linear(torch.zeros(rows, 256, dtype=torch.bfloat16), weight)
    for rec in recs:
        _compile_all(rec)
