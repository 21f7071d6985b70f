"""Two real center replicas behind one edge `CenterPool`: cache-aware choice vs least-loaded.

Two in-process centers (each its own `AsyncEngine` with prefix caching on, `CenterService` and
gRPC `CenterServer` on 127.0.0.1) sit behind one `CenterPool`, the edge's real client of the
center cluster. A multi-turn chat workload (seeded) runs through the pool twice, on fresh replicas
each time: once with the cache-aware policy (`PrefixAffinity`, the default) and once with it off
(`AffinityOptions(enabled=False)`: plain least-loaded, ties to the least recently picked).

Workload: ``--conversations`` chats of ``--turns`` turns share one ``--system``-token system
prompt; every turn resends the whole history (system prompt, earlier user messages and answers)
plus a new 16-48-token user message and asks for ``--max-tokens`` greedy tokens. At most
``--concurrency`` conversations are in flight; a conversation sends its next turn as soon as its
answer ends. A short warm-up on throwaway replicas runs first.

Read per run: each replica's prefix-cache hit rate from its `Status` (as the edge sees it), the
requests the pool sent to each replica (counted at `CenterPool.pick`), the overall hit rate (the
replicas' rates weighted by the prompt tokens sent to each; the engines' own hit / queried token
counts alongside, as a cross-check), and the mean first-token latency
(submission to the first `TokenChunk`, queueing included).

    .venv/bin/python bench/prefix_replicas.py                          # 10 x 4 turns, 200-token system
    .venv/bin/python bench/prefix_replicas.py --conversations 4 --turns 3   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VOCAB = 1024
POLICIES = ("cache-aware", "least-loaded")


@dataclass
class Conversation:
    user_turns: list[list[int]]
    history: list[int] = field(default_factory=list)


def make_workload(args: argparse.Namespace) -> tuple[list[int], list[Conversation]]:
    rng = random.Random(args.seed)
    system = [rng.randrange(3, VOCAB) for _ in range(args.system)]

    def user_turn() -> list[int]:
        return [rng.randrange(3, VOCAB) for _ in range(rng.randrange(16, 49))]

    convs = [Conversation([user_turn() for _ in range(args.turns)]) for _ in range(args.conversations)]
    return system, convs


async def _start_center(model: str, args: argparse.Namespace) -> tuple[Any, Any]:
    from isthmus.center.server import CenterServer
    from isthmus.center.service import CenterService
    from isthmus.engine.core.async_engine import AsyncEngine
    from isthmus.engine.core.options import EngineOptions

    engine = AsyncEngine(EngineOptions(
        model=model, num_kv_blocks=args.num_kv_blocks, block_size=16, max_num_seqs=16,
        enable_prefix_caching=True,
    ))
    await engine.start()
    service = CenterService(engine, engine.tokenizer, "tiny-center", max_model_len=engine.max_model_len)
    server = CenterServer(service, host="127.0.0.1", port=0)
    await server.start()
    await server.set_ready()
    return server, engine


async def _turn(pool: Any, rid: str, prompt: list[int], args: argparse.Namespace) -> tuple[list[int], float]:
    """Send one turn through the pool; its answer's token ids and first-token latency (s)."""
    from isthmus.protocol import (
        Done,
        Error,
        GenerateRequest,
        SamplingOptions,
        TokenChunk,
        pack_ids,
        unpack_ids,
    )

    sampling = SamplingOptions(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    req = GenerateRequest(id=rid, prompt_ids=pack_ids(prompt), sampling=sampling)
    answer: list[int] = []
    start = time.perf_counter()
    first: float | None = None
    async for msg in pool.generate(req):
        if isinstance(msg, TokenChunk):
            if first is None:
                first = time.perf_counter() - start
            answer.extend(unpack_ids(msg.token_ids))
        elif isinstance(msg, Error):
            raise RuntimeError(f"{rid}: center answered {msg.code}: {msg.message}")
        elif isinstance(msg, Done):
            break
    if first is None:
        raise RuntimeError(f"{rid}: no token")
    return answer, first


async def run_policy(model: str, policy: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run the workload through a fresh pool of two fresh replicas with ``policy``; its figures."""
    from isthmus.edge.affinity import AffinityOptions, PrefixAffinity
    from isthmus.edge.pool import CenterPool
    from isthmus.edge.replica import PoolOptions

    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
    centers = [await _start_center(model, args) for _ in range(2)]
    endpoints = [f"127.0.0.1:{server.port}" for server, _ in centers]
    cost = getattr(args, "load_cost_blocks", None)
    knobs = {} if cost is None else {"load_cost_blocks": cost}
    affinity = PrefixAffinity(AffinityOptions(enabled=policy == "cache-aware", **knobs))
    pool = CenterPool(endpoints, options=PoolOptions(health_interval_s=0.5), affinity=affinity)
    requests = dict.fromkeys(endpoints, 0)
    prompt_tokens = dict.fromkeys(endpoints, 0)
    pick = pool.pick
    # prompt length of the request being routed: set just before pool.generate, which picks
    # before its first await, so no other conversation can run in between
    sizes: list[int] = []

    def counting_pick(*a: Any, **k: Any) -> Any:  # count where the pool sends each request
        replica = pick(*a, **k)
        if replica is not None:
            requests[replica.endpoint] += 1
            prompt_tokens[replica.endpoint] += sizes[-1]
        return replica

    pool.pick = counting_pick
    system, convs = make_workload(args)
    ttft: list[float] = []
    slots = asyncio.Semaphore(args.concurrency)
    try:
        await pool.start()

        async def converse(i: int, conv: Conversation) -> None:
            async with slots:
                for t, user in enumerate(conv.user_turns):
                    prompt = [*(conv.history or system), *user]
                    sizes.append(len(prompt))
                    answer, first = await _turn(pool, f"c{i}-t{t}", prompt, args)
                    ttft.append(first)
                    conv.history = [*prompt, *answer]

        start = time.perf_counter()
        await asyncio.gather(*(converse(i, c) for i, c in enumerate(convs)))
        wall = time.perf_counter() - start
        await pool.check_all()  # a fresh Status from each replica
        rates = {r.endpoint: r.status.prefix_cache_hit_rate if r.status else 0.0 for r in pool.replicas}
        loads = [engine.load() for _, engine in centers]  # cross-check: the engines' own token counts
    finally:
        await pool.close()
        for server, engine in centers:
            await server.stop(grace_s=0.0)
            await engine.stop()
    total = sum(prompt_tokens.values())
    queried = sum(ld.num_prefix_queried_tokens for ld in loads)
    overall = sum(rates[ep] * prompt_tokens[ep] for ep in endpoints) / total if total else 0.0
    return {
        "policy": policy, "rates": [rates[ep] for ep in endpoints],
        "requests": [requests[ep] for ep in endpoints],
        "prompt_tokens": [prompt_tokens[ep] for ep in endpoints],
        "hit_rate": overall,
        "engine_hit_rate": sum(ld.num_prefix_hit_tokens for ld in loads) / queried if queried else 0.0,
        "ttft_ms": statistics.fmean(ttft) * 1000, "wall_s": wall,
    }


def print_table(results: list[dict[str, Any]]) -> None:
    print("| policy | hit rate A | hit rate B | overall hit rate | (engines' count) | requests A / B "
          "| prompt tokens A / B | mean first token (ms) | wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        a, b = r["rates"]
        print(f"| {r['policy']} | {a:.1%} | {b:.1%} | {r['hit_rate']:.1%} | {r['engine_hit_rate']:.1%} | "
              f"{r['requests'][0]} / {r['requests'][1]} | "
              f"{r['prompt_tokens'][0]} / {r['prompt_tokens'][1]} | {r['ttft_ms']:.0f} | {r['wall_s']:.1f} |")


def tiny_model(root: str | Path) -> Path:
    """The default checkpoint: tiny LLaMA (hidden 64, 2 layers, vocab 1024, fp32)."""
    from isthmus.models.tiny_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(Path(root) / "center", "llama", seed=12, vocab_size=VOCAB)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint folder (default: write a tiny one)")
    ap.add_argument("--conversations", type=int, default=10)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--system", type=int, default=200, help="system prompt tokens")
    ap.add_argument("--max-tokens", type=int, default=16, help="answer tokens per turn")
    ap.add_argument("--concurrency", type=int, default=4, help="conversations in flight at most")
    ap.add_argument("--num-kv-blocks", type=int, default=512, help="KV blocks of 16 tokens per replica")
    ap.add_argument("--load-cost-blocks", type=float, default=None,
                    help="AffinityOptions.load_cost_blocks for the cache-aware run (default: its default)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each policy (the order alternates)")
    args = ap.parse_args(argv)
    positive = ("conversations", "turns", "max_tokens", "concurrency", "num_kv_blocks", "threads", "repeats")
    for name in positive:
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.load_cost_blocks is not None and args.load_cost_blocks < 0:
        ap.error("--load-cost-blocks must be >= 0")
    if args.system < 0:
        ap.error("--system must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = args.model or str(tiny_model(tempfile.mkdtemp(prefix="isthmus-prefix-replicas-")))
    # warm-up on throwaway replicas (torch's first calls are slow), so neither policy pays for it
    warm = argparse.Namespace(**{**vars(args), "conversations": 2, "turns": 1})
    asyncio.run(run_policy(model, POLICIES[0], warm))
    results: list[dict[str, Any]] = []
    for i in range(args.repeats):  # the order alternates, so neither policy always runs first
        order = POLICIES if i % 2 == 0 else POLICIES[::-1]
        results += [asyncio.run(run_policy(model, p, args)) for p in order]
    print(f"{args.conversations} conversations x {args.turns} turns, {args.system}-token system prompt, "
          f"{args.max_tokens} answer tokens, {args.concurrency} in flight, 2 replicas")
    print_table(results)
    if args.repeats > 1:
        for p in POLICIES:
            runs = [r for r in results if r["policy"] == p]
            rates = [r["hit_rate"] for r in runs]
            ttft = statistics.fmean(r["ttft_ms"] for r in runs)
            print(f"{p}: overall hit rate mean {statistics.fmean(rates):.1%} (min {min(rates):.1%}, "
                  f"max {max(rates):.1%}), mean first token {ttft:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
