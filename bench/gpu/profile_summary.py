"""torch.profiler summary of one callable: GPU-busy share of the wall time and the top kernels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile


def _device_time(evt: Any) -> float:
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        value = getattr(evt, attr, None)
        if value is not None:
            return float(value)
    return 0.0


def _union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of [start, end) intervals (kernels on several streams overlap)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def profile_call(fn: Callable[[], Any], *, top: int = 6) -> dict[str, Any]:
    """Run ``fn`` once under the profiler; on CUDA: busy share, kernel time, top kernels by time."""
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    events = prof.events()
    kernels = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    host = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CPU]
    if not host:
        return {"wall_ms": 0.0}
    start = min(e.time_range.start for e in host)
    end = max(e.time_range.end for e in host)
    wall_us = max(end - start, 1e-9)
    out: dict[str, Any] = {"wall_ms": round(wall_us / 1e3, 2)}
    if kernels:
        busy = _union_us([(e.time_range.start, e.time_range.end) for e in kernels])
        out["gpu_busy_share"] = round(busy / wall_us, 3)
        out["kernel_ms"] = round(sum(e.time_range.end - e.time_range.start for e in kernels) / 1e3, 2)
        out["num_kernels"] = len(kernels)
    rows = sorted(prof.key_averages(), key=_device_time, reverse=True)
    out["top"] = [
        {"name": r.key[:90], "ms": round(_device_time(r) / 1e3, 3), "calls": int(r.count)}
        for r in rows[:top]
        if _device_time(r) > 0
    ]
    return out


def format_summary(label: str, summary: dict[str, Any]) -> str:
    lines = [f"  profile {label}: wall {summary.get('wall_ms', 0):.1f} ms"
             + (f", GPU busy {summary['gpu_busy_share']:.0%}, kernels {summary['kernel_ms']:.1f} ms"
                f" in {summary['num_kernels']}" if "gpu_busy_share" in summary else "")]
    lines += [f"    {t['ms']:9.3f} ms {t['calls']:6d}x  {t['name']}" for t in summary.get("top", [])]
    return "\n".join(lines)
