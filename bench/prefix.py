"""Prefix caching on a multi-turn chat workload: first-token latency and throughput, cache on vs off.

Workload (seeded): ``--conversations`` chats of ``--turns`` turns each share one ``--system``-token
system prompt. Every turn sends the whole history (system prompt, earlier user messages and the
engine's own answers) plus a new 16-48-token user message, and asks for ``--max-tokens`` greedy
tokens. All conversations start at once; a conversation sends its next turn as soon as the
previous answer ends (no think time), so the engine always holds up to one turn per chat.

The same workload runs through `EngineCore` twice in one process, prefix caching off then on, and
the table prints the mean first-token latency (submission to first token, queueing included) per
turn, the throughput and the cache's hit rate, side by side. The greedy answers of both runs are
compared token for token.

Default checkpoint (written by models/tiny_checkpoint.py into a temp folder): LLaMA, hidden 256, 4 layers,
vocab 8192, fp32 (~6 M parameters).

    .venv/bin/python bench/prefix.py                        # 32 x 6 turns, 500-token system prompt
    .venv/bin/python bench/prefix.py --conversations 8 --turns 3   # quick look
    .venv/bin/python bench/prefix.py --replicas 2           # + the edge's replica-choice simulation
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

VOCAB = 8192


@dataclass
class Conversation:
    user_turns: list[list[int]]  # the user messages, one per turn
    history: list[int] = field(default_factory=list)  # everything sent and answered so far
    turn: int = 0
    answers: list[list[int]] = field(default_factory=list)


def make_workload(args: argparse.Namespace) -> tuple[list[int], list[Conversation]]:
    rng = random.Random(args.seed)
    system = [rng.randrange(3, VOCAB) for _ in range(args.system)]
    def user_turn() -> list[int]:
        return [rng.randrange(3, VOCAB) for _ in range(rng.randrange(16, 49))]

    convs = [Conversation([user_turn() for _ in range(args.turns)]) for _ in range(args.conversations)]
    return system, convs


def run_engine(path: str, args: argparse.Namespace, caching: bool) -> dict:
    from isthmus.engine.core.core import EngineCore
    from isthmus.engine.core.options import EngineOptions
    from isthmus.engine.core.params import SamplingParams

    options = EngineOptions(
        model=path, num_kv_blocks=args.num_kv_blocks, block_size=16, max_num_seqs=64,
        max_num_batched_tokens=args.max_num_batched_tokens, enable_prefix_caching=caching,
    )
    core = EngineCore(options)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    core.add("warm-up", [5, 6, 7], params)
    while core.has_unfinished:
        core.step()
    system, convs = make_workload(args)
    ttft: dict[int, list[float]] = {t: [] for t in range(args.turns)}
    by_id: dict[str, tuple[Conversation, list[int]]] = {}

    def submit(i: int, conv: Conversation) -> None:
        prompt = [*(conv.history or system), *conv.user_turns[conv.turn]]
        rid = f"c{i}-t{conv.turn}"
        by_id[rid] = (conv, prompt)
        conv.answers.append([])
        core.add(rid, prompt, params)

    before = core.load()
    t0 = time.perf_counter()
    for i, conv in enumerate(convs):
        submit(i, conv)
    while core.has_unfinished:
        for out in core.step():
            conv, prompt = by_id[out.request_id]
            conv.answers[-1].extend(out.new_token_ids)
            if out.first_token_s is not None:
                ttft[conv.turn].append(out.first_token_s)
            if out.finish_reason is not None:
                conv.history = [*prompt, *conv.answers[-1]]
                conv.turn += 1
                if conv.turn < args.turns:
                    submit(convs.index(conv), conv)
    wall = time.perf_counter() - t0
    load = core.load()
    queried = load.num_prefix_queried_tokens - before.num_prefix_queried_tokens
    hits = load.num_prefix_hit_tokens - before.num_prefix_hit_tokens
    return {
        "ttft": {t: statistics.mean(v) for t, v in ttft.items()},
        "wall": wall,
        "generated": sum(len(a) for c in convs for a in c.answers),
        "prompt": sum(len(p) for _, p in by_id.values()),
        "hit_rate": hits / queried if queried else 0.0,
        "evictions": load.num_prefix_evictions,
        "answers": [c.answers for c in convs],
    }


def print_table(off: dict, on: dict, args: argparse.Namespace) -> None:
    print(f"\n{args.conversations} conversations x {args.turns} turns, {args.system}-token system prompt, "
          f"{args.max_tokens} tokens per answer, torch threads {torch.get_num_threads()}\n")
    print("| turn | first token, cache off (ms) | cache on (ms) | speed-up |")
    print("|---|---|---|---|")
    for t in range(args.turns):
        a, b = off["ttft"][t] * 1000, on["ttft"][t] * 1000
        print(f"| {t + 1} | {a:.0f} | {b:.0f} | {a / b:.2f}x |")
    later = [t for t in range(1, args.turns)] or [0]
    a = statistics.mean(off["ttft"][t] for t in later)
    b = statistics.mean(on["ttft"][t] for t in later)
    print(f"| turns 2-{args.turns} mean | {a * 1000:.0f} | {b * 1000:.0f} | **{a / b:.2f}x** |\n")
    print("| run | wall (s) | generated tok/s | prompt tok/s | prefix hit rate | evictions |")
    print("|---|---|---|---|---|---|")
    for name, r in (("cache off", off), ("cache on", on)):
        gen, prompt = r["generated"] / r["wall"], r["prompt"] / r["wall"]
        hits, ev = r["hit_rate"], r["evictions"]
        print(f"| {name} | {r['wall']:.1f} | {gen:.0f} | {prompt:.0f} | {hits:.1%} | {ev} |")
    print(f"\nthroughput ratio (on / off): {off['wall'] / on['wall']:.2f}x")
    same = off["answers"] == on["answers"]
    print(f"greedy answers identical with and without the cache: {same}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint folder (default: write a tiny one)")
    ap.add_argument("--conversations", type=int, default=32)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--system", type=int, default=500, help="system prompt tokens")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--num-kv-blocks", type=int, default=2560)
    ap.add_argument("--max-num-batched-tokens", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replicas", type=int, default=0, help="also simulate the edge's replica choice")
    ap.add_argument("--sim-blocks", type=int, default=1024, help="KV blocks per simulated replica")
    ap.add_argument("--skip-engine", action="store_true", help="only the replica-choice simulation")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_engine:
        path = args.model or str(_tiny(args))
        off = run_engine(path, args, caching=False)
        on = run_engine(path, args, caching=True)
        print_table(off, on, args)
    if args.replicas:
        sys.path.insert(0, str(Path(__file__).parent))
        from prefix_sim import simulate_and_print

        simulate_and_print(args)
    return 0


def _tiny(args: argparse.Namespace) -> Path:
    from isthmus.models.tiny_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(
        tempfile.mkdtemp(prefix="isthmus-prefix-bench-"), "llama", seed=0, hidden_size=args.hidden,
        num_layers=args.layers, num_heads=args.hidden // 64, num_kv_heads=2,
        intermediate_size=args.hidden * 8 // 3 // 64 * 64, vocab_size=VOCAB, tokenizer_vocab_size=1024,
    )


if __name__ == "__main__":
    sys.exit(main())
