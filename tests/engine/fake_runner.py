"""A pure-Python stand-in for ModelRunner that checks the KV bookkeeping it is handed.

It keeps a real paged "KV cache" (token ids per block slot). Each step writes the fed tokens
into the slots named by the block table and then reads the whole prefix back through the table,
so a wrong table, a shared block or a stale position changes the "model's" output. The next
token is a hash of the prefix read back, so outputs depend only on the prefix (like a model).
"""

from __future__ import annotations

import hashlib
import time

import torch
from isthmus.engine.core.plan import RunOutput, SampledToken, SchedulePlan
from isthmus.engine.runner.sampler import sample


def next_token(prefix: list[int], vocab_size: int) -> int:
    digest = hashlib.blake2b(repr(prefix).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % vocab_size


def fake_logits(prefix: list[int], vocab_size: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(next_token(prefix, 2**62))
    return torch.randn(vocab_size, generator=gen) * 2.0  # [vocab]


class FakeRunner:
    def __init__(
        self,
        num_kv_blocks: int,
        block_size: int,
        vocab_size: int = 50,
        max_model_len: int = 4096,
        use_sampler: bool = False,
        delay_s: float = 0.0,
    ):
        """``use_sampler``: logits are a hash of the prefix and the real sampler picks tokens."""
        self.use_sampler = use_sampler
        self.delay_s = delay_s
        self.num_kv_blocks = num_kv_blocks
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.kv: list[list[int | None]] = [[None] * block_size for _ in range(num_kv_blocks)]
        self.num_steps = 0
        self.num_tokens = 0

    def run(self, plan: SchedulePlan) -> RunOutput:
        self.num_steps += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        out = RunOutput()
        bs = self.block_size
        # Write every sequence's tokens first (as a batched forward would), then read back.
        for s in plan.seqs:
            assert len(s.block_table) * bs >= s.start_pos + len(s.token_ids)
            for i, tok in enumerate(s.token_ids):
                pos = s.start_pos + i
                self.kv[s.block_table[pos // bs]][pos % bs] = tok
        for s in plan.seqs:
            self.num_tokens += len(s.token_ids)
            end = s.start_pos + len(s.token_ids)
            prefix = [self.kv[s.block_table[p // bs]][p % bs] for p in range(end)]
            assert None not in prefix, "read a never-written KV slot"
            assert prefix == s.history_ids[:end], "KV cache does not hold the sequence's tokens"
            if s.want_prompt_logprobs:
                n = max(0, min(end, s.prompt_len) - max(s.start_pos, 1))
                out.prompt_logprobs[s.seq_id] = (-1.0 * n, n)
            if s.do_sample and not self.use_sampler:
                tok = next_token(prefix, self.vocab_size)
                out.sampled[s.seq_id] = SampledToken(tok, -0.5, 1.0)
        if self.use_sampler:
            sampling = [s for s in plan.seqs if s.do_sample]
            if sampling:
                logits = torch.stack([fake_logits(s.history_ids, self.vocab_size) for s in sampling])
                for s, tok in zip(sampling, sample(logits, sampling), strict=True):
                    out.sampled[s.seq_id] = tok
        return out


def reference_output(
    prompt: list[int], max_tokens: int, vocab_size: int, eos: int | None = None
) -> list[int]:
    ids = list(prompt)
    out: list[int] = []
    while len(out) < max_tokens:
        tok = next_token(ids, vocab_size)
        ids.append(tok)
        out.append(tok)
        if tok == eos:
            break
    return out
