"""Batched variable-length prefill attention over the paged cache: interpreter on CPU, GPU."""

from __future__ import annotations

from .._interpret import needs_cuda, needs_triton, run_check


@needs_triton
def test_prefill_in_triton_interpreter() -> None:
    run_check("check_prefill")


@needs_cuda
def test_prefill_on_gpu() -> None:
    from .._kernel_checks import check_prefill

    check_prefill("cuda")
