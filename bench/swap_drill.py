"""Where the swap drill's longest gap goes: tests/e2e/test_swap_drill.py's setup, timed phase by phase.

Two in-process tiny centers (A's steps slowed 50 ms), one in-process edge (QUIC on 127.0.0.1), 50
greedy streams of 64 tokens, and `cli/swap.run_swap` from A to B when the median stream is halfway.
Hooks (wrappers, no change to the code under test) time, from the moment the swap calls A's
``Drain(migrate=true)``: A's export of every request, A's streams sending `Migrated`, the edge
receiving them, B's Generate handler starting, B's engine steps (tokens, sequences), B's first
token per stream, the edge's first message from B, and the app's longest gap between two chunks.

    .venv/bin/python bench/swap_drill.py [--runs 3] [--resume-tokens 0,4096]

``--resume-tokens``: B's scheduler allowance for resumed requests (`max_num_resume_tokens`; 0:
none, the recompute prefill is chunked by the 512-token step budget), one run of each value in
turn, so the values are compared under the same machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isthmus.cli.swap import CenterAccess, EdgeAdmin, SwapPlan, drain_center, run_swap
from isthmus.edge import migration
from isthmus.models.tiny_checkpoint import make_tiny_checkpoint
from isthmus.protocol import Migrated, TokenChunk

import tests.e2e.test_swap_drill as drill

Times = dict[str, float]


class Trace:
    """Timestamps of one run (time.monotonic seconds)."""

    def __init__(self) -> None:
        self.points: dict[str, Times] = {k: {} for k in ("a_migrated", "edge_migrated", "b_enter", "b_first")}
        self.edge_first_b: list[float] = []
        self.b_steps: list[tuple[float, float, int, int]] = []  # start, end, tokens, sequences
        self.drain_at = 0.0
        self.export: tuple[float, float] = (0.0, 0.0)

    def hook_center(self, server: Any, side: str) -> None:
        svc = server.service
        generate = svc.generate

        async def traced(req: Any, *a: Any, **k: Any) -> Any:
            rid = getattr(req, "id", "")
            if side == "b":
                self.points["b_enter"].setdefault(rid, time.monotonic())
            async for msg in generate(req, *a, **k):
                if side == "b" and isinstance(msg, TokenChunk):
                    self.points["b_first"].setdefault(rid, time.monotonic())
                elif side == "a" and isinstance(msg, Migrated):
                    self.points["a_migrated"][rid] = time.monotonic()
                yield msg

        svc.generate = traced
        if side == "a":
            export_all = svc.export_all

            def timed_export() -> int:
                t0 = time.monotonic()
                n = export_all()
                self.export = (t0, time.monotonic())
                return int(n)

            svc.export_all = timed_export
        else:
            core = svc.engine.core
            step = core.step

            def timed_step(*a: Any, **k: Any) -> Any:
                t0 = time.monotonic()
                out = step(*a, **k)
                seqs = core.scheduler.num_running
                self.b_steps.append((t0, time.monotonic(), core.last_num_scheduled, seqs))
                return out

            core.step = timed_step

    def hook_edge(self) -> None:
        resume, record_finish = migration.resume_request, migration.MigrationStats.record_finish

        def traced_resume(sent: Any, migrated: Any, timeout_ms: Any = None) -> Any:
            self.points["edge_migrated"][sent.id] = time.monotonic()
            return resume(sent, migrated, timeout_ms)

        def traced_finish(stats: Any, stall_s: float) -> None:
            self.edge_first_b.append(time.monotonic())
            record_finish(stats, stall_s)

        migration.resume_request = traced_resume  # type: ignore[assignment]
        migration.MigrationStats.record_finish = traced_finish  # type: ignore[method-assign]


async def one_run(models: tuple[Path, Path], work: Path, resume_tokens: int) -> tuple[Trace, list[Any]]:
    trace = Trace()
    trace.hook_edge()
    center = drill.in_process_center
    async with center(models[1], step_delay_s=0.05) as a, center(models[1]) as b:
        trace.hook_center(a, "a")
        trace.hook_center(b, "b")
        b.service.engine.core.scheduler.max_num_resume_tokens = resume_tokens
        src, dst = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"
        async with drill.edge_node(models[0], work, [src]) as node:
            progress: list[Any] = []

            def drain(address: str, access: CenterAccess, grace_s: float) -> int:
                deadline = time.monotonic() + 30.0
                while drill._median_tokens(progress) < drill.MAX_TOKENS // 2 and time.monotonic() < deadline:
                    time.sleep(0.005)
                trace.drain_at = time.monotonic()
                return drain_center(address, access, grace_s)

            streams = asyncio.create_task(drill.run_streams(node.quic_address, progress))
            started = lambda: len(progress) == drill.NUM_STREAMS and all(o.ids for o in progress)  # noqa: E731
            await drill.wait_until(started)
            plan = SwapPlan(src, dst, ramp_s=0.2, steps=2, ready_timeout_s=30.0, settle_timeout_s=30.0)
            admin = EdgeAdmin(f"http://127.0.0.1:{node.http_port}", drill.EDGE_TOKEN)
            await asyncio.to_thread(run_swap, [admin], plan, CenterAccess(drill.CENTER_TOKEN), drain=drain)
            outcomes = await streams
    return trace, outcomes


def report(trace: Trace, outcomes: list[Any]) -> None:
    t0 = trace.drain_at

    def ms(t: float) -> str:
        return f"{(t - t0) * 1000:6.0f}"

    def span(name: str, values: list[float]) -> None:
        v = sorted(values)
        if v:
            print(f"  {name:40s} first {ms(v[0])}  median {ms(v[len(v) // 2])}  last {ms(v[-1])} ms")

    gaps = sorted(max(zip(o.times, o.times[1:], strict=False), key=lambda p: p[1] - p[0]) for o in outcomes)
    worst = max(gaps, key=lambda p: p[1] - p[0])
    errors = sum(o.error is not None for o in outcomes)
    print(f"  errors {errors}/{len(outcomes)}; times from A's drain call (0 ms):")
    span("app: last chunk before its longest gap", [g[0] for g in gaps])
    print(f"  {'A: export of every request':40s} {ms(trace.export[0])} .. {ms(trace.export[1])} ms")
    span("A: stream sends Migrated", list(trace.points["a_migrated"].values()))
    span("edge: Migrated received, resume sent", list(trace.points["edge_migrated"].values()))
    span("B: Generate handler starts", list(trace.points["b_enter"].values()))
    span("B: first token out of B's stream", list(trace.points["b_first"].values()))
    span("edge: first message from B", trace.edge_first_b)
    span("app: first chunk after its longest gap", [g[1] for g in gaps])
    for start, end, tokens, seqs in trace.b_steps[:4]:
        print(f"  B step {ms(start)} .. {ms(end)} ms: {tokens:5d} tokens, {seqs} sequences running")
    median = statistics.median(g[1] - g[0] for g in gaps)
    print(f"  longest gap on any stream {(worst[1] - worst[0]) * 1000:.1f} ms (median stream's longest "
          f"{median * 1000:.1f} ms)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--resume-tokens", default="4096", help="comma-separated values, one run each in turn")
    args = p.parse_args()
    values = [int(v) for v in args.resume_tokens.split(",")]
    root = Path(tempfile.mkdtemp(prefix="swap-drill-"))
    models = (make_tiny_checkpoint(root / "edge", "llama", seed=11),
              make_tiny_checkpoint(root / "center", "llama", seed=12))
    for i in range(args.runs):
        for value in values:
            work = root / f"run{i}-{value}"
            work.mkdir()
            print(f"run {i + 1}/{args.runs}, B's max_num_resume_tokens {value} "
                  f"(load average {os.getloadavg()[0]:.1f} before it)")
            report(*asyncio.run(one_run(models, work, value)))


if __name__ == "__main__":
    main()
