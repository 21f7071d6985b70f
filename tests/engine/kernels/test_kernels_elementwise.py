"""Fused RMSNorm(+residual), in-place RoPE and SiLU*up: interpreter on CPU, compiled on GPU."""

from __future__ import annotations

from .._interpret import needs_cuda, needs_triton, run_check


@needs_triton
def test_elementwise_in_triton_interpreter() -> None:
    run_check("check_elementwise")


@needs_cuda
def test_elementwise_on_gpu() -> None:
    from .._kernel_checks import check_elementwise

    check_elementwise("cuda")
