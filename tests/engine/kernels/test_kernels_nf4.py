"""The nf4 GEMV/small-batch GEMM against bitsandbytes: interpreter on CPU, compiled on GPU."""

from __future__ import annotations

from .._interpret import needs_cuda, needs_triton, run_check


@needs_triton
def test_nf4_in_triton_interpreter() -> None:
    run_check("check_nf4")


@needs_cuda
def test_nf4_on_gpu() -> None:
    from .._kernel_checks import check_nf4

    check_nf4("cuda")
