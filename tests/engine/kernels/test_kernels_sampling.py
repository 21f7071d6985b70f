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


def test_sampling_kernels_compile_for_sm90(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """What the interpreter cannot check: the GPU backend lowers the float64 Gumbel noise, the
    uint64 hash, the bisection's integer keys and the row-stats reduction (sm_90, on CPU)."""
    import importlib.util
    import os

    import pytest
    import torch

    if importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("needs Triton, not interpreted")
    from isthmus.engine.kernels import gumbel_sample, nucleus, sample_stats

    from .test_kernels_compile import _compile_all, _record

    recs = [_record(monkeypatch, gumbel_sample, "_gumbel_kernel"),
            _record(monkeypatch, nucleus, "_nucleus_kernel"),
            _record(monkeypatch, sample_stats, "_row_stats_kernel")]
    monkeypatch.setattr(gumbel_sample, "available", lambda device: True)
    monkeypatch.setattr(nucleus, "available", lambda device: True)
    monkeypatch.setattr(sample_stats, "available", lambda device: True)
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.zeros(2, 102400, dtype=dtype)
        ones, keys = torch.ones(2), torch.zeros(2, dtype=torch.int64)
        for want in (True, False):
            gumbel_sample.gumbel_draw(x, ones, ones, keys, want)
            sample_stats.row_stats(x, want)
        nucleus.nucleus_floor(x, ones, ones * 0.9)
    for rec in recs:
        _compile_all(rec)
