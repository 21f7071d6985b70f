"""Host cost of filling a decode graph's static inputs before each replay: the previous full
rebuild of every row's block table against `DecodeGraphs.stage` (incremental), in the same run.

Both fill the same static buffers on the CPU (`DecodeGraphs` off CUDA captures nothing; no model
runs here), so the figures are the host work on the critical path before a replay; on a GPU the
old path also pinned and copied its whole [bs, width] table each step. Steps are precomputed like
the runner's `_replay` arguments (fresh slices of each sequence's table), 64 rows whose contexts
start near 2,048 tokens (128 blocks of 16) with staggered block boundaries, so each step about
4 rows gain a block. Printed, ms per step (the fastest of --repeats runs):
  steady   decode steps over an unchanged batch (new blocks appended mid-run)
  churn    as steady, but every 8th step one sequence finishes, the rows after it move up a row
           and a new sequence takes the last row (the composition changes: dense rewrite)

    .venv/bin/python bench/gpu/block_tables.py [--rows 64] [--context 2048] [--steps 256]
"""

from __future__ import annotations

import argparse
import time

import torch
from isthmus.engine.runner.cuda_graph import DecodeGraphs

BLOCK_SIZE = 16  # tokens
Step = tuple[list[int], list[int], list[int], list[list[int]]]


def old_stage(g: DecodeGraphs, input_ids: list[int], positions: list[int], slots: list[int],
              tables: list[list[int]]) -> int:
    """`DecodeGraphs.run`'s input fill before this change (88b71c6^), replay left out."""
    n = len(input_ids)
    bs = g.padded_size(n)
    assert bs is not None
    pad = bs - n
    width = max(len(t) for t in tables)
    scratch_slot = g.scratch_block * g.block_size
    flat = [*input_ids, *[0] * pad, *positions, *[0] * pad, *slots, *[scratch_slot] * pad]
    flat += [p + 1 for p in positions] + [1] * pad
    for t in tables:
        flat += t
        flat += [g.scratch_block] * (width - len(t))
    flat += [g.scratch_block] * (width * pad)
    host = torch.tensor(flat, dtype=torch.long)
    dev = host.pin_memory().to(g.device, non_blocking=True) if g.captured else host
    g.input_ids[:bs].copy_(dev[:bs])
    g.positions[:bs].copy_(dev[bs : 2 * bs])
    g.slot_mapping[:bs].copy_(dev[2 * bs : 3 * bs])
    g.context_lens[:bs].copy_(dev[3 * bs : 4 * bs])
    g.block_tables[:bs, :width].copy_(dev[4 * bs :].view(bs, width))
    return bs


def make_steps(rows: int, context: int, num_steps: int, churn: bool) -> list[Step]:
    """The arguments of `num_steps` decode steps (see the module docstring)."""
    span = (context + num_steps) // BLOCK_SIZE + 2
    next_seq = rows
    seqs = list(range(rows))  # row -> sequence; sequence s owns blocks [s * span, (s + 1) * span)
    pos = [context - BLOCK_SIZE + r % BLOCK_SIZE for r in range(rows)]
    steps: list[Step] = []
    tables_of: dict[int, list[int]] = {}

    def owned(s: int) -> list[int]:
        return tables_of.setdefault(s, list(range(s * span, (s + 1) * span)))

    for step in range(num_steps):
        if churn and step % 8 == 7:
            gone = step % rows
            del seqs[gone], pos[gone]
            seqs.append(next_seq)
            pos.append(context - BLOCK_SIZE + next_seq % BLOCK_SIZE)
            next_seq += 1
        # Slices of one list per sequence, as the scheduler's copies of the block manager's tables.
        tables = [owned(s)[: p // BLOCK_SIZE + 1] for s, p in zip(seqs, pos, strict=True)]
        slots = [t[-1] * BLOCK_SIZE + p % BLOCK_SIZE for t, p in zip(tables, pos, strict=True)]
        steps.append(([5] * rows, list(pos), slots, tables))
        pos = [p + 1 for p in pos]
    return steps


def per_step_ms(fill, graphs: DecodeGraphs, steps: list[Step]) -> float:  # type: ignore[no-untyped-def]
    graphs.forget_tables()
    graphs.block_tables.fill_(graphs.scratch_block)
    fill(graphs, *steps[0])  # the first step writes every row either way
    t0 = time.perf_counter()
    for args in steps[1:]:
        fill(graphs, *args)
    return (time.perf_counter() - t0) / (len(steps) - 1) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--context", type=int, default=2048, help="tokens at the first step")
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    max_len = args.context + args.steps + 2 * BLOCK_SIZE
    num_blocks = (max_len // BLOCK_SIZE + 2) * (args.rows + args.steps)
    cache = torch.empty(0)
    graphs = DecodeGraphs(None, [(cache, cache)], max_batch=args.rows, max_model_len=max_len,  # type: ignore[arg-type]
                          block_size=BLOCK_SIZE, scratch_block=num_blocks)
    new_stage = DecodeGraphs.stage
    print(f"{args.rows} rows, contexts from ~{args.context} tokens ({args.context // BLOCK_SIZE} blocks of "
          f"{BLOCK_SIZE}), {args.steps} steps; ms per step, fastest of {args.repeats}:")
    for name, churn in (("steady", False), ("churn", True)):
        steps = make_steps(args.rows, args.context, args.steps, churn)
        old = min(per_step_ms(old_stage, graphs, steps) for _ in range(args.repeats))
        new = min(per_step_ms(new_stage, graphs, steps) for _ in range(args.repeats))
        print(f"  {name:6s}  old rebuild {old:.3f}  incremental {new:.3f}  ({old / new:.1f}x)")


if __name__ == "__main__":
    main()
