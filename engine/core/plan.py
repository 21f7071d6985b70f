"""The data that crosses between the scheduler (sans-IO) and the model runner (tensors).

The engine loop is three lines::

    plan = scheduler.schedule()
    out = runner.run(plan)
    scheduler.postprocess(plan, out)

Only the runner touches tensors. In tensor parallelism rank 0 broadcasts the plan to every rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from isthmus.engine.core.kv_blocks import KVImport
from isthmus.engine.core.params import SamplingParams


@dataclass(slots=True)
class ScheduledSeq:
    """One sequence's share of one step."""

    seq_id: int
    token_ids: list[int]  # tokens fed this step: a prefill chunk, or the last sampled token
    start_pos: int  # absolute position of token_ids[0]; KV for [0, start_pos) is already cached
    block_table: list[int]  # KV block ids covering positions [0, start_pos + len(token_ids))
    do_sample: bool  # True when this step ends the prompt (last prefill chunk) or is a decode
    params: SamplingParams
    prompt_len: int  # number of prompt tokens (penalties: presence/frequency count outputs only)
    history_ids: list[int]  # prompt ids + generated ids so far (for penalties); not copied per step
    num_generated: int  # tokens generated so far; the seeded RNG's position for the next draw
    want_prompt_logprobs: bool = False  # return the mean logprob of this chunk's prompt tokens


@dataclass(slots=True)
class SchedulePlan:
    """Everything the runner needs for one forward pass."""

    seqs: list[ScheduledSeq] = field(default_factory=list)
    preempted_seq_ids: list[int] = field(default_factory=list)  # their KV was freed this step
    kv_imports: list[KVImport] = field(default_factory=list)  # KV to write before the forward pass

    @property
    def num_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.seqs)

    @property
    def is_empty(self) -> bool:
        return not self.seqs


@dataclass(slots=True)
class SampledToken:
    token_id: int
    logprob: float  # log-probability of token_id under the unfiltered distribution (after penalties)
    entropy: float  # entropy in nats of the unfiltered distribution (edge confidence signal)
    top_logprobs: list[tuple[int, float]] | None = None


@dataclass(slots=True)
class RunOutput:
    """What one forward pass produced, keyed by seq_id."""

    sampled: dict[int, SampledToken] = field(default_factory=dict)
    # seq_id -> (sum of logprobs, count) over the prompt tokens of this chunk (when asked)
    prompt_logprobs: dict[int, tuple[float, int]] = field(default_factory=dict)
