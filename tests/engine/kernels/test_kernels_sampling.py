"""The sampler's kernels (seeded Gumbel-max draw, top-p bisection): interpreter on CPU, compiled on GPU."""

from __future__ import annotations

from .._interpret import needs_cuda, needs_triton, run_interpreted

_CHECKS = """
from tests.engine.kernels import sampling_checks as c
c.check_gumbel("cpu")
c.check_nucleus("cpu")
c.check_sampler_without_sync()
print("ok")
"""


@needs_triton
def test_sampling_kernels_in_triton_interpreter() -> None:
    """Both kernels against PyTorch at vocab 102,400 and small ones, and the whole sampler through
    them: same tokens as through PyTorch, no host read before the one device-to-host copy."""
    run_interpreted(_CHECKS, timeout=600)


@needs_cuda
def test_gumbel_draw_on_gpu() -> None:
    from .sampling_checks import check_gumbel

    check_gumbel("cuda")


@needs_cuda
def test_nucleus_floor_on_gpu() -> None:
    from .sampling_checks import check_nucleus

    check_nucleus("cuda")
