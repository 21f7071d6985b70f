"""A plan's input tensors for the eager forward pass (`ModelRunner.forward`).

Token layout of a step: every multi-token (prefill) chunk first, then every single-token query
(decodes, and one-token prefill chunks, which attend the same way) sorted by context length, so
the latter are attended in one batched call, in groups of similar length on the portable path.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from isthmus.engine.core.plan import ScheduledSeq, SchedulePlan
from isthmus.engine.model.attention import AttentionMetadata

# Portable decode attention (CPU): at most this many length groups, each of at least ~this many rows.
DECODE_GROUPS = 4
DECODE_GROUP_ROWS = 8


@dataclass(slots=True)
class Batch:
    input_ids: torch.Tensor  # [num_tokens]
    positions: torch.Tensor  # [num_tokens]
    attn: AttentionMetadata
    seqs: list[ScheduledSeq]  # in batch order
    starts: list[int]  # token offset of each seq's first token in the batch


def slots(seq: ScheduledSeq, bs: int) -> list[int]:
    """The KV cache slot of each position the row feeds (block id * block size + offset)."""
    table = seq.block_table
    return [table[p // bs] * bs + p % bs for p in range(seq.start_pos, seq.start_pos + len(seq.token_ids))]


def decode_groups(lens: list[int], bs: int) -> list[tuple[int, int, int]]:
    """Split decodes (sorted by context length) into up to 4 row ranges of about 8+ rows.

    (start, stop, blocks to read): each range is padded only to its own longest context.
    """
    n = len(lens)
    num_groups = min(DECODE_GROUPS, max(1, n // DECODE_GROUP_ROWS))
    cuts = [round(i * n / num_groups) for i in range(num_groups + 1)]
    return [(a, b, math.ceil(lens[b - 1] / bs)) for a, b in itertools.pairwise(cuts) if b > a]


def build_batch(plan: SchedulePlan, bs: int, device: torch.device) -> Batch:
    """The input tensors and attention metadata of a validated, non-empty plan."""
    prefills = [s for s in plan.seqs if len(s.token_ids) > 1]
    # Decodes shortest context first: rows of similar length form the portable decode's groups.
    decodes = sorted((s for s in plan.seqs if len(s.token_ids) == 1), key=lambda s: s.start_pos)
    ids: list[int] = []
    positions: list[int] = []
    slot_ids: list[int] = []
    starts: list[int] = []
    query_start = [0]
    for seq in [*prefills, *decodes]:
        starts.append(len(ids))
        ids.extend(seq.token_ids)
        positions.extend(range(seq.start_pos, seq.start_pos + len(seq.token_ids)))
        slot_ids.extend(slots(seq, bs))
        if len(seq.token_ids) > 1:
            query_start.append(len(ids))
    lens = [s.start_pos + 1 for s in decodes]  # cached length including this step's token
    max_blocks = math.ceil(max(lens, default=0) / bs)
    tables = [s.block_table[: math.ceil(n / bs)] for s, n in zip(decodes, lens, strict=True)]
    tables = [t + [t[0]] * (max_blocks - len(t)) for t in tables]  # padding is masked out
    prefill_tables = [s.block_table[: math.ceil((s.start_pos + len(s.token_ids)) / bs)] for s in prefills]
    # Every int64 input of the step in one host buffer and one copy (pinned and asynchronous on
    # CUDA), then views: one transfer per step instead of one per tensor and per prefill layer.
    parts = [ids, positions, slot_ids, lens, [b for t in tables for b in t], *prefill_tables]
    host = torch.tensor([x for part in parts for x in part], dtype=torch.long)
    if device.type == "cuda":
        host = host.pin_memory()
    views = torch.split(host.to(device, non_blocking=True), [len(p) for p in parts])
    input_ids, pos_t, slot_t, ctx_t, table_t = views[:5]
    attn = AttentionMetadata(
        slot_mapping=slot_t,
        num_prefills=len(prefills),
        num_prefill_tokens=query_start[-1],
        prefill_query_start_cpu=query_start,
        prefill_start_pos_cpu=[s.start_pos for s in prefills],
        prefill_block_ids=list(views[5:]),
        decode_block_tables=table_t.view(len(decodes), max_blocks),
        decode_context_lens=ctx_t,
        block_size=bs,
        decode_groups_cpu=decode_groups(lens, bs),
    )
    return Batch(input_ids=input_ids, positions=pos_t, attn=attn, seqs=[*prefills, *decodes], starts=starts)
