"""CUDA graphs for decode steps: the model forward plus the LM head, captured per padded batch size.

Eager PyTorch on a fast GPU is launch-bound at decode (hundreds of small kernels per step), so
a decode-only step is replayed from a graph captured once per batch size in `CAPTURE_SIZES`
(up to the engine's `max_num_seqs`). The graph reads static input buffers that each step fills:

    input_ids, positions, slot_mapping, context_lens  [max_bs]
    block_tables                                      [max_bs, max_blocks]  (max_model_len wide)

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
        n = len(input_ids)
        bs = self.padded_size(n)
        if bs is None or n == 0:
            raise ValueError(f"{n} decodes: graphs are captured for 1..{self.max_batch}")
        pad = bs - n
        width = max(len(t) for t in tables)
        scratch_slot = self.scratch_block * self.block_size
        # One host tensor, one copy: ids, positions, slots, context lens ([bs] each), then the
        # [bs, width] tables (padded rows and columns point at the scratch block).
        flat = [*input_ids, *[0] * pad, *positions, *[0] * pad, *slots, *[scratch_slot] * pad]
        flat += [p + 1 for p in positions] + [1] * pad
        for t in tables:
            flat += t
            flat += [self.scratch_block] * (width - len(t))
        flat += [self.scratch_block] * (width * pad)
        host = torch.tensor(flat, dtype=torch.long)
        dev = host.pin_memory().to(self.device, non_blocking=True) if self.captured else host
        self.input_ids[:bs].copy_(dev[:bs])
        self.positions[:bs].copy_(dev[bs : 2 * bs])
        self.slot_mapping[:bs].copy_(dev[2 * bs : 3 * bs])
        self.context_lens[:bs].copy_(dev[3 * bs : 4 * bs])
        self.block_tables[:bs, :width].copy_(dev[4 * bs :].view(bs, width))
        if not self.captured:
            return self._forward(bs)[:n]
        self.graphs[bs].replay()
        return self.logits[bs][:n]


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
