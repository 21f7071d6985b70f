"""CUDA graphs for decode steps: the model forward plus the LM head, captured per padded batch size.

Eager PyTorch on a fast GPU is launch-bound at decode (hundreds of small kernels per step), so
a decode-only step is replayed from a graph captured once per batch size in `CAPTURE_SIZES`
(up to the engine's `max_num_seqs`). The graph reads static input buffers that each step fills:

    input_ids, positions, slot_mapping, context_lens  [max_bs]
    block_tables                                      [max_bs, max_blocks]  (max_model_len wide)

The block tables persist between steps: only the entries that changed are written (`stage`).

A batch of n sequences runs the smallest captured size >= n; the padded rows feed token 0 at
position 0, write their K/V into a scratch block no sequence owns, and attend that one slot.
Attention is `decode_attention.paged_decode`, which loops over each row's live context read
from device memory, so one graph serves every context length. Sampling stays outside the graph.
"""

from __future__ import annotations

import math

import torch
from isthmus.engine.model.attention import AttentionMetadata
from isthmus.engine.model.causal_lm import CausalLM, KVCaches

CAPTURE_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256)


class DecodeGraphs:
    """Captured decode steps for one model and KV cache on one CUDA device.

    `scratch_block` must be a KV block id no sequence is ever given (the runner allocates one
    block more than the scheduler sees). On a CUDA device each size is captured; elsewhere `run`
    executes the same padded static-buffer forward eagerly.
    """

    def __init__(
        self,
        model: CausalLM,
        kv_caches: KVCaches,
        *,
        max_batch: int,
        max_model_len: int,
        block_size: int,
        scratch_block: int,
    ) -> None:
        device = kv_caches[0][0].device
        # Off CUDA nothing is captured: `run` executes the same static-buffer forward eagerly
        # (how the padding and scratch-block logic is tested on CPU).
        self.captured = device.type == "cuda"
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.scratch_block = scratch_block
        self.sizes = [s for s in CAPTURE_SIZES if s < max_batch] + [max_batch]
        self.max_batch = max_batch
        self.max_blocks = math.ceil(max_model_len / block_size)
        self.device = device
        long = {"dtype": torch.long, "device": device}
        self.input_ids = torch.zeros(max_batch, **long)
        self.positions = torch.zeros(max_batch, **long)
        self.slot_mapping = torch.full((max_batch,), scratch_block * block_size, **long)
        self.context_lens = torch.ones(max_batch, **long)
        self.block_tables = torch.full((max_batch, self.max_blocks), scratch_block, **long)
        self._pad_row = [scratch_block]  # a padded row's table: its one slot is in the scratch block
        self._known: list[list[int]] = []  # per row, the leading blocks block_tables holds (`stage`)
        self.forget_tables()
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}  # batch size -> static [bs, vocab] output
        if self.captured:
            self._capture()

    def _metadata(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:bs],
            num_prefills=0,
            num_prefill_tokens=0,
            prefill_query_start_cpu=[0],
            prefill_start_pos_cpu=[],
            prefill_block_ids=[],
            decode_block_tables=self.block_tables[:bs],
            decode_context_lens=self.context_lens[:bs],
            block_size=self.block_size,
        )

    def _forward(self, bs: int) -> torch.Tensor:
        hidden = self.model(self.input_ids[:bs], self.positions[:bs], self._metadata(bs), self.kv_caches)
        return self.model.compute_logits(hidden)  # [bs, vocab]

    @torch.inference_mode()
    def _capture(self) -> None:
        # Under the model's device: torch.cuda.graph's default side stream is created on the
        # current device, and Triton launches on the current device too.
        with torch.cuda.device(self.device):
            caller = torch.cuda.current_stream()
            stream = torch.cuda.Stream()
            stream.wait_stream(caller)
            # Warm-ups and captures all run on `stream`, and leaving this block restores the
            # caller's stream even if a capture fails: torch.cuda.graph's __exit__ does not
            # restore its stream when capture_end raises, which would leave every later eager
            # step (after the runner falls back) on the side stream.
            with torch.cuda.stream(stream):
                for _ in range(2):  # lazy inits (cuBLAS handles, Triton JIT, bitsandbytes state)
                    self._forward(self.max_batch)
                pool = None
                for bs in reversed(self.sizes):  # largest first, so smaller graphs reuse its pool
                    eager = self._forward(bs)  # this size's warm-up, and the replay check's reference
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool, stream=stream):
                        logits = self._forward(bs)
                    if pool is None:
                        pool = graph.pool()
                    _check_replay(bs, graph, logits, eager)
                    self.graphs[bs] = graph
                    self.logits[bs] = logits
            caller.wait_stream(stream)
        torch.cuda.synchronize(self.device)

    def padded_size(self, n: int) -> int | None:
        """The captured batch size a batch of `n` decodes runs at, or None if too large."""
        for s in self.sizes:
            if s >= n:
                return s
        return None

    def run(
        self, input_ids: list[int], positions: list[int], slots: list[int], tables: list[list[int]]
    ) -> torch.Tensor:
        """One decode step for len(input_ids) sequences -> logits [n, vocab] (a view; copy to keep).

        `tables[i]` are the blocks covering sequence i's context (positions[i] + 1 tokens).
        """
        bs = self.stage(input_ids, positions, slots, tables)
        n = len(input_ids)
        if not self.captured:
            return self._forward(bs)[:n]
        self.graphs[bs].replay()
        return self.logits[bs][:n]

    def stage(
        self, input_ids: list[int], positions: list[int], slots: list[int], tables: list[list[int]]
    ) -> int:
        """Fill the static input buffers for one step (what `run` does before it replays) -> the
        padded batch size.

        Block tables are written incrementally: `_known` remembers, per row, the blocks the device
        buffer holds in its first columns, and only rows whose table differs are written (a
        sequence that got a new block: that one entry; a row taken by another sequence, or a table
        rewritten under the same sequence after preemption or a prefix-cache hit: its whole
        table). The comparison is by content, not by (seq_id, length): a preempted sequence can
        resume as a one-token decode with the same id and length but other blocks. Entries past a
        row's context stay as they were: always a valid block id, never read (context_lens).
        """
        n = len(input_ids)
        bs = self.padded_size(n)
        if bs is None or n == 0:
            raise ValueError(f"{n} decodes: graphs are captured for 1..{self.max_batch}")
        if not len(positions) == len(slots) == len(tables) == n:
            raise ValueError("input_ids, positions, slots and tables must have one entry per row")
        pad = bs - n
        scratch_slot = self.scratch_block * self.block_size
        # One host tensor, one copy: ids, positions, slots, context lens ([bs] each), then the
        # table writes: flat indices and values, or (dense) the [bs, width] tables.
        flat = [*input_ids, *[0] * pad, *positions, *[0] * pad, *slots, *[scratch_slot] * pad]
        flat += [p + 1 for p in positions] + [1] * pad
        rows = [*tables, *[self._pad_row] * pad]
        changed = self._changed_rows(rows)
        num_writes = sum(len(rows[r]) - k for r, k in changed)
        width = max(len(t) for t in rows)
        dense = 2 * num_writes > bs * width  # index + value per entry vs one cell per entry
        if dense:
            for t in rows:
                flat += t
                flat += [self.scratch_block] * (width - len(t))
        elif num_writes:
            flat += _sparse_writes(rows, changed, self.max_blocks)
        host = torch.tensor(flat, dtype=torch.long)
        dev = host.pin_memory().to(self.device, non_blocking=True) if self.captured else host
        self.input_ids[:bs].copy_(dev[:bs])
        self.positions[:bs].copy_(dev[bs : 2 * bs])
        self.slot_mapping[:bs].copy_(dev[2 * bs : 3 * bs])
        self.context_lens[:bs].copy_(dev[3 * bs : 4 * bs])
        if dense:
            self.block_tables[:bs, :width].copy_(dev[4 * bs :].view(bs, width))
        elif num_writes:
            writes = dev[4 * bs :]
            self.block_tables.view(-1).index_copy_(0, writes[:num_writes], writes[num_writes:])
        for r in range(bs) if dense else [r for r, _ in changed]:
            self._known[r] = list(rows[r])  # a copy: the caller's lists may change later
        return bs

    def _changed_rows(self, rows: list[list[int]]) -> list[tuple[int, int]]:
        """(row, first column to write) for each row whose table the device buffer lacks."""
        known, changed = self._known, []
        for r, t in enumerate(rows):
            k = known[r]
            if t != k:  # unequal lengths compare in O(1); equal lists mostly share their int objects
                if len(t) > self.max_blocks:
                    raise ValueError(f"row {r}: {len(t)} blocks, the tables hold {self.max_blocks}")
                # A sequence that grew keeps its known prefix: write only the new blocks.
                changed.append((r, len(k) if len(t) > len(k) and t[: len(k)] == k else 0))
        return changed

    def forget_tables(self) -> None:
        """Forget what the block-table buffer holds: the next step writes every row in full."""
        self._known = [[] for _ in range(self.max_batch)]


def _sparse_writes(rows: list[list[int]], changed: list[tuple[int, int]], stride: int) -> list[int]:
    """Flat indices into the [max_batch, stride] tables, then the block ids to write there."""
    index: list[int] = []
    values: list[int] = []
    for r, k in changed:
        t = rows[r]
        index.extend(range(r * stride + k, r * stride + len(t)))
        values.extend(t[k:] if k else t)
    return index + values


def _check_replay(bs: int, graph: torch.cuda.CUDAGraph, logits: torch.Tensor, eager: torch.Tensor) -> None:
    """Replay once over the warm-up's inputs and compare with its eager logits ([bs, vocab]).

    The same kernels run on the same inputs, so they agree to rounding. A capture that recorded
    nothing (work sent to another stream or device) or baked a host-side value into the graph
    fails here, at start-up, as a RuntimeError (the runner then decodes eagerly), instead of
    decoding garbage.
    """
    logits.fill_(float("nan"))  # a graph that never writes its output cannot pass
    graph.replay()
    ref = eager.float()
    err = ((logits.float() - ref).norm() / ref.norm()).item()
    if not err <= 1e-2:  # also catches NaN
        raise RuntimeError(f"decode graph for batch {bs} disagrees with eager (relative error {err:.3g})")
