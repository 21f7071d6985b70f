"""Sans-IO simulation of the edge's replica choice on the multi-turn chat workload of bench/prefix.py.

Two (or more) simulated center replicas, each with the engine's real `BlockManager` (prefix caching
on, ``--sim-blocks`` blocks of 16 tokens), serve the conversations' turns one at a time in FIFO
order; a turn takes ``prefill_ms`` per token it must compute plus ``decode_ms`` per answer token
(answers are random tokens of ``max_tokens / 2`` to ``max_tokens``: no model runs); conversations
start at random over the first 10 s and a user "thinks" (exponential, mean 2 s) between turns.
The edge's `PrefixAffinity` chooses the replica from the replicas' loads (requests queued or in
service, as `Replica.load_score`) and the request's packed prompt ids, exactly as
`CenterPool.pick` does; the baseline always takes the least loaded (ties alternate). Reported per
policy: the prefix-cache hit rate (tokens reused / prompt tokens), the prompt tokens computed,
requests per replica, and mean first-token latency in simulated time.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import struct
from dataclasses import dataclass, field

from isthmus.edge.affinity import AffinityOptions, PrefixAffinity
from isthmus.engine.core.block_manager import BlockManager

BLOCK = 16  # tokens per KV block


@dataclass
class SimReplica:
    name: str
    bm: BlockManager
    busy_until: float = 0.0
    outstanding: int = 0
    num_requests: int = 0
    queried: int = 0
    hits: int = 0
    ttft: list[float] = field(default_factory=list)


def simulate(
    args: argparse.Namespace,
    policy: str,
    *,
    prefill_ms: float = 0.5,
    decode_ms: float = 4.0,
    think_s: float = 2.0,
) -> dict:
    """Run the workload under ``policy`` ("affinity" or "least-loaded"); returns the figures."""
    rng = random.Random(args.seed)
    system = [rng.randrange(3, 8192) for _ in range(args.system)]
    users = [[[rng.randrange(3, 8192) for _ in range(rng.randrange(16, 49))] for _ in range(args.turns)]
             for _ in range(args.conversations)]
    replicas = [SimReplica(f"r{i}", BlockManager(args.sim_blocks, BLOCK)) for i in range(args.replicas)]
    affinity = PrefixAffinity(AffinityOptions(enabled=policy == "affinity"))
    history: list[list[int]] = [list(system) for _ in users]
    # (time, seq, conversation, turn): conversations start over the first 10 s
    events = [(rng.uniform(0.0, 10.0), c, c, 0) for c in range(len(users))]
    done: list[tuple[float, int, SimReplica]] = []  # (finish time, seq, replica): load bookkeeping
    tick, seq_id = 0, 0
    heapq.heapify(events)
    while events:
        now, _, conv, turn = heapq.heappop(events)
        while done and done[0][0] <= now:
            heapq.heappop(done)[2].outstanding -= 1
        prompt = [*history[conv], *users[conv][turn]]
        loads = {r.name: float(r.outstanding) for r in replicas}
        hashes = affinity.block_hashes(struct.pack(f"<{len(prompt)}i", *prompt))
        preferred = affinity.choose(loads, hashes)
        tick += 1
        rep = min(replicas, key=lambda r: (r.name != preferred, r.outstanding, (tick + int(r.name[1:])) % 2))
        affinity.record(rep.name, hashes)
        seq_id += 1
        hit = _serve(rep.bm, seq_id, prompt)
        rep.num_requests += 1
        rep.queried += len(prompt)
        rep.hits += hit
        start = max(now, rep.busy_until)
        first = start + (len(prompt) - hit) * prefill_ms / 1000
        num_answer = rng.randrange(args.max_tokens // 2, args.max_tokens + 1)
        answer = [rng.randrange(3, 8192) for _ in range(num_answer)]
        rep.busy_until = first + len(answer) * decode_ms / 1000
        rep.ttft.append(first - now)
        rep.outstanding += 1
        heapq.heappush(done, (rep.busy_until, seq_id, rep))
        history[conv] = [*prompt, *answer]
        if turn + 1 < args.turns:  # the user reads the answer and types the next message
            heapq.heappush(events, (rep.busy_until + rng.expovariate(1 / think_s), seq_id, conv, turn + 1))
    queried = sum(r.queried for r in replicas)
    return {
        "hit_rate": sum(r.hits for r in replicas) / queried,
        "computed": queried - sum(r.hits for r in replicas),
        "requests": [r.num_requests for r in replicas],
        "ttft_ms": statistics.mean(t for r in replicas for t in r.ttft) * 1000,
        "makespan_s": max(r.busy_until for r in replicas),
        "evictions": sum(r.bm.stats.num_evictions for r in replicas),
    }


def _serve(bm: BlockManager, seq_id: int, prompt: list[int]) -> int:
    """Admit, compute and release one request on a replica's block manager; tokens reused."""
    cached = bm.match_prefix(prompt)
    hit = bm.adopt(seq_id, cached, len(prompt))
    bm.grow(seq_id, len(prompt))
    bm.commit(seq_id, prompt, len(prompt))
    bm.free(seq_id)
    return hit


def simulate_and_print(args: argparse.Namespace) -> None:
    print(f"\nreplica choice, sans-IO simulation: {args.replicas} replicas x {args.sim_blocks} KV blocks "
          f"of {BLOCK} tokens, {args.conversations} conversations x {args.turns} turns\n")
    print("| policy | prefix hit rate | prompt tokens computed | requests per replica "
          "| mean first token (sim ms) | end (sim s) |")
    print("|---|---|---|---|---|---|")
    for policy in ("least-loaded", "affinity"):
        r = simulate(args, policy)
        print(f"| {policy} | {r['hit_rate']:.1%} | {r['computed']} | {' / '.join(map(str, r['requests']))} "
              f"| {r['ttft_ms']:.0f} | {r['makespan_s']:.1f} |")
