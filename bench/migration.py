"""Live migration stall: concurrent streams moved off a draining center replica, token-based.

Two center replicas (tiny checkpoint from models/tiny_checkpoint.py, CPU, fp32) serve ``--streams`` greedy
requests at once through one edge `CenterPool` (real gRPC on 127.0.0.1) with
`edge.migration.follow_migrations` in front, as the edge's relay does. Once every stream has
``--after`` tokens, replica A gets ``Drain(migrate=true)``: each of its requests ends with its
state and goes on on B after one prefill. Printed: streams moved, answers identical to an
unmigrated run, and per stream the gap between the last token before the move and the first after
(the stall), beside the longest gap between two tokens on streams that did not move.

    .venv/bin/python bench/migration.py                    # 8 streams, 64 tokens, prompt 32
    .venv/bin/python bench/migration.py --streams 16 --prompt 256
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from isthmus.center.server import CenterServer
from isthmus.center.service import CenterService
from isthmus.edge.migration import MigrationStats, follow_migrations
from isthmus.edge.pool import CenterPool
from isthmus.edge.replica import PoolOptions
from isthmus.engine.core.async_engine import AsyncEngine
from isthmus.engine.core.options import EngineOptions
from isthmus.models.tiny_checkpoint import make_tiny_checkpoint
from isthmus.protocol import GenerateRequest, SamplingOptions, TokenChunk, pack_ids, unpack_ids


async def _replica(model: Path) -> tuple[AsyncEngine, CenterService, CenterServer]:
    engine = AsyncEngine(EngineOptions(model=str(model), dtype="float32", device="cpu", num_kv_blocks=512,
                                       block_size=16, max_num_seqs=32, max_num_batched_tokens=4096))
    await engine.start()
    service = CenterService(engine, engine.tokenizer, engine.model_name, max_model_len=engine.max_model_len)
    server = CenterServer(service, host="127.0.0.1", port=0, default_grace_s=30.0)
    await server.start()
    await server.set_ready()
    return engine, service, server


def _request(i: int, args: argparse.Namespace) -> GenerateRequest:
    prompt = [(7 * i + 13 * k) % 400 + 5 for k in range(args.prompt)]  # ids every tiny vocab has
    return GenerateRequest(id=f"s{i}", prompt_ids=pack_ids(prompt),
                           sampling=SamplingOptions(max_tokens=args.tokens, temperature=0.0, ignore_eos=True))


Run = list[tuple[float, list[int]]]  # (arrival time, token ids) per chunk


async def _stream(pool: CenterPool, req: GenerateRequest, stats: MigrationStats) -> Run:
    out: Run = []
    async for msg in follow_migrations(pool.generate, req, stats=stats):
        if isinstance(msg, TokenChunk):
            out.append((time.monotonic(), unpack_ids(msg.token_ids)))
    return out


async def run(args: argparse.Namespace) -> None:
    model = make_tiny_checkpoint(Path(tempfile.mkdtemp()), "llama", seed=1)
    a, b = await _replica(model), await _replica(model)
    pool = CenterPool([f"127.0.0.1:{r[2].port}" for r in (a, b)], options=PoolOptions(health_interval_s=3600))
    await pool.start()
    stats = MigrationStats()
    reqs = [_request(i, args) for i in range(args.streams)]
    try:
        # the migrated run first: B's prefix cache holds nothing of A's requests when they move
        tasks = [asyncio.create_task(_stream(pool, r, stats)) for r in reqs]
        await asyncio.sleep(0)
        moved_ids = await asyncio.wait_for(_drain_when_ready(a[1], a[2], args.after, tasks), timeout=300)
        runs = await asyncio.gather(*tasks)
        reference = await asyncio.gather(*(_stream(pool, r, MigrationStats()) for r in reqs))  # all on B
    finally:
        await pool.close()
        for engine, service, server in (a, b):
            await server.stop()
            service.close()
            await engine.stop()
    _report(args, reqs, reference, runs, moved_ids, stats)


async def _drain_when_ready(
    service: CenterService, server: CenterServer, after: int, tasks: list[asyncio.Task[Run]]
) -> set[str]:
    while True:  # every request on A has streamed `after` tokens
        if all(t.done() for t in tasks):
            raise SystemExit("every stream ended before A was drained (refused? too few --tokens?)")
        flights = list(service.in_flight.values())
        if flights and all(f.sent.num_ids >= after for f in flights):
            break
        await asyncio.sleep(0.005)
    moved = {f.request_id for f in flights}
    await server.drain(grace_s=30.0, migrate=True)
    return moved


def _gaps(run: Run) -> list[float]:
    times = [t for t, _ in run]
    return [t1 - t0 for t0, t1 in itertools.pairwise(times)]


def _report(args: argparse.Namespace, reqs: list[GenerateRequest], reference: list[Any], runs: list[Any],
            moved: set[str], stats: MigrationStats) -> None:
    same = sum(1 for r, m in zip(reference, runs, strict=True)
               if [t for _, ids in r for t in ids] == [t for _, ids in m for t in ids])
    stay_gaps = [g for req, run in zip(reqs, runs, strict=True) if req.id not in moved for g in _gaps(run)]
    move_gaps = [max(_gaps(run)) for req, run in zip(reqs, runs, strict=True) if req.id in moved]
    print(f"streams {args.streams}, prompt {args.prompt} tokens, {args.tokens} tokens each, "
          f"drain of A after {args.after} tokens")
    print(f"moved {len(moved)} (migrations started {stats.started}, finished {stats.finished}, "
          f"failed {stats.failed}); answers identical to the unmigrated run: {same}/{len(reqs)}")
    if move_gaps:
        print(f"stall on moved streams (longest gap): median {statistics.median(move_gaps) * 1000:.1f} ms, "
              f"max {max(move_gaps) * 1000:.1f} ms; edge-measured stall max "
              f"{stats.stall_s_max * 1000:.1f} ms")
    if stay_gaps:
        print(f"longest gap on streams that stayed: {max(stay_gaps) * 1000:.1f} ms")


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens per request")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per answer")
    parser.add_argument("--after", type=int, default=16, help="drain A once its streams have this many")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
