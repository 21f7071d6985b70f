"""Run a snippet under Triton's CPU interpreter in a fresh interpreter process.

TRITON_INTERPRET must be set before the kernels are defined, and the rest of the test session
imports them compiled, so each interpreter run is its own subprocess (from the repository root,
so `tests.engine` imports).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")


def needs_cuda(fn):  # type: ignore[no-untyped-def]
    """Mark a test GPU-only (skipped without CUDA)."""
    fn = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(fn)
    return pytest.mark.gpu(fn)


def run_interpreted(code: str, *args: str, timeout: int = 300) -> None:
    """Run `code` with TRITON_INTERPRET=1; fail with its stderr unless it exits 0 printing "ok"."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=timeout,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


CHECKS = ("check_decode", "check_prefill", "check_elementwise", "check_nf4")

_ALL_CHECKS = """
import json, sys, traceback
from tests.engine import _kernel_checks
results = {}
for name in sys.argv[1:]:
    try:
        getattr(_kernel_checks, name)("cpu")
        results[name] = "ok"
    except Exception:
        results[name] = traceback.format_exc()
print(json.dumps(results))
"""


@functools.cache
def _interpreted_results() -> dict[str, str]:
    # One interpreter process for every check: each process pays seconds of torch and Triton
    # imports, and CI time is short.
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _ALL_CHECKS, *CHECKS], env=env, capture_output=True, text=True, timeout=600,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run_check(name: str) -> None:
    """Assert that `_kernel_checks.<name>("cpu")` passed under the interpreter (all checks run
    in one subprocess, once per test session)."""
    result = _interpreted_results()[name]
    assert result == "ok", result
