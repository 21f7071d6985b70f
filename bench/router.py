"""Per-prompt cost of the trained router on one core, next to a decode step.

Times `isthmus.edge.router.route_prompt` (structural features + hashed n-grams + the calibrated
score + the decision: everything the edge adds per request before prefill) over every prompt of
the routing corpus, several passes, single-threaded (BLAS and OpenMP pinned to one thread).
Prints prompts/s, per-prompt microseconds (mean, p50, p99, max) overall and by prompt length, and
the ratio to one decode step. The router runs once per request; a decode step runs once per
generated token, so one step is the smallest fair yardstick.

The decode step defaults to a lower bound computed from memory bandwidth, not a measurement: an
nf4 7B model reads ~3.9 GB of weights per step, >= 1.2 ms at an H200's 4.8 TB/s. Pass
`--decode-step-ms` with a measured step (bench/engine.py, bench/gpu/) to compare with that.

    .venv/bin/python bench/router.py [--passes 5] [--decode-step-ms 1.2]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: set before numpy loads

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

NF4_7B_WEIGHT_BYTES = 3.9e9  # bytes read per decode step (6.9e9 params * ~4.5 bits)
H200_BANDWIDTH = 4.8e12  # bytes/s
DECODE_STEP_BOUND_MS = NF4_7B_WEIGHT_BYTES / H200_BANDWIDTH * 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--passes", type=int, default=5, help="passes over the corpus (default 5)")
    p.add_argument("--decode-step-ms", type=float, default=DECODE_STEP_BOUND_MS)
    a = p.parse_args()
    if a.passes < 1 or a.decode_step_ms <= 0:
        p.error("--passes must be >= 1 and --decode-step-ms > 0")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    from isthmus.edge.router import route_prompt
    from isthmus.edge.routing.corpus import read_corpus

    prompts = [(ex.prompt, ex.max_tokens, ex.num_turns) for ex in read_corpus()]
    for text, max_tokens, turns in prompts[:50]:  # warm-up: model load, regex compile, numpy paths
        route_prompt(text, max_tokens=max_tokens, num_turns=turns)
    times: list[tuple[int, float, float]] = []  # (chars, wall seconds, CPU seconds)
    for _ in range(a.passes):
        for text, max_tokens, turns in prompts:
            c0, t0 = time.thread_time(), time.perf_counter()
            route_prompt(text, max_tokens=max_tokens, num_turns=turns)
            times.append((len(text), time.perf_counter() - t0, time.thread_time() - c0))
    total = sum(t for _, t, _ in times)
    cpu_total = sum(c for _, _, c in times)
    print(f"router: {len(prompts)} corpus prompts x {a.passes} passes, one core")
    print(
        f"  {len(times) / total:,.0f} prompts/s wall clock, "
        f"{len(times) / cpu_total:,.0f} prompts/s of CPU time"
    )
    print("  wall clock per prompt (includes waiting for the core on a shared host):")
    _line("all prompts", [t for _, t, _ in times])
    for label, lo, hi in (
        ("< 200 chars", 0, 200),
        ("200-1000 chars", 200, 1000),
        (">= 1000 chars", 1000, 10**9),
    ):
        _line(label, [t for n, t, _ in times if lo <= n < hi])
    print("  CPU time per prompt (this thread only):")
    _line("all prompts", [c for _, _, c in times])
    mean_ms = total / len(times) * 1e3
    cpu_mean_ms = cpu_total / len(times) * 1e3
    is_bound = a.decode_step_ms == DECODE_STEP_BOUND_MS
    note = " (lower bound: nf4 7B weights / H200 bandwidth, computed)" if is_bound else " (given)"
    print(f"decode step: {a.decode_step_ms:.2f} ms{note}")
    print(
        f"  mean routing cost = {mean_ms / a.decode_step_ms:.1%} (wall) / "
        f"{cpu_mean_ms / a.decode_step_ms:.1%} (CPU) of one decode step, paid once per request"
    )
    return 0


def _line(label: str, seconds: list[float]) -> None:
    if not seconds:
        return
    us = sorted(s * 1e6 for s in seconds)
    p99 = us[min(len(us) - 1, int(0.99 * len(us)))]
    print(
        f"  {label:15s} n={len(us):5d}  mean {statistics.fmean(us):7.0f} us  p50 {us[len(us) // 2]:7.0f} us"
        f"  p99 {p99:7.0f} us  max {us[-1]:7.0f} us"
    )


if __name__ == "__main__":
    raise SystemExit(main())
