"""Live migration stall: concurrent streams moved off a draining center replica, by tokens or KV.

Two center replicas (tiny checkpoint from models/tiny_checkpoint.py, CPU, fp32) serve ``--streams`` greedy
requests at once through one edge `CenterPool` (real gRPC on 127.0.0.1) with
`edge.migration.follow_migrations` in front, as the edge's relay does. Once every stream has
``--after`` tokens, replica A gets ``Drain(migrate=true)``: each of its requests ends with its
state and goes on on B: ``--mode tokens`` (B recomputes the KV cache in one prefill) or
``--mode kv`` (A ships the KV blocks with the state, B writes them and computes one token) or
``--mode ticket`` (A keeps the KV under a ticket and the state carries a reference; B fetches the
bytes from A over ``FetchKV`` before it writes them: the path of every real model's KV, which does
not fit the message).
Printed: streams moved, how many B resumed from shipped KV, answers identical to an unmigrated
run, and per stream the gap between the last token before the move and the first after (the
stall), beside the longest gap between two tokens on streams that did not move.

    .venv/bin/python bench/migration.py                    # 8 streams, 64 tokens, prompt 32, tokens
    .venv/bin/python bench/migration.py --mode kv --prompt 1024
    .venv/bin/python bench/migration.py --mode ticket --prompt 2048
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from isthmus.center.auth import AdminPolicy
from isthmus.center.kv_fetch import KVFetcher, KVTicketDesk, PeerAuth
from isthmus.center.kv_migration import KVPolicy
from isthmus.center.kv_tickets import KVTicketStore
from isthmus.center.server import CenterServer
from isthmus.center.service import CenterService
from isthmus.edge.migration import MigrationStats, follow_migrations
from isthmus.edge.pool import CenterPool
from isthmus.edge.replica import PoolOptions
from isthmus.engine.core.async_engine import AsyncEngine
from isthmus.engine.core.options import EngineOptions
from isthmus.models.tiny_checkpoint import make_tiny_checkpoint
from isthmus.protocol import (
    GenerateRequest,
    Migrated,
    SamplingOptions,
    TokenChunk,
    limits,
    pack_ids,
    unpack_ids,
)

BENCH_TOKEN = "bench-admin-token-0123456789"  # A's FetchKV is an admin call; B authenticates with it


async def _replica(model: Path, args: argparse.Namespace) -> tuple[AsyncEngine, CenterService, CenterServer]:
    blocks = max(512, 2 * args.streams * -(-(args.prompt + args.tokens) // 16))  # migrated + reference runs
    engine = AsyncEngine(EngineOptions(model=str(model), dtype="float32", device="cpu", num_kv_blocks=blocks,
                                       block_size=16, max_num_seqs=32, max_num_batched_tokens=4096))
    await engine.start()
    service = CenterService(engine, engine.tokenizer, engine.model_name, max_model_len=engine.max_model_len)
    service.kv_policy = KVPolicy(mode="tokens" if args.mode == "tokens" else "kv",
                                 max_bytes=0 if args.mode == "ticket" else limits.MAX_KV_PAYLOAD_BYTES)
    server = CenterServer(service, host="127.0.0.1", port=0, default_grace_s=30.0,
                          admin=AdminPolicy(token=BENCH_TOKEN))
    await server.start()
    if args.mode == "ticket":  # the replica-to-replica KV channel (center/kv_fetch.py)
        service.kv_desk = KVTicketDesk(KVTicketStore(), address=f"127.0.0.1:{server.port}")
        service.kv_fetcher = KVFetcher(PeerAuth(token=BENCH_TOKEN))
    await server.set_ready()
    return engine, service, server


def _request(i: int, args: argparse.Namespace) -> GenerateRequest:
    prompt = [(7 * i + 13 * k) % 400 + 5 for k in range(args.prompt)]  # ids every tiny vocab has
    return GenerateRequest(id=f"s{i}", prompt_ids=pack_ids(prompt),
                           sampling=SamplingOptions(max_tokens=args.tokens, temperature=0.0, ignore_eos=True))


Run = list[tuple[float, list[int]]]  # (arrival time, token ids) per chunk


async def _stream(pool: CenterPool, req: GenerateRequest, stats: MigrationStats,
                  marks: dict[str, float] | None = None) -> Run:
    """The chunks of one answer; ``marks[req.id]``: when its first `Migrated` arrived."""

    async def opener(r: GenerateRequest) -> AsyncIterator[Any]:
        async for msg in pool.generate(r):
            if isinstance(msg, Migrated) and marks is not None:
                marks.setdefault(r.id, time.monotonic())
            yield msg

    out: Run = []
    async for msg in follow_migrations(opener, req, stats=stats):
        if isinstance(msg, TokenChunk):
            out.append((time.monotonic(), unpack_ids(msg.token_ids)))
    return out


async def run(args: argparse.Namespace) -> None:
    max_len = max(2048, args.prompt + args.tokens + 16)  # 2048: the checkpoint's own default
    model = make_tiny_checkpoint(Path(tempfile.mkdtemp()), "llama", seed=1, max_position_embeddings=max_len)
    a, b = await _replica(model, args), await _replica(model, args)
    pool = CenterPool([f"127.0.0.1:{r[2].port}" for r in (a, b)], options=PoolOptions(health_interval_s=3600))
    await pool.start()
    stats = MigrationStats()
    reqs = [_request(i, args) for i in range(args.streams)]
    try:
        # the migrated run first: B's prefix cache holds nothing of A's requests when they move
        marks: dict[str, float] = {}
        tasks = [asyncio.create_task(_stream(pool, r, stats, marks)) for r in reqs]
        await asyncio.sleep(0)
        moved_ids = await asyncio.wait_for(_drain_when_ready(a[1], a[2], args.after, tasks), timeout=300)
        drained_at = time.monotonic()
        runs = await asyncio.gather(*tasks)
        imported = b[0].core.scheduler.num_kv_imports
        fetcher = b[1].kv_fetcher
        fetched = (fetcher.num_fetched, fetcher.num_failed) if fetcher is not None else None
        reference = await asyncio.gather(*(_stream(pool, r, MigrationStats()) for r in reqs))  # all on B
    finally:
        await pool.close()
        for engine, service, server in (a, b):
            await server.stop()
            service.close()
            await engine.stop()
    _report(args, reqs, reference, runs, moved_ids, stats)
    _report_gaps(reqs, runs, moved_ids, marks, drained_at)
    print(f"resumed on B from shipped KV blocks: {imported} of {len(moved_ids)} moved")
    if fetched is not None:
        spec = b[0].kv_spec
        per = (args.prompt + args.after) * spec.bytes_per_token if spec is not None else 0
        print(f"KV fetched by ticket: {fetched[0]} ok, {fetched[1]} failed; about {per / 2**20:.2f} MiB each")


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


def _gaps(run: Run, since: float = 0.0) -> list[float]:
    """Gaps between consecutive chunks, of those ending after ``since``."""
    times = [t for t, _ in run]
    return [t1 - t0 for t0, t1 in itertools.pairwise(times) if t1 > since]


def _gap_across(run: Run, moved_at: float) -> float:
    """The gap the app saw across the move: last chunk before `Migrated` to the first after."""
    before = [t for t, _ in run if t <= moved_at]
    after = [t for t, _ in run if t > moved_at]
    return (min(after) - max(before)) if before and after else float("nan")


def _report_gaps(reqs: list[GenerateRequest], runs: list[Run], moved: set[str], marks: dict[str, float],
                 drained_at: float) -> None:
    across = [_gap_across(run, marks[req.id]) for req, run in zip(reqs, runs, strict=True) if req.id in marks]
    stayed = [g for req, run in zip(reqs, runs, strict=True) if req.id not in moved
              for g in _gaps(run, since=drained_at)]
    if across:
        print(f"gap across the move: median {statistics.median(across) * 1000:.1f} ms, "
              f"max {max(across) * 1000:.1f} ms")
    if stayed:
        print(f"after the drain, longest gap on streams that stayed: {max(stayed) * 1000:.1f} ms")


def _report(args: argparse.Namespace, reqs: list[GenerateRequest], reference: list[Any], runs: list[Any],
            moved: set[str], stats: MigrationStats) -> None:
    same = sum(1 for r, m in zip(reference, runs, strict=True)
               if [t for _, ids in r for t in ids] == [t for _, ids in m for t in ids])
    stay_gaps = [g for req, run in zip(reqs, runs, strict=True) if req.id not in moved for g in _gaps(run)]
    move_gaps = [max(_gaps(run)) for req, run in zip(reqs, runs, strict=True) if req.id in moved]
    print(f"mode {args.mode}: streams {args.streams}, prompt {args.prompt} tokens, {args.tokens} tokens "
          f"each, drain of A after {args.after} tokens")
    print(f"moved {len(moved)} (migrations started {stats.started}, finished {stats.finished}, "
          f"failed {stats.failed}); answers identical to the unmigrated run: {same}/{len(reqs)}")
    if move_gaps:
        mean_s = stats.stall_s_sum / max(stats.finished, 1)
        print(f"stall on moved streams (longest gap): median {statistics.median(move_gaps) * 1000:.1f} ms, "
              f"max {max(move_gaps) * 1000:.1f} ms; edge-measured stall max "
              f"{stats.stall_s_max * 1000:.1f} ms, mean {mean_s * 1000:.1f} ms")
    if stay_gaps:
        print(f"longest gap on streams that stayed: {max(stay_gaps) * 1000:.1f} ms")


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens per request")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per answer")
    parser.add_argument("--after", type=int, default=16, help="drain A once its streams have this many")
    parser.add_argument("--mode", choices=["tokens", "kv", "ticket"], default="tokens",
                        help="tokens: B recomputes the KV cache; kv: A ships its KV blocks in the message; "
                             "ticket: B fetches them from A over FetchKV (default tokens)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
