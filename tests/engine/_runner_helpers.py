"""Helpers for driving a ModelRunner by hand in tests (no scheduler)."""

from __future__ import annotations

import math
import random

import torch
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.plan import ScheduledSeq, SchedulePlan
from isthmus.engine.runner.model_runner import ModelRunner


def shuffled_blocks(num_blocks: int, count: int, seed: int = 0) -> list[int]:
    """`count` distinct block ids in a scrambled order, so paging (not contiguity) is exercised."""
    ids = list(range(num_blocks))
    random.Random(seed).shuffle(ids)
    return ids[:count]


def logits_of(runner: ModelRunner, seq: ScheduledSeq) -> torch.Tensor:
    """Run one seq's chunk through the model (writing its KV) and return logits of every token."""
    batch = runner._prepare(SchedulePlan([seq]))
    with torch.inference_mode():
        hidden = runner.model(batch.input_ids, batch.positions, batch.attn, runner.kv_caches)
        return runner.model.compute_logits(hidden).float()


def seq(
    seq_id: int,
    history: list[int],
    start: int,
    end: int,
    prompt_len: int,
    blocks: list[int],
    *,
    params: SamplingParams | None = None,
    want_prompt_logprobs: bool = False,
    block_size: int = 4,
) -> ScheduledSeq:
    """The ScheduledSeq feeding history[start:end]."""
    return ScheduledSeq(
        seq_id=seq_id,
        token_ids=history[start:end],
        start_pos=start,
        block_table=blocks[: math.ceil(end / block_size)],
        do_sample=end >= prompt_len,
        params=params or SamplingParams(temperature=0.0, max_tokens=64),
        prompt_len=prompt_len,
        history_ids=history,
        num_generated=max(0, end - prompt_len),
        want_prompt_logprobs=want_prompt_logprobs,
    )


def greedy_generate(
    runner: ModelRunner, prompt: list[int], num_new: int, chunk: int, blocks: list[int]
) -> list[int]:
    """Greedy decode through the runner: prompt in chunks of `chunk`, then one token per step."""
    history = list(prompt)
    pos = 0
    while pos < len(prompt):
        end = min(len(prompt), pos + chunk)
        out = runner.run(
            SchedulePlan([seq(1, history, pos, end, len(prompt), blocks, block_size=runner.block_size)])
        )
        pos = end
    history.append(out.sampled[1].token_id)
    while len(history) < len(prompt) + num_new:
        out = runner.run(
            SchedulePlan(
                [
                    seq(
                        1,
                        history,
                        len(history) - 1,
                        len(history),
                        len(prompt),
                        blocks,
                        block_size=runner.block_size,
                    )
                ]
            )
        )
        history.append(out.sampled[1].token_id)
    return history[len(prompt) :]
