"""The model runner: the only part of the engine loop that touches tensors.

`ModelRunner(options)` loads the checkpoint (quantized or not) on the device, allocates the paged
KV cache and, per step, turns a `SchedulePlan` into flat input tensors plus `AttentionMetadata`
(`batch`), runs the model, samples the sequences that asked for a token and scores prompt chunks.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence

import torch
from isthmus.engine.core.kv_blocks import KVMismatch, KVSpec
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.plan import RunOutput, ScheduledSeq, SchedulePlan
from isthmus.engine.core.step_handle import StepHandle
from isthmus.engine.kernels import decode_attention
from isthmus.engine.model.config import ModelConfig
from isthmus.engine.model.loader import Rewrite, load_model
from isthmus.engine.model.quant import QUANTIZATIONS, UnsupportedQuantizationError
from isthmus.engine.runner import kv_transfer
from isthmus.engine.runner.batch import Batch, build_batch
from isthmus.engine.runner.cuda_graph import DecodeGraphs
from isthmus.engine.runner.device import resolve_device, resolve_dtype
from isthmus.engine.runner.kv_cache import allocate_kv_cache, choose_num_blocks, kv_block_bytes
from isthmus.engine.runner.sampler import sample, sample_async

PROMPT_LOGPROB_ROWS = 256  # rows of full-vocab logits materialised at once when scoring prompts


class PlanError(ValueError):
    """A plan the runner cannot execute (positions past the cache, unknown blocks, bad ids)."""


def _check_options(options: EngineOptions) -> None:
    if options.quantization is not None and options.quantization not in QUANTIZATIONS:
        raise UnsupportedQuantizationError(
            f"quantization must be one of {QUANTIZATIONS} or None, got {options.quantization!r}"
        )
    if options.block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {options.block_size}")


class ModelRunner:
    """Owns the model weights and the KV cache on one device (one rank under tensor parallelism)."""

    def __init__(self, options: EngineOptions, *, rewrites: Sequence[Rewrite] = ()) -> None:
        _check_options(options)
        self.options = options
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype, self.device)
        self.config: ModelConfig = ModelConfig.from_pretrained(options.model)
        max_pos = self.config.max_position_embeddings
        self.max_model_len = options.max_model_len or max_pos
        if not 0 < self.max_model_len <= max_pos:
            raise ValueError(f"max_model_len={self.max_model_len} must be in [1, {max_pos}] for this model")
        self.block_size = options.block_size
        self.model = load_model(
            options.model,
            self.config,
            device=self.device,
            dtype=self.dtype,
            quantization=options.quantization,
            verify=options.verify_checksums,
            rewrites=rewrites,
        )
        # From the loaded module, not the config: a tensor-parallel rank holds a slice of the heads.
        self.num_kv_heads = int(self.model.model.layers[0].self_attn.num_kv_heads)
        # Under tensor parallelism too: every rank captures the same sizes in the same order, so
        # the all-reduces inside the graphs pair up, and replays in lockstep (`forward_step`).
        # Only where the Triton decode handles the heads: the portable fallback would gather the
        # graph's full max_model_len-wide block table for every row, every layer, every step.
        heads = (self.config.num_heads, self.num_kv_heads, self.config.head_dim)
        use_graphs = (
            options.use_cuda_graphs
            and decode_attention.available(self.device)
            and decode_attention.supports_shape(*heads)
        )
        self._allocate_kv_cache(extra_blocks=1 if use_graphs else 0)  # + the graphs' scratch block
        self.graphs: DecodeGraphs | None = self._capture_graphs(bool(rewrites)) if use_graphs else None

    def _allocate_kv_cache(self, extra_blocks: int) -> None:
        """Size the paged KV cache (options, device memory) and allocate it, plus ``extra_blocks``."""
        opts, cfg = self.options, self.config
        heads, size = self.num_kv_heads, self.block_size
        block_bytes = kv_block_bytes(cfg.num_layers, heads, cfg.head_dim, size, self.dtype)
        self.num_kv_blocks = choose_num_blocks(
            block_bytes=block_bytes,
            device=self.device,
            num_kv_blocks=opts.num_kv_blocks,
            kv_cache_memory=opts.kv_cache_memory,
            kv_memory_fraction=opts.kv_memory_fraction,
            max_useful_blocks=opts.max_num_seqs * math.ceil(self.max_model_len / self.block_size),
        )
        self.kv_cache_bytes = block_bytes * self.num_kv_blocks
        self.kv_caches = allocate_kv_cache(
            cfg.num_layers,
            self.num_kv_blocks + extra_blocks,
            self.block_size,
            self.num_kv_heads,
            cfg.head_dim,
            self.dtype,
            self.device,
        )

    def _capture_graphs(self, sharded: bool) -> DecodeGraphs | None:
        """Decode CUDA graphs over the cache's last block as scratch; None when capture fails."""
        try:
            return DecodeGraphs(
                self.model,
                self.kv_caches,
                max_batch=self.options.max_num_seqs,
                max_model_len=self.max_model_len,
                block_size=self.block_size,
                scratch_block=self.num_kv_blocks,
            )
        except RuntimeError as exc:  # a layer that cannot be captured: decode stays eager
            if sharded:  # one rank eager and another replaying would pair up wrong collectives
                raise RuntimeError(
                    f"CUDA graph capture failed under rewrites (tensor parallelism): {exc}; "
                    "start every rank with use_cuda_graphs=False"
                ) from exc
            warnings.warn(f"CUDA graph capture failed, decoding eagerly: {exc}", stacklevel=3)
            return None

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @functools.cached_property
    def kv_spec(self) -> KVSpec | None:
        """The cache's layout for KV migration (`kv_transfer`); None when KV cannot travel: under
        tensor parallelism (each rank holds a head shard, so such requests migrate by tokens)."""
        if int(self.model.model.layers[0].self_attn.num_heads) != self.config.num_heads:
            return None  # a tensor-parallel rank's slice of the heads
        fingerprint = kv_transfer.model_fingerprint(self.options.model, self.dtype, self.options.quantization)
        return kv_transfer.cache_spec(fingerprint, self.dtype, self.config.num_layers, self.num_kv_heads,
                                      self.config.head_dim, self.block_size)

    def export_kv(self, block_table: list[int], num_tokens: int) -> bytes:
        """Positions ``[0, num_tokens)`` of the sequence holding ``block_table``, as bytes."""
        return kv_transfer.export_kv(self.kv_caches, block_table, num_tokens, self.block_size)

    def _write_imports(self, plan: SchedulePlan) -> None:
        """Write the plan's imported KV into its blocks before the forward pass reads them."""
        for imp in plan.kv_imports:
            try:
                kv_transfer.import_kv(self.kv_caches, imp.block_table, imp.payload, self.block_size)
            except KVMismatch as exc:
                raise PlanError(f"seq {imp.seq_id}: {exc}") from exc

    @torch.inference_mode()
    def run(self, plan: SchedulePlan) -> RunOutput:
        """One forward pass over the plan's prefill chunks and decodes; sample where asked."""
        out = RunOutput()
        if plan.is_empty:
            return out
        if self.graphs is not None and self._graph_eligible(plan):
            return self._run_graph(plan)
        batch, hidden = self.forward(plan)

        rows, sample_seqs = [], []
        for seq, start in zip(batch.seqs, batch.starts, strict=True):
            if seq.do_sample:
                rows.append(start + len(seq.token_ids) - 1)
                sample_seqs.append(seq)
        if sample_seqs:
            index = torch.tensor(rows, device=self.device)
            logits = self.model.compute_logits(hidden[index])  # [num_sampled, vocab], model dtype
            for seq, token in zip(sample_seqs, sample(logits, sample_seqs), strict=True):
                out.sampled[seq.seq_id] = token
        for seq, start in zip(batch.seqs, batch.starts, strict=True):
            if seq.want_prompt_logprobs and seq.start_pos < seq.prompt_len:
                out.prompt_logprobs[seq.seq_id] = self._prompt_logprobs(hidden, seq, start)
        return out

    @torch.inference_mode()
    def forward(self, plan: SchedulePlan) -> tuple[Batch, torch.Tensor]:
        """The eager forward pass over a non-empty plan: writes its KV, returns the batch and hidden.

        The plan is validated before the model runs, so in tensor parallelism every rank refuses a
        bad plan before any collective. Center followers call this alone (no logits, no sampling).
        """
        batch = self._prepare(plan)
        hidden = self.model(
            batch.input_ids, batch.positions, batch.attn, self.kv_caches
        )  # [num_tokens, hidden]
        return batch, hidden

    @torch.inference_mode()
    def forward_step(self, plan: SchedulePlan) -> None:
        """A tensor-parallel follower's share of a step: the forward rank 0 runs, no sampling.

        The same choice as `run` (graph replay for a decode-only step, else eager) from the same
        broadcast plan, so every rank's collectives pair up: in lockstep with rank 0's replay.
        """
        if plan.is_empty:
            return
        if self.graphs is not None and self._graph_eligible(plan):
            self._replay(plan)
        else:
            self.forward(plan)

    def _graph_eligible(self, plan: SchedulePlan) -> bool:
        """Decode-only steps that fit a captured size and need no prompt scoring."""
        assert self.graphs is not None
        return len(plan.seqs) <= self.graphs.max_batch and all(
            len(s.token_ids) == 1 and not (s.want_prompt_logprobs and s.start_pos < s.prompt_len)
            for s in plan.seqs
        )

    def _replay(self, plan: SchedulePlan) -> torch.Tensor:
        """Validate a decode-only plan and replay its graph -> logits [n, vocab] (a static view)."""
        assert self.graphs is not None
        for seq in plan.seqs:
            self._validate(seq)
        self._write_imports(plan)
        seqs = plan.seqs
        bs = self.block_size
        return self.graphs.run(
            [s.token_ids[0] for s in seqs],
            [s.start_pos for s in seqs],
            [s.block_table[s.start_pos // bs] * bs + s.start_pos % bs for s in seqs],
            [s.block_table[: s.start_pos // bs + 1] for s in seqs],
        )

    @torch.inference_mode()
    def launch(self, plan: SchedulePlan) -> StepHandle:
        """Start one step; `StepHandle.result()` gives what `run` would have returned.

        A decode-only step replayed from a CUDA graph returns with its device work (replay,
        sampling, the copy of the tokens to pinned memory) still queued (``overlapped``), so the
        caller can do host work meanwhile. Any other step runs to completion here.
        """
        captured = self.graphs is not None and self.graphs.captured
        if captured and not plan.is_empty and self._graph_eligible(plan):
            return StepHandle(self._launch_graph(plan), overlapped=True)
        out = self.run(plan)
        return StepHandle(lambda: out, overlapped=False)

    def _run_graph(self, plan: SchedulePlan) -> RunOutput:
        """A decode-only step replayed from a captured CUDA graph; sampling runs eagerly after."""
        return self._launch_graph(plan)()

    def _launch_graph(self, plan: SchedulePlan) -> Callable[[], RunOutput]:
        seqs = plan.seqs
        logits = self._replay(plan)  # [n, vocab], the graph's static output
        rows = [i for i, s in enumerate(seqs) if s.do_sample]
        if not rows:
            return RunOutput
        sample_seqs = [seqs[i] for i in rows]
        picked = logits if len(rows) == len(seqs) else logits[torch.tensor(rows, device=self.device)]
        tokens = sample_async(picked, sample_seqs)  # queued behind the replay, before any next one

        def finish() -> RunOutput:
            out = RunOutput()
            for seq, token in zip(sample_seqs, tokens(), strict=True):
                out.sampled[seq.seq_id] = token
            return out

        return finish

    def _prompt_logprobs(self, hidden: torch.Tensor, seq: ScheduledSeq, start: int) -> tuple[float, int]:
        """(sum, count) of log p(prompt token) for the prompt tokens this chunk's rows predict.

        Row j (position start_pos + j) predicts the token at start_pos + j + 1, so over all chunks
        every prompt token but the first is scored exactly once.
        """
        num_rows = min(len(seq.token_ids), seq.prompt_len - 1 - seq.start_pos)
        total = 0.0
        for lo in range(0, max(num_rows, 0), PROMPT_LOGPROB_ROWS):
            hi = min(num_rows, lo + PROMPT_LOGPROB_ROWS)
            logits = self.model.compute_logits(hidden[start + lo : start + hi]).float()  # [rows, vocab]
            targets = seq.history_ids[seq.start_pos + lo + 1 : seq.start_pos + hi + 1]
            target_t = torch.tensor(targets, device=self.device).unsqueeze(1)
            total += float(torch.log_softmax(logits, -1).gather(1, target_t).sum())
        return total, max(num_rows, 0)

    def _validate(self, seq: ScheduledSeq) -> None:
        n = len(seq.token_ids)
        end = seq.start_pos + n
        if n == 0 or seq.start_pos < 0:
            raise PlanError(f"seq {seq.seq_id}: empty chunk or negative start_pos")
        if end > self.max_model_len:
            raise PlanError(f"seq {seq.seq_id}: position {end - 1} past max_model_len={self.max_model_len}")
        needed = math.ceil(end / self.block_size)
        if len(seq.block_table) < needed:
            raise PlanError(
                f"seq {seq.seq_id}: block table has {len(seq.block_table)} blocks, needs {needed}"
            )
        # min/max rather than a Python test per id: this runs for every row before every launch.
        table = seq.block_table[:needed]
        if min(table) < 0 or max(table) >= self.num_kv_blocks:
            raise PlanError(f"seq {seq.seq_id}: block id outside [0, {self.num_kv_blocks})")
        if min(seq.token_ids) < 0 or max(seq.token_ids) >= self.config.vocab_size:
            raise PlanError(f"seq {seq.seq_id}: token id outside [0, {self.config.vocab_size})")

    def _prepare(self, plan: SchedulePlan) -> Batch:
        """Validate the plan, write its imported KV, and build its input tensors (`batch`)."""
        for seq in plan.seqs:
            self._validate(seq)
        self._write_imports(plan)
        return build_batch(plan, self.block_size, self.device)
