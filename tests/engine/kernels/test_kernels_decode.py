"""Split-K paged decode ("flash-decoding"): Triton interpreter on CPU, compiled on GPU."""

from __future__ import annotations

from .._interpret import needs_cuda, needs_triton, run_check


@needs_triton
def test_decode_in_triton_interpreter() -> None:
    run_check("check_decode")


@needs_cuda
def test_decode_on_gpu() -> None:
    from .._kernel_checks import check_decode

    check_decode("cuda")
